// The SDK's sans-IO session core (sdk/src/session.ts) with scripted frames and a hand-moved
// clock, in the spirit of client/src/session/tests.rs: every input carries an explicit `now`,
// outputs are polled, and written frames are decoded as the server would decode them.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ProtocolError, Session, decodeClientFrame } from "../../build/sdk/haberci.mjs";

const T0 = 1_700_000_000_000;
const ME = "01920000-0000-7000-8000-0000000a11ce";
const PEER = "01920000-0000-7000-8000-000000000b0b";
const conv = (n) => `01920000-0000-7000-8000-00000000c0${String(n).padStart(2, "0")}`;
const msgId = (n) => `01920000-0000-7000-8000-0000005e40${String(n).padStart(2, "0")}`;

/** A JWT whose only claim is `exp` (Unix ms, rounded down to the second). */
function jwt(expiresAt) {
  const claims = Buffer.from(JSON.stringify({ sub: ME, exp: Math.floor(expiresAt / 1000) })).toString("base64url");
  return `e30.${claims}.sig`;
}

function settings(over = {}) {
  // random = 0: every reconnect pause is exactly half its ceiling.
  return { clientName: "test", clientVersion: "0", canRefresh: false, random: () => 0, ...over };
}

function welcome({ at = T0, lifetimeMs = 0, idleTimeoutMs = 45_000, maxFrameSize = 65_536, sendRatePerSec = 20, sendBurst = 40 } = {}) {
  return {
    kind: "welcome",
    sessionId: "01920000-0000-7000-8000-000000005e55",
    userId: ME,
    protocolVersion: 1,
    serverTime: at,
    tokenExpiresAt: at + lifetimeMs,
    limits: { maxFrameSize, sendRatePerSec, sendBurst, idleTimeoutMs },
  };
}

function message(conversationId, seq, senderId = PEER) {
  return {
    kind: "message",
    id: `01920000-0000-7000-8000-0000000e${String(seq).padStart(4, "0")}`,
    senderId,
    recipientId: senderId === PEER ? ME : PEER,
    type: "text",
    content: `message ${seq}`,
    timestamp: T0,
    status: "sent",
    conversationId,
    seq,
  };
}

const sentFrame = (clientMsgId, seq) => ({
  kind: "sent",
  clientMsgId,
  messageId: `01920000-0000-7000-8000-0000000f${String(seq).padStart(4, "0")}`,
  conversationId: conv(1),
  seq,
  timestamp: T0,
});
const errorFrame = (code, clientMsgId = null) => ({ kind: "error", code, message: code, clientMsgId });
const closingFrame = (code, retryAfterMs = null) => ({ kind: "closing", code, reason: code, retryAfterMs, supportedVersions: [1] });
const sendTo = (clientMsgId, content = "hi") => ({
  kind: "send",
  clientMsgId,
  recipient: { userId: PEER },
  type: "text",
  content,
  media: null,
});

/** The frames written since the last call, decoded as the server decodes them. */
function written(s) {
  const out = [];
  for (let t = s.pollTransmit(); t; t = s.pollTransmit()) out.push(decodeClientFrame(t.body));
  return out;
}

function outputs(s) {
  const out = [];
  for (let o = s.pollOutput(); o; o = s.pollOutput()) out.push(o);
  return out;
}

/** Outputs as short strings, e.g. "state:open", "connect", "sendDone:a", "message:3". */
function script(s) {
  return outputs(s).map((o) => {
    switch (o.kind) {
      case "event":
        if (o.name === "state") return `state:${o.value.state}`;
        if (o.name === "message") return `message:${o.value.seq}`;
        if (o.name === "typing") return `typing:${o.value.typing}`;
        return `${o.name}`;
      case "sendDone":
      case "sendFailed":
        return `${o.kind}:${o.waiter}`;
      case "maxFrameSize":
        return `maxFrameSize:${o.bytes}`;
      default:
        return o.kind;
    }
  });
}

/** A session past Welcome at `at`, with Hello and the opening outputs taken off the queues. */
function open(over = {}, { resume = [], token = "token", at = T0, ...welcomeOver } = {}) {
  const s = new Session(settings(over), token, resume);
  s.start(at);
  s.linkOpened("webtransport", undefined, at);
  s.handleFrame(welcome({ at, ...welcomeOver }), at);
  assert.equal(s.phase, "open");
  assert.deepEqual(written(s).map((f) => f.kind), ["hello"]);
  assert.deepEqual(script(s), ["state:connecting", "connect", "maxFrameSize:65536", "state:open"]);
  return s;
}

