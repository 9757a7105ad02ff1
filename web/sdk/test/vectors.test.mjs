// The SDK's codec against the golden vectors in wire/tests/vectors/ (docs/PROTOCOL.md,
// "Golden vectors"): every valid server frame decodes to its `.json`, every valid client frame
// encodes to its exact bytes (and decodes back), and every malformed input raises the code
// (and field, and client_msg_id) the `.json` names.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  FrameDecoder,
  MAX_ERROR_CODE,
  ProtocolError,
  decodeClientDatagram,
  decodeClientFrame,
  decodeServerFrame,
  delimit,
  directConversationId,
  encodeClientFrame,
  isFatal,
  isRetryable,
  protocolCode,
  webSocketBody,
} from "../../build/sdk/haberci.mjs";

const VECTORS = join(dirname(fileURLToPath(import.meta.url)), "../../../wire/tests/vectors");
const vectors = readdirSync(VECTORS)
  .filter((name) => name.endsWith(".json"))
  .map((name) => {
    const json = JSON.parse(readFileSync(join(VECTORS, name), "utf8"));
    const bin = new Uint8Array(readFileSync(join(VECTORS, name.replace(/\.json$/, ".bin"))));
    return { name: name.replace(/\.json$/, ""), json, bin };
  });

const hex = (bytes) => Buffer.from(bytes).toString("hex");

// The JSON form of docs/PROTOCOL.md for a decoded frame: timestamps as RFC 3339 strings.
const TIMESTAMPS = ["timestamp", "serverTime", "tokenExpiresAt", "lastSeen", "createdAt"];
function jsonForm(frame) {
  const out = { ...frame };
  for (const key of TIMESTAMPS) {
    if (typeof out[key] === "number") out[key] = new Date(out[key]).toISOString();
  }
  return out;
}

// Decodes a vector's bytes the way a receiver on its transport does; returns the frames.
function receive({ json, bin }) {
  const decode = json.direction === "server" ? decodeServerFrame : decodeClientFrame;
  switch (json.transport) {
    case "stream": {
      const decoder = new FrameDecoder(json.maxFrameSize);
      const frames = decoder.push(bin).map(decode);
      decoder.end();
      return frames;
    }
    case "websocket":
      return [decode(webSocketBody(bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength), json.maxFrameSize))];
    case "websocket-text":
      return [decode(webSocketBody(new TextDecoder().decode(bin), json.maxFrameSize))];
    case "datagram":
      assert.equal(json.direction, "client", "only client datagram vectors exist");
      return [decodeClientDatagram(bin)];
    default:
      throw new Error(`unknown transport ${json.transport}`);
  }
}

test("there are vectors of every kind", () => {
  const names = vectors.map((v) => v.name);
  assert.ok(names.filter((n) => n.startsWith("server_")).length >= 9, names.join());
  assert.ok(names.filter((n) => n.startsWith("client_")).length >= 8, names.join());
  assert.ok(names.filter((n) => n.startsWith("malformed_")).length >= 10, names.join());
});

for (const vector of vectors.filter((v) => v.json.frame)) {
  test(`${vector.name} decodes to its JSON form`, () => {
    const frames = receive(vector);
    assert.equal(frames.length, 1);
    assert.deepEqual(jsonForm(frames[0]), vector.json.frame);
  });
}

for (const vector of vectors.filter((v) => v.json.frame && v.json.direction === "client")) {
  test(`${vector.name} encodes to its exact bytes`, () => {
    assert.equal(hex(delimit(encodeClientFrame(vector.json.frame))), hex(vector.bin));
  });
}

for (const vector of vectors.filter((v) => v.json.error)) {
  test(`${vector.name} is refused with ${vector.json.error.code}`, () => {
    const expected = vector.json.error;
    assert.throws(
      () => receive(vector),
      (err) => {
        assert.ok(err instanceof ProtocolError, `not a ProtocolError: ${err}`);
        assert.equal(err.code, expected.code, err.message);
        assert.equal(err.protocolCode, expected.protocolCode);
        assert.equal(err.fatal, expected.fatal);
        if (expected.field) assert.equal(err.field, expected.field);
        if (expected.clientMsgId) assert.equal(err.clientMsgId, expected.clientMsgId);
        return true;
      },
    );
  });
}

test("a stream split at every byte gives the same frames", () => {
  const stream = Buffer.concat(vectors.filter((v) => v.json.frame && v.json.direction === "server").map((v) => v.bin));
  const whole = new FrameDecoder().push(new Uint8Array(stream)).map(decodeServerFrame);
  const decoder = new FrameDecoder();
  const split = [];
  for (const byte of stream) split.push(...decoder.push(new Uint8Array([byte])).map(decodeServerFrame));
  decoder.end();
  assert.equal(whole.length, vectors.filter((v) => v.json.frame && v.json.direction === "server").length);
  assert.ok(whole.length >= 14);
  assert.deepEqual(split, whole);
});

test("a declared length above the limit is refused before the body arrives", () => {
  const decoder = new FrameDecoder(100);
  assert.throws(() => decoder.push(new Uint8Array([101])), { code: "frame_too_large" });
  assert.deepEqual(new FrameDecoder(100).push(new Uint8Array([100])), []);
});

test("an unknown server frame kind is ignored", () => {
  // ServerFrame field 15 (unknown to version 1), varint 1.
  assert.equal(decodeServerFrame(new Uint8Array([0x78, 0x01])), null);
});

