// Media helpers that need no server: upload paths, kinds, the MediaRef of an upload, the
// BlurHash decoder, and the client's one retry after a 401. Uploads against the real gateway
// run in tests/browser.test.mjs.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ApiError,
  HaberciClient,
  ProtocolError,
  decodeBlurhash,
  mediaKindOf,
  mediaRefOf,
  mediaUrl,
  uploadPath,
} from "../../build/sdk/haberci.mjs";

const BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
const encode83 = (value, length) => {
  let out = "";
  for (let i = 1; i <= length; i++) out += BASE83[Math.floor(value / 83 ** (length - i)) % 83];
  return out;
};
/** A hash with `nx × 1` components: the DC colour, then AC (r, g, b) quantised to 0..18. */
const hashOf = (nx, [r, g, b], acs = [], maxAc = 0) =>
  encode83(nx - 1, 1) + encode83(maxAc, 1) + encode83((r << 16) + (g << 8) + b, 4) + acs.map(([ar, ag, ab]) => encode83(ar * 361 + ag * 19 + ab, 2)).join("");

const view = {
  id: "01920000-0000-7000-8000-00000000d1a0",
  kind: "image",
  contentType: "image/jpeg",
  size: 1234,
  sha256: "00",
  width: 8,
  height: 8,
  durationMs: null,
  blurhash: null,
  filename: null,
  createdAt: "2025-01-01T00:00:00Z",
  url: "/v1/media/01920000-0000-7000-8000-00000000d1a0?exp=1&sig=x",
  thumbUrl: null,
  previewUrl: null,
  linksExpireAt: "2025-01-01T00:15:00Z",
};

test("an upload's path carries its kind and file name, escaped; a bad kind fails at the call", () => {
  assert.equal(uploadPath({ kind: "image" }), "/v1/media?kind=image");
  assert.equal(uploadPath({ kind: "file", filename: "rapor & özet.pdf" }), "/v1/media?kind=file&filename=rapor+%26+%C3%B6zet.pdf");
  assert.throws(() => uploadPath({ kind: "text" }), TypeError);
});

test("a MIME type picks the kind; anything but image, video and audio is a file", () => {
  const table = [
    ["image/jpeg", "image"],
    ["Video/MP4", "video"],
    ["audio/ogg; codecs=opus", "audio"],
    ["application/pdf", "file"],
    ["", "file"],
  ];
  for (const [type, kind] of table) assert.equal(mediaKindOf(type), kind, type);
});

test("the MediaRef of an upload and of a received message's media name the same bytes", () => {
  const ref = { mediaId: view.id, contentType: "image/jpeg", sizeBytes: 1234 };
  assert.deepEqual(mediaRefOf(view), ref);
  assert.deepEqual(mediaRefOf({ ...ref, width: 8, height: 8, durationMs: null, blurhash: null, filename: null }), ref);
  assert.equal(mediaUrl("https://localhost:8443", view.url), `https://localhost:8443${view.url}`);
});

test("a DC-only BlurHash decodes to its one colour everywhere", () => {
  const pixels = decodeBlurhash(hashOf(1, [200, 100, 50]), 4, 3);
  assert.equal(pixels.length, 4 * 3 * 4);
  for (let i = 0; i < pixels.length; i += 4) assert.deepEqual([...pixels.slice(i, i + 4)], [200, 100, 50, 255]);
});

test("a horizontal AC component makes one side redder than the other", () => {
  // Two components across: mid grey, plus the strongest positive red cosine (left bright).
  const pixels = decodeBlurhash(hashOf(2, [128, 128, 128], [[18, 9, 9]], 82), 8, 1);
  const red = (x) => pixels[x * 4];
  const green = (x) => pixels[x * 4 + 1];
  assert.ok(red(0) > 200 && red(7) < 60, `red runs from ${red(0)} to ${red(7)}`);
  assert.equal(green(0), green(7), "no green component");
});

test("a malformed BlurHash is refused, naming what is wrong", () => {
  const refused = (hash, pattern) =>
    assert.throws(() => decodeBlurhash(hash, 4, 4), (err) => err instanceof ProtocolError && pattern.test(err.message), hash);
  refused("00", /shorter/);
  refused(hashOf(2, [0, 0, 0]), /need 8 characters, not 6/);
  refused("00\"\"\"\"", /base-83/);
});

test("an HTTP call refused with 401 is made once more with a refreshed token", async (t) => {
  const seen = [];
  const realFetch = globalThis.fetch;
  t.after(() => (globalThis.fetch = realFetch));
  globalThis.fetch = async (url, init) => {
    seen.push([String(url), init.method, init.headers.authorization]);
    return init.headers.authorization === "Bearer fresh"
      ? new Response(JSON.stringify(view), { status: 200 })
      : new Response(JSON.stringify({ error: { code: "unauthenticated", message: "expired" } }), { status: 401 });
  };
  const client = new HaberciClient({ url: "https://gw.example", token: "stale", refreshToken: async () => "fresh" });
  assert.deepEqual(await client.mediaInfo(view.id), view);
  assert.deepEqual(seen, [
    [`https://gw.example/v1/media/${view.id}/info`, "GET", "Bearer stale"],
    [`https://gw.example/v1/media/${view.id}/info`, "GET", "Bearer fresh"],
  ]);

  // Without a way to refresh, the refusal is the caller's, with the server's code.
  const plain = new HaberciClient({ url: "https://gw.example", token: "stale" });
  await assert.rejects(plain.uploadMedia(new Blob(["x"]), { kind: "file" }), (err) => err instanceof ApiError && err.status === 401 && err.code === "unauthenticated");
  client.close();
  plain.close();
});