/** Loses the link at `at` and reconnects when the backoff says; returns the reconnect time. */
function reconnect(s, at, why = { reason: "reset" }) {
  s.linkClosed(why, at);
  assert.equal(s.phase, "backoff");
  const due = s.pollTimeout();
  s.handleTimeout(due);
  assert.equal(s.phase, "connecting");
  outputs(s);
  s.linkOpened("websocket", "webtransport: blocked", due);
  return due;
}

/**
 * Moves the clock to `to`, deadline by deadline, answering every heartbeat Ping at once.
 * Returns the outputs (as `script` names them) and the frames written other than pings.
 */
function advance(s, to) {
  const outs = [];
  const frames = [];
  for (let due = s.pollTimeout(), steps = 0; due !== undefined && due <= to; due = s.pollTimeout(), steps++) {
    assert.ok(steps < 10_000, "the deadlines do not move on");
    s.handleTimeout(due);
    for (const frame of written(s)) {
      if (frame.kind === "ping") s.handleFrame({ kind: "pong", nonce: frame.nonce }, due);
      else frames.push(frame);
    }
    outs.push(...script(s));
  }
  return { outs, frames };
}

/** The state event among the outputs. */
function stateOf(outs) {
  return outs.filter((o) => o.kind === "event" && o.name === "state").map((o) => o.value);
}

// ---------------------------------------------------------------- handshake

test("start asks for a link; Hello carries the token and resume positions; Welcome opens", () => {
  const resume = [{ conversationId: conv(1), lastSeq: 41 }];
  const s = new Session(settings(), "the-token", resume);
  assert.equal(s.phase, "idle");
  assert.equal(s.pollTimeout(), undefined, "nothing is timed before start");
  s.start(T0);
  assert.deepEqual(script(s), ["state:connecting", "connect"]);
  assert.equal(s.pollTimeout(), undefined, "the driver answers connect; no deadline meanwhile");

  s.linkOpened("webtransport", undefined, T0);
  const [hello, ...rest] = written(s);
  assert.deepEqual(rest, []);
  assert.equal(hello.kind, "hello");
  assert.equal(hello.accessToken, "the-token");
  assert.deepEqual(hello.resume, resume);
  assert.equal(hello.clientName, "test");
  assert.equal(s.phase, "awaitingWelcome");
  assert.equal(s.pollTimeout(), T0 + 10_000, "Welcome is awaited 10 s");

  s.handleFrame(welcome({ idleTimeoutMs: 45_000, maxFrameSize: 4_096 }), T0 + 30);
  assert.equal(s.isOpen, true);
  assert.equal(s.userId, ME);
  assert.equal(s.transport, "webtransport");
  const outs = outputs(s);
  assert.deepEqual(outs[0], { kind: "maxFrameSize", bytes: 4_096 });
  assert.deepEqual(stateOf(outs), [{ state: "open", transport: "webtransport", error: undefined, fallback: undefined }]);
});

test("frames before Welcome are ignored", () => {
  const s = new Session(settings(), "token");
  s.start(T0);
  s.linkOpened("websocket", "webtransport: not available in this browser", T0);
  outputs(s);
  s.handleFrame(message(conv(1), 1), T0);
  s.handleFrame(sentFrame(msgId(1), 1), T0);
  assert.deepEqual(outputs(s), []);
  s.handleFrame(welcome(), T0);
  const [open] = stateOf(outputs(s));
  assert.equal(open.fallback, "webtransport: not available in this browser", "the fallback is told when open");
  assert.deepEqual(s.positions(), []);
});

test("no Welcome within 10 s: the link is closed and a first connection fails to the caller", () => {
  const s = new Session(settings(), "token");
  s.start(T0);
  s.linkOpened("webtransport", undefined, T0);
  s.send(sendTo(msgId(1)), "a", T0);
  outputs(s);
  s.handleTimeout(T0 + 9_999);
  assert.deepEqual(outputs(s), []);
  s.handleTimeout(T0 + 10_000);
  const outs = outputs(s);
  assert.deepEqual(outs.map((o) => o.kind), ["closeLink", "sendFailed", "event"]);
  assert.match(outs[1].error.message, /no Welcome within 10000 ms/);
  assert.equal(stateOf(outs)[0].state, "closed");
  assert.equal(s.isClosed, true);
  assert.equal(s.pollTimeout(), undefined);
});

test("a first connection that cannot connect fails to the caller", () => {
  const s = new Session(settings(), "token");
  s.start(T0);
  outputs(s);
  s.connectFailed(new Error("cannot connect (webtransport: refused; websocket: refused)"), T0 + 5);
  const [closed] = stateOf(outputs(s));
  assert.equal(closed.state, "closed");
  assert.match(closed.error.message, /cannot connect/);
  // The link the driver opens anyway after the close is not wanted.
  s.linkOpened("websocket", undefined, T0 + 6);
  assert.deepEqual(script(s), ["closeLink"]);
  assert.deepEqual(written(s), []);
});