test("encoding refuses what the server would refuse, with the field named", () => {
  const conversationId = "01920000-0000-7000-8000-00000000c0de";
  assert.throws(() => encodeClientFrame({ kind: "ack", conversationId, seq: 0 }), { code: "invalid_field", field: "Ack.seq" });
  assert.throws(() => encodeClientFrame({ kind: "read", conversationId: "c0de", seq: 1 }), {
    code: "invalid_field",
    field: "Read.conversation_id",
  });
  assert.throws(
    () =>
      encodeClientFrame({
        kind: "send",
        clientMsgId: "2b6f1c4e-93a1-4d7e-9f00-000000000001",
        recipient: { userId: conversationId },
        type: "sticker",
        content: "x",
        media: null,
      }),
    { code: "invalid_field", field: "Send.type" },
  );
});

test("direct conversation ids match the server's (wire/src/relay.rs)", async () => {
  const a = "01900000-0000-7000-8000-000000000001";
  const b = "01900000-0000-7000-8000-000000000002";
  assert.equal(await directConversationId(a, b), "43932eb0-41e9-5f02-a254-979808ba7765");
  assert.equal(await directConversationId(b, a), "43932eb0-41e9-5f02-a254-979808ba7765");
});

test("Hello carries the highest code this SDK knows; blocked is 18, media_refused 19, too_many_sessions 20", () => {
  const hello = {
    kind: "hello",
    accessToken: "t",
    protocolVersion: 1,
    clientName: "",
    clientVersion: "",
    resume: [],
    maxErrorCode: MAX_ERROR_CODE,
  };
  assert.equal(MAX_ERROR_CODE, 20);
  assert.equal(protocolCode("blocked"), 18);
  assert.equal(isFatal("blocked"), false);
  assert.equal(isRetryable("blocked"), false);
  assert.equal(protocolCode("media_refused"), 19);
  assert.equal(isFatal("media_refused"), false);
  assert.equal(isRetryable("media_refused"), false);
  assert.equal(protocolCode("too_many_sessions"), 20);
  assert.equal(isFatal("too_many_sessions"), true);
  assert.equal(isRetryable("too_many_sessions"), true);
  assert.deepEqual(decodeClientFrame(encodeClientFrame(hello)), hello);
  // 0 (an older client) is left off the wire, as the golden client_hello shows.
  const { maxErrorCode: _, ...old } = hello;
  assert.deepEqual(decodeClientFrame(encodeClientFrame(old)), old);
});

// Protobuf by hand, for bodies no vector holds (the test sees only the SDK's public API).
const varint = (n) => {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
};
const lenField = (no, bytes) => [...varint(no * 8 + 2), ...varint(bytes.length), ...bytes];
const uintField = (no, n) => (n ? [...varint(no * 8), ...varint(n)] : []);
const strField = (no, s) => (s ? lenField(no, [...new TextEncoder().encode(s)]) : []);
const mediaInfoBytes = (m) => [
  ...lenField(1, [...Buffer.from(m.mediaId.replaceAll("-", ""), "hex")]),
  ...strField(2, m.contentType),
  ...uintField(3, m.sizeBytes),
  ...uintField(4, m.width),
  ...uintField(5, m.height),
  ...uintField(6, m.durationMs),
  ...strField(7, m.blurhash),
  ...strField(8, m.filename),
];

// The server_message_media vector's body with some MediaInfo fields replaced.
function mediaMessageBody(media) {
  const vector = vectors.find((v) => v.name === "server_message_media");
  const original = vector.json.frame.media;
  const body = [...new FrameDecoder().push(vector.bin)[0]];
  // body = ServerFrame.message (field 2, LEN): tag, varint length, the Message.
  assert.equal(body[0], 0x12);
  let at = 1;
  while (body[at] & 0x80) at++;
  const message = body.slice(at + 1);
  // Message.media (field 10) is the Message's last field.
  const tail = lenField(10, mediaInfoBytes(original));
  assert.deepEqual(message.slice(message.length - tail.length), tail, "media is the last field");
  const edited = lenField(10, mediaInfoBytes({ ...original, ...media }));
  return new Uint8Array(lenField(2, [...message.slice(0, message.length - tail.length), ...edited]));
}

test("media strings are held to their limits, the blurhash counted in characters", () => {
  const decode = (media) => decodeServerFrame(mediaMessageBody(media)).media;
  // At the limits: 255 bytes, 100 two-byte characters, 255 bytes.
  const atLimits = { contentType: "x".repeat(255), blurhash: "ü".repeat(100), filename: "y".repeat(255) };
  assert.deepEqual(decode(atLimits), { ...decode({}), ...atLimits });
  assert.throws(() => decode({ contentType: "x".repeat(256) }), { code: "invalid_field", field: "MediaInfo.content_type" });
  assert.throws(() => decode({ blurhash: "L".repeat(101) }), { code: "invalid_field", field: "MediaInfo.blurhash" });
  assert.throws(() => decode({ filename: "ü".repeat(128) }), { code: "invalid_field", field: "MediaInfo.filename" });
  // 0 and "" read as unknown / none.
  const unknown = decode({ contentType: "", sizeBytes: 0, width: 0, height: 0, durationMs: 0, blurhash: "", filename: "" });
  assert.deepEqual(unknown, {
    mediaId: "01920000-0000-7000-8000-000000003ed1",
    contentType: "",
    sizeBytes: 0,
    width: null,
    height: null,
    durationMs: null,
    blurhash: null,
    filename: null,
  });
});

test("a text message has no media key", () => {
  const vector = vectors.find((v) => v.name === "server_message");
  const frame = decodeServerFrame(new FrameDecoder().push(vector.bin)[0]);
  assert.equal("media" in frame, false);
});
