// The parts of the client that need no server: argument checks and token expiry. The session
// core is scripted in session.test.mjs; the whole client runs against the real gateway in
// tests/browser.test.mjs.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HaberciClient, ProtocolError, tokenLifetimeMs } from "../../build/sdk/haberci.mjs";

test("bad options fail at once with a clear message", () => {
  assert.throws(() => new HaberciClient({ token: "t" }), /`url`/);
  assert.throws(() => new HaberciClient({ url: "https://x" }), /`token`/);
  assert.throws(() => new HaberciClient({ url: "https://x", token: "t", transports: ["carrier-pigeon"] }), /unknown transport/);
});

test("a send with a bad recipient or type fails at the call, naming the field", async () => {
  const client = new HaberciClient({ url: "https://x", token: "t" });
  assert.throws(() => client.send({ userId: "bob" }, "hi"), (err) => err instanceof ProtocolError && err.field === "Recipient.user_id");
  assert.throws(
    () => client.send({ userId: "01920000-0000-7000-8000-000000000b0b" }, "hi", "sticker"),
    (err) => err instanceof ProtocolError && err.field === "Send.type",
  );
  client.close();
  await assert.rejects(client.send({ userId: "01920000-0000-7000-8000-000000000b0b" }, "hi"), /closed/);
});

test("token lifetime comes from the JWT's exp claim", () => {
  const claims = Buffer.from(JSON.stringify({ sub: "u", exp: 1_000 })).toString("base64url");
  assert.equal(tokenLifetimeMs(`e30.${claims}.sig`, 400_000), 600_000);
  assert.equal(tokenLifetimeMs("not a jwt"), 0);
});