test("a first connection refused with a retryable code is tried again", () => {
  const s = new Session(settings(), "token");
  s.start(T0);
  s.linkOpened("webtransport", undefined, T0);
  outputs(s);
  s.handleFrame(closingFrame("server_draining", 2_000), T0 + 10);
  s.linkClosed({ code: 0 }, T0 + 11);
  const [reconnecting] = stateOf(outputs(s));
  assert.equal(reconnecting.state, "reconnecting");
  assert.equal(reconnecting.error.code, "server_draining");
  assert.equal(s.pollTimeout(), T0 + 11 + 2_000, "not sooner than the server asked");
  s.handleTimeout(T0 + 2_011);
  assert.deepEqual(script(s), ["state:connecting", "connect"], "still the first connection");
});

test("a bad token or resume position fails at construction, naming the field", () => {
  assert.throws(() => new Session(settings(), ""), (err) => err instanceof ProtocolError && err.field === "Hello.access_token");
  assert.throws(
    () => new Session(settings(), "token", [{ conversationId: "not-a-uuid", lastSeq: 1 }]),
    (err) => err instanceof ProtocolError && err.field === "ResumePosition.conversation_id",
  );
});

// ---------------------------------------------------------------- sends

test("sends made before Welcome go out after it, in order, and resolve by clientMsgId in any order", () => {
  const s = new Session(settings(), "token");
  s.start(T0);
  s.send(sendTo(msgId(1), "one"), "a", T0);
  s.linkOpened("webtransport", undefined, T0);
  s.send(sendTo(msgId(2), "two"), "b", T0);
  assert.deepEqual(written(s).map((f) => f.kind), ["hello"], "nothing but Hello before Welcome");
  s.handleFrame(welcome(), T0 + 20);
  assert.deepEqual(written(s).map((f) => f.clientMsgId), [msgId(1), msgId(2)]);
  assert.equal(s.inFlight, 2);
  outputs(s);

  s.handleFrame(sentFrame(msgId(2), 8), T0 + 30);
  s.handleFrame(sentFrame(msgId(1), 7), T0 + 31);
  const outs = outputs(s);
  assert.deepEqual(script({ pollOutput: () => outs.shift() }), ["sendDone:b", "sent", "sendDone:a", "sent"]);
  assert.equal(s.inFlight, 0);
});

test("a refusal rejects its send; an error naming no send is an event", () => {
  const s = open();
  s.send(sendTo(msgId(1)), "a", T0);
  written(s);
  s.handleFrame(errorFrame("forbidden", msgId(1)), T0 + 5);
  s.handleFrame(errorFrame("invalid_field"), T0 + 6);
  const [refused, event] = outputs(s);
  assert.equal(refused.kind, "sendFailed");
  assert.equal(refused.waiter, "a");
  assert.ok(refused.error instanceof ProtocolError);
  assert.equal(refused.error.code, "forbidden");
  assert.equal(refused.error.clientMsgId, msgId(1));
  assert.equal(event.name, "error");
  assert.equal(event.value.code, "invalid_field");
  assert.equal(s.inFlight, 0);
});

test("rate_limited: the send goes again after a backoff, and later sends wait behind it", () => {
  const s = open();
  s.send(sendTo(msgId(1)), "a", T0);
  written(s);
  s.handleFrame(errorFrame("rate_limited", msgId(1)), T0 + 10);
  assert.deepEqual(outputs(s), [], "a retryable refusal is no answer yet");
  s.send(sendTo(msgId(2)), "b", T0 + 20);
  assert.deepEqual(written(s), [], "b may not overtake a");
  assert.equal(s.pollTimeout(), T0 + 10 + 500);
  s.handleTimeout(T0 + 510);
  assert.deepEqual(written(s).map((f) => f.clientMsgId), [msgId(1), msgId(2)]);
  // Refused again: the pause doubles.
  s.handleFrame(errorFrame("unavailable", msgId(1)), T0 + 600);
  assert.equal(s.pollTimeout(), T0 + 600 + 1_000);
});

test("sends are paced by the send rate Welcome announced", () => {
  const s = open({}, { sendRatePerSec: 2, sendBurst: 1 });
  s.send(sendTo(msgId(1)), "a", T0);
  s.send(sendTo(msgId(2)), "b", T0);
  assert.deepEqual(written(s).map((f) => f.clientMsgId), [msgId(1)]);
  assert.equal(s.pollTimeout(), T0 + 500, "the next token in half a second");
  s.handleTimeout(T0 + 500);
  assert.deepEqual(written(s).map((f) => f.clientMsgId), [msgId(2)]);
});

test("a send without an answer is written again, with the same id, after the next Welcome", () => {
  const s = open();
  s.send(sendTo(msgId(1)), "a", T0);
  written(s);
  const at = reconnect(s, T0 + 100);
  assert.deepEqual(written(s).map((f) => f.kind), ["hello"]);
  s.handleFrame(welcome({ at }), at);
  assert.deepEqual(written(s).map((f) => f.clientMsgId), [msgId(1)]);
  s.handleFrame(sentFrame(msgId(1), 1), at + 10);
  assert.deepEqual(script(s).slice(-2), ["sendDone:a", "sent"]);
});

test("a clientMsgId already waiting for its answer is refused, the first send kept", () => {
  const s = open();
  s.send(sendTo(msgId(1), "one"), "a", T0);
  s.send(sendTo(msgId(1), "again"), "b", T0);
  const [refused] = outputs(s);
  assert.equal(refused.kind, "sendFailed");
  assert.equal(refused.waiter, "b");
  assert.match(refused.error.message, /already waiting/);
  assert.deepEqual(written(s).map((f) => f.content), ["one"]);
  assert.equal(s.inFlight, 1);
});

test("a bad send throws at the call and keeps nothing", () => {
  const s = open();
  assert.throws(
    () => s.send({ ...sendTo(msgId(1)), recipient: { userId: "bob" } }, "a", T0),
    (err) => err instanceof ProtocolError && err.field === "Recipient.user_id",
  );
  assert.equal(s.inFlight, 0);
  assert.deepEqual(written(s), []);
});

// ---------------------------------------------------------------- positions and resume

test("duplicates are dropped; positions follow messages, and the next Hello resumes from them", () => {
  const s = open({}, { resume: [{ conversationId: conv(1), lastSeq: 10 }] });
  s.handleFrame(message(conv(1), 11), T0);
  s.handleFrame(message(conv(1), 11), T0);
  s.handleFrame(message(conv(1), 9), T0);
  s.send(sendTo(msgId(1)), "a", T0);
  s.handleFrame(sentFrame(msgId(1), 12), T0);
  s.handleFrame(message(conv(2), 3), T0);
  assert.deepEqual(
    script(s).filter((o) => o.startsWith("message")),
    ["message:11", "message:3"],
  );
  assert.deepEqual(s.positions(), [
    { conversationId: conv(1), lastSeq: 11 },
    { conversationId: conv(2), lastSeq: 3 },
  ], "a Sent does not move the position; our own Message does");
  s.handleFrame(message(conv(1), 12, ME), T0);
  written(s);
  reconnect(s, T0 + 100);
  const [hello] = written(s);
  assert.deepEqual(hello.resume, [
    { conversationId: conv(1), lastSeq: 12 },
    { conversationId: conv(2), lastSeq: 3 },
  ]);
});

test("a gap closes the link and reconnects, resuming from the last seq held", () => {
  const s = open();
  s.handleFrame(message(conv(1), 1), T0);
  outputs(s);
  s.handleFrame(message(conv(1), 3), T0 + 5);
  const outs = outputs(s);
  assert.equal(outs[0].kind, "closeLink");
  const [reconnecting] = stateOf(outs);
  assert.equal(reconnecting.state, "reconnecting");
  assert.match(reconnecting.error.message, /a gap in conversation .*: seq 3 after 1/);
  assert.deepEqual(written(s), [], "the coalesced ack dies with the link");
  s.handleFrame(message(conv(1), 2), T0 + 6);
  assert.deepEqual(outputs(s), [], "frames of the dropped link are ignored");
  s.handleTimeout(s.pollTimeout());
  s.linkOpened("webtransport", undefined, T0 + 300);
  assert.deepEqual(written(s)[0].resume, [{ conversationId: conv(1), lastSeq: 1 }]);
});

// ---------------------------------------------------------------- acks and read marks

test("auto-ack coalesces a batch into one ack per conversation after 50 ms", () => {
  const s = open();
  for (const seq of [1, 2, 3]) s.handleFrame(message(conv(1), seq), T0);
  s.handleFrame(message(conv(2), 7), T0 + 10);
  assert.deepEqual(written(s), [], "acks wait for the listeners and the batch");
  assert.equal(s.pollTimeout(), T0 + 50, "the first message starts the delay");
  s.handleTimeout(T0 + 50);
  assert.deepEqual(
    written(s).map(({ kind, conversationId, seq }) => [kind, conversationId, seq]),
    [["ack", conv(1), 3], ["ack", conv(2), 7]],
  );
  s.handleTimeout(T0 + 200);
  assert.deepEqual(written(s), [], "nothing new to ack");
});

test("without autoAck only the caller's acks go out, at once", () => {
  const s = open({ autoAck: false });
  s.handleFrame(message(conv(1), 1), T0);
  s.handleFrame(message(conv(1), 2), T0);
  assert.equal(s.pollTimeout(), T0 + 15_000, "only the heartbeat is timed");
  s.ack(conv(1), 2, T0 + 1);
  assert.deepEqual(written(s).map(({ kind, seq }) => [kind, seq]), [["ack", 2]]);
});

test("read marks are coalesced, never go back, and are sent again after every Welcome", () => {
  const s = open();
  s.read(conv(1), 5, T0);
  s.read(conv(1), 3, T0 + 1);
  s.read(conv(1), 6, T0 + 2);
  s.read(conv(2), 1, T0 + 3);
  assert.equal(s.pollTimeout(), T0 + 50);
  s.handleTimeout(T0 + 50);
  assert.deepEqual(written(s).map(({ conversationId, seq }) => [conversationId, seq]), [[conv(1), 6], [conv(2), 1]]);
  assert.throws(() => s.read("nope", 1, T0 + 60), ProtocolError, "a bad id fails at the call");

  const at = reconnect(s, T0 + 100);
  s.read(conv(1), 7, at); // while not open: kept for Welcome
  written(s);
  s.handleFrame(welcome({ at }), at);
  assert.deepEqual(
    written(s).map(({ kind, conversationId, seq }) => [kind, conversationId, seq]),
    [["read", conv(1), 7], ["read", conv(2), 1]],
  );
});

test("closing locally writes the coalesced acks and read marks before the link closes", () => {
  const s = open();
  s.handleFrame(message(conv(1), 4), T0);
  s.read(conv(1), 4, T0);
  s.send(sendTo(msgId(1)), "a", T0);
  written(s);
  outputs(s);
  s.close(T0 + 10);
  assert.deepEqual(written(s).map((f) => f.kind), ["ack", "read"]);
  const outs = outputs(s);
  assert.deepEqual(outs.map((o) => o.kind), ["closeLink", "sendFailed", "event"]);
  assert.match(outs[1].error.message, /the client is closed/);
  assert.deepEqual(stateOf(outs), [{ state: "closed", transport: null, error: undefined, fallback: undefined }]);
  assert.equal(s.pollTimeout(), undefined);

  s.send(sendTo(msgId(2)), "b", T0 + 20);
  assert.deepEqual(script(s), ["sendFailed:b"], "a send after close fails at once");
  s.handleFrame(message(conv(1), 5), T0 + 21);
  s.linkClosed({ code: 0 }, T0 + 22);
  assert.deepEqual(outputs(s), [], "the closed session ignores its link");
});

// ---------------------------------------------------------------- heartbeat

test("a Ping goes out after a third of the idle timeout without traffic either way", () => {
  const s = open(); // idle timeout 45 s: ping every 15 s
  assert.equal(s.pollTimeout(), T0 + 15_000);
  s.ack(conv(1), 1, T0 + 5_000);
  s.handleFrame({ kind: "presence", userId: PEER, online: true, lastSeen: null }, T0 + 6_000);
  written(s);
  outputs(s);
  assert.equal(s.pollTimeout(), T0 + 20_000, "a frame each way pushes the ping back");
  s.handleTimeout(T0 + 19_999);
  assert.deepEqual(written(s), []);
  s.handleTimeout(T0 + 20_000);
  const [ping] = written(s);
  assert.equal(ping.kind, "ping");
  // A timely Pong (for this ping: a stray nonce is not one) keeps the connection.
  s.handleFrame({ kind: "pong", nonce: ping.nonce + 7 }, T0 + 20_010);
  assert.equal(s.pollTimeout(), T0 + 30_000, "still waiting for the Pong");
  s.handleFrame({ kind: "pong", nonce: ping.nonce }, T0 + 20_030);
  assert.equal(s.pollTimeout(), T0 + 20_000 + 15_000, "the next ping from the last frame sent");
  assert.equal(s.isOpen, true);
});

test("a client that keeps sending but hears nothing pings, and reconnects when no Pong comes", () => {
  const s = open({ pongTimeoutMs: 4_000 }, { idleTimeoutMs: 0 }); // no idle timeout: every 25 s
  for (const at of [5_000, 10_000, 24_000]) s.ack(conv(1), 1, T0 + at);
  written(s);
  assert.equal(s.pollTimeout(), T0 + 25_000, "quiet inbound is enough");
  s.handleTimeout(T0 + 25_000);
  assert.deepEqual(written(s).map((f) => f.kind), ["ping"]);
  s.ack(conv(1), 2, T0 + 26_000);
  assert.deepEqual(written(s).map((f) => f.kind), ["ack"], "one ping out at a time");
  assert.equal(s.pollTimeout(), T0 + 29_000);
  s.handleTimeout(T0 + 29_000);
  const outs = outputs(s);
  assert.equal(outs[0].kind, "closeLink");
  const [reconnecting] = stateOf(outs);
  assert.equal(reconnecting.state, "reconnecting");
  assert.match(reconnecting.error.message, /no Pong within 4000 ms/);
});

// ---------------------------------------------------------------- token refresh

test("the token is refreshed a minute before it expires and the new one goes in-band", () => {
  const s = open({ canRefresh: true }, { lifetimeMs: 15 * 60_000 });
  const due = T0 + 14 * 60_000;
  assert.deepEqual(advance(s, due - 1).outs, [], "only heartbeats until then");
  assert.deepEqual(advance(s, due).outs, ["refreshToken"]);
  assert.deepEqual(advance(s, due + 100_000).outs, [], "one call at a time");

  const at = due + 100_000;
  const fresh = jwt(at + 15 * 60_000);
  s.tokenRefreshed(fresh, at);
  assert.deepEqual(written(s).map((f) => [f.kind, f.accessToken]), [["refreshAuth", fresh]]);
  assert.equal(s.token, fresh);
  // The next is planned from the new token's exp.
  assert.deepEqual(advance(s, at + 14 * 60_000 - 1).outs, []);
  assert.deepEqual(advance(s, at + 14 * 60_000).outs, ["refreshToken"]);
});

test("a short-lived token is refreshed at four fifths of its life, or refreshMarginMs before", () => {
  const short = open({ canRefresh: true }, { lifetimeMs: 100_000 });
  assert.deepEqual(advance(short, T0 + 79_999).outs, []);
  assert.deepEqual(advance(short, T0 + 80_000).outs, ["refreshToken"]);

  const margin = open({ canRefresh: true, refreshMarginMs: 899_000 }, { lifetimeMs: 900_000 });
  assert.equal(margin.pollTimeout(), T0 + 1_000, "never sooner than a second");
});

test("a failed refresh is tried again later; without refreshToken nothing is planned", () => {
  const s = open({ canRefresh: true }, { lifetimeMs: 15 * 60_000 });
  const due = T0 + 14 * 60_000;
  assert.deepEqual(advance(s, due).outs, ["refreshToken"]);
  s.tokenRefreshFailed(new Error("offline"), due + 10);
  assert.equal(s.isOpen, true, "the session goes on with the token it has");
  // Planned as for a 50 s token: 40 s later.
  assert.deepEqual(advance(s, due + 10 + 39_999).outs, []);
  assert.deepEqual(advance(s, due + 10 + 40_000).outs, ["refreshToken"]);

  const plain = open({ canRefresh: false }, { lifetimeMs: 15 * 60_000 });
  assert.deepEqual(advance(plain, T0 + 60 * 60_000).outs, [], "only heartbeats");
});

test("token_expired: a new token first, then the reconnect says it", () => {
  const s = open({ canRefresh: true });
  s.handleFrame(closingFrame("token_expired"), T0 + 100);
  s.linkClosed({ code: 0 }, T0 + 101);
  const outs = outputs(s);
  assert.deepEqual(outs.map((o) => o.kind), ["event", "refreshToken"]);
  assert.equal(outs[0].value.state, "reconnecting");
  assert.equal(outs[0].value.error.code, "token_expired");
  assert.equal(s.phase, "refreshing");
  assert.equal(s.pollTimeout(), undefined, "waiting for the token, not the clock");

  s.tokenRefreshed("new.token.here", T0 + 300);
  assert.equal(s.phase, "backoff");
  s.handleTimeout(s.pollTimeout());
  assert.deepEqual(script(s).slice(-1), ["connect"]);
  s.linkOpened("webtransport", undefined, T0 + 600);
  assert.equal(written(s)[0].accessToken, "new.token.here");
});

test("token_expired without refreshToken, or when refreshing fails, ends the client", () => {
  const without = open({ canRefresh: false });
  without.handleFrame(closingFrame("token_expired"), T0);
  without.linkClosed({}, T0);
  const [closed] = stateOf(outputs(without));
  assert.equal(closed.state, "closed");
  assert.equal(closed.error.code, "token_expired");
  assert.match(closed.error.message, /no refreshToken/);

  const failing = open({ canRefresh: true });
  failing.send(sendTo(msgId(1)), "a", T0);
  failing.handleFrame(closingFrame("token_expired"), T0);
  failing.linkClosed({}, T0);
  outputs(failing);
  failing.tokenRefreshFailed(new Error("refresh token revoked"), T0 + 50);
  const outs = outputs(failing);
  assert.equal(outs[0].kind, "sendFailed");
  const [end] = stateOf(outs);
  assert.equal(end.state, "closed");
  assert.equal(end.error.message, "the access token expired and refreshing it failed: refresh token revoked");
});

test("a token_expired close while a planned refresh is out waits for that one call", () => {
  const s = open({ canRefresh: true, refreshMarginMs: 899_000 }, { lifetimeMs: 900_000 });
  s.handleTimeout(T0 + 1_000);
  assert.deepEqual(script(s), ["refreshToken"]);
  s.handleFrame(closingFrame("token_expired"), T0 + 1_100);
  s.linkClosed({}, T0 + 1_101);
  assert.deepEqual(script(s), ["state:reconnecting"], "no second refreshToken");
  s.tokenRefreshed("fresh.token.x", T0 + 1_200);
  assert.equal(s.phase, "backoff", "the answer serves the reconnect");
});

// ---------------------------------------------------------------- backoff

test("reconnects back off exponentially with equal jitter, up to the maximum; a Welcome resets it", () => {
  const pauses = (random) => {
    const s = open({ random });
    let at = T0 + 1_000;
    s.linkClosed({ reason: "reset" }, at);
    const out = [];
    for (let i = 0; i < 9; i++) {
      const due = s.pollTimeout();
      out.push(due - at);
      s.handleTimeout(due);
      at = due + 100;
      s.connectFailed(new Error("cannot connect"), at);
    }
    // Back once: the next loss starts from the first ceiling again.
    s.handleTimeout(s.pollTimeout());
    s.linkOpened("webtransport", undefined, at);
    s.handleFrame(welcome({ at }), at);
    s.linkClosed({ reason: "reset" }, at + 1);
    out.push(s.pollTimeout() - (at + 1));
    return out;
  };
  assert.deepEqual(pauses(() => 0), [250, 500, 1_000, 2_000, 4_000, 8_000, 15_000, 15_000, 15_000, 250]);
  assert.deepEqual(pauses(() => 0.5), [375, 750, 1_500, 3_000, 6_000, 12_000, 22_500, 22_500, 22_500, 375]);
});

test("reconnectDelayMs and maxReconnectDelayMs shape the backoff; the server's retryAfterMs is a floor", () => {
  const s = open({ reconnectDelayMs: 100, maxReconnectDelayMs: 300 });
  s.linkClosed({}, T0 + 1);
  assert.equal(s.pollTimeout(), T0 + 1 + 50);
  s.handleTimeout(T0 + 51);
  s.connectFailed(new Error("x"), T0 + 51);
  assert.equal(s.pollTimeout(), T0 + 51 + 100);
  s.handleTimeout(T0 + 151);
  s.connectFailed(new Error("x"), T0 + 151);
  assert.equal(s.pollTimeout(), T0 + 151 + 150, "half of the 300 ms ceiling");

  const drained = open();
  drained.handleFrame(closingFrame("server_draining", 45_000), T0 + 5);
  drained.linkClosed({}, T0 + 6);
  assert.equal(drained.pollTimeout(), T0 + 6 + 45_000);
});

// ---------------------------------------------------------------- close codes

const CLOSE_CODES = [
  // code, what follows
  ["unauthenticated", "closed"],
  ["unsupported_version", "closed"],
  ["bad_frame", "closed"],
  ["frame_too_large", "closed"],
  ["text_message_refused", "closed"],
  ["server_draining", "reconnecting"],
  ["slow_consumer", "reconnecting"],
  ["internal", "reconnecting"],
  ["idle_timeout", "reconnecting"],
];

for (const [code, then] of CLOSE_CODES) {
  test(`Closing ${code} after Welcome: ${then}, with the code as the error`, () => {
    const s = open();
    s.send(sendTo(msgId(1)), "a", T0);
    written(s);
    s.handleFrame(closingFrame(code), T0 + 5);
    assert.equal(s.phase, "closing");
    assert.equal(s.isOpen, false);
    // The transport often reports the close without the code: the Closing had it.
    s.linkClosed({ code: 0, reason: "" }, T0 + 6);
    const outs = outputs(s);
    const [state] = stateOf(outs);
    assert.equal(state.state, then);
    assert.ok(state.error instanceof ProtocolError);
    assert.equal(state.error.code, code);
    const failed = outs.filter((o) => o.kind === "sendFailed");
    if (then === "closed") {
      assert.equal(failed.length, 1);
      assert.equal(failed[0].error.code, code);
    } else {
      assert.equal(failed.length, 0, "the send waits for the next connection");
      assert.equal(s.inFlight, 1);
    }
  });
}

test("a transport failure after Closing reports the Closing's code", () => {
  const s = open();
  s.handleFrame(closingFrame("unauthenticated"), T0);
  s.linkClosed({ error: new Error("connection lost") }, T0 + 1);
  const [closed] = stateOf(outputs(s));
  assert.equal(closed.state, "closed");
  assert.equal(closed.error.code, "unauthenticated");
});

test("a Closing the server does not follow with a close is acted on after 5 s", () => {
  const s = open();
  s.handleFrame(closingFrame("server_draining", 1_000), T0);
  assert.equal(s.pollTimeout(), T0 + 5_000);
  s.handleTimeout(T0 + 5_000);
  const outs = outputs(s);
  assert.equal(outs[0].kind, "closeLink");
  assert.equal(stateOf(outs)[0].error.code, "server_draining");
  assert.equal(s.pollTimeout(), T0 + 5_000 + 1_000);
});

test("a lost link without Closing reconnects with the transport's reason", () => {
  const s = open();
  s.linkClosed({ code: 1006, reason: "abnormal closure" }, T0 + 3);
  const [state] = stateOf(outputs(s));
  assert.equal(state.state, "reconnecting");
  assert.equal(state.error.message, "connection closed: abnormal closure");
  assert.equal(state.transport, null);
  assert.equal(s.transport, null);
});

// ---------------------------------------------------------------- typing, presence, events

test("typing: started at most every 3 s, stopped only after started, as an ephemeral frame", () => {
  const s = open();
  const typed = () => {
    const out = [];
    for (let t = s.pollTransmit(); t; t = s.pollTransmit()) out.push([decodeClientFrame(t.body).state, t.ephemeral]);
    return out;
  };
  s.typing(conv(1), true, T0);
  s.typing(conv(1), true, T0 + 1_000);
  assert.deepEqual(typed(), [["started", true]]);
  s.typing(conv(1), true, T0 + 3_000);
  s.typing(conv(1), false, T0 + 3_500);
  s.typing(conv(1), false, T0 + 3_600);
  assert.deepEqual(typed(), [["started", true], ["stopped", true]]);
  s.send(sendTo(msgId(1)), "a", T0 + 4_000);
  assert.equal(s.pollTransmit().ephemeral, false, "only typing is ephemeral");
});

test("typing spends from the send rate, and is dropped rather than queued when it is spent", () => {
  const s = open({}, { sendRatePerSec: 1, sendBurst: 1 });
  s.send(sendTo(msgId(1)), "a", T0);
  s.typing(conv(1), true, T0 + 10);
  assert.deepEqual(written(s).map((f) => f.kind), ["send"], "no token left for typing: dropped");
  s.typing(conv(2), true, T0 + 1_000);
  s.send(sendTo(msgId(2)), "b", T0 + 1_001);
  assert.deepEqual(written(s).map((f) => f.kind), ["typing"], "the typing took the token; b waits");
  assert.equal(s.pollTimeout(), T0 + 2_000, "a full token a second after the last");
});

test("others' typing expires after 6 s without a refresh, even across a reconnect", () => {
  const s = open();
  const started = { kind: "typing", conversationId: conv(1), userId: PEER, state: "started" };
  s.handleFrame(started, T0);
  s.handleFrame(started, T0 + 2_000); // refreshed
  assert.deepEqual(script(s), ["typing:true", "typing:true"]);
  s.linkClosed({ reason: "reset" }, T0 + 3_000);
  outputs(s);
  s.handleTimeout(T0 + 7_999);
  assert.ok(!script(s).includes("typing:false"));
  s.handleTimeout(T0 + 8_000);
  assert.ok(script(s).includes("typing:false"));
});

test("the presence watch set goes out when open and again after every Welcome", () => {
  const s = new Session(settings(), "token");
  s.start(T0);
  s.watchPresence([PEER, PEER], T0);
  s.linkOpened("webtransport", undefined, T0);
  s.handleFrame(welcome(), T0);
  assert.deepEqual(written(s).map((f) => [f.kind, f.userIds]), [["hello", undefined], ["presenceWatch", [PEER]]]);
  s.watchPresence([], T0 + 1);
  assert.deepEqual(written(s).map((f) => [f.kind, f.userIds]), [["presenceWatch", []]]);
});

test("receipts, presence and notifications are events", () => {
  const s = open();
  s.handleFrame({ kind: "status", conversationId: conv(1), userId: PEER, delivered: 3, read: null }, T0);
  s.handleFrame({ kind: "presence", userId: PEER, online: false, lastSeen: T0 - 1_000 }, T0);
  const notification = {
    kind: "notification",
    id: "01920000-0000-7000-8000-0000000000f1",
    type: "like",
    actorId: PEER,
    actorUsername: "bob",
    postId: "01920000-0000-7000-8000-0000000000f2",
    commentId: null,
    createdAt: T0,
    unreadCount: 3,
  };
  s.handleFrame(notification, T0);
  const { kind: _, ...withoutKind } = notification;
  assert.deepEqual(outputs(s), [
    { kind: "event", name: "status", value: { conversationId: conv(1), userId: PEER, delivered: 3, read: 0 } },
    { kind: "event", name: "presence", value: { userId: PEER, online: false, lastSeen: T0 - 1_000 } },
    { kind: "event", name: "notification", value: withoutKind },
  ]);
});
