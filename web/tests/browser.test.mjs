// The demo page and the SDK in a real headless Chromium (Debian's, driven by playwright-core),
// against the running stack. Run by tests/dev/browser.sh, which sets:
//
//   HABERCI_TEST_GATEWAY_URL   https://localhost:<tcp port>  (the page and the API)
//   HABERCI_TEST_CA            the dev CA (its leaf's key is the one Chromium is told to accept;
//                              Node trusts it through NODE_EXTRA_CA_CERTS)
//   HABERCI_TEST_GATEWAY_UDP   localhost:<udp port>  (QUIC, for the Rust client)
//   HABERCI_TEST_OUTPUT        where screenshots go
//   HABERCI_TEST_INTEROP_PEER  the Rust SDK's interop_peer example (client/examples)
//   HABERCI_TEST_GATEWAY_STOP, HABERCI_TEST_GATEWAY_START   shell commands that stop / start
//                              the gateway of the stack
//
// Every wait is on an event (a selector, a frame), bounded by the test's timeout; the one
// poll is the home timeline's, refreshed until a post the worker fans out arrives.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash, X509Certificate, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { chromium } from "playwright-core";

const GATEWAY = required("HABERCI_TEST_GATEWAY_URL");
const CA = required("HABERCI_TEST_CA");
const OUTPUT = required("HABERCI_TEST_OUTPUT");
const PEER = required("HABERCI_TEST_INTEROP_PEER");
const { hostname, port: tcpPort } = new URL(GATEWAY);
const TIMEOUT = 60_000;
const run = randomBytes(3).toString("hex");

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run through tests/dev/browser.sh`);
  return value;
}

/** The base64 SHA-256 of the TCP leaf's public key: the one certificate Chromium may accept. */
function serverSpki() {
  const leaf = new X509Certificate(readFileSync(join(CA, "..", "server.pem")));
  const spki = leaf.publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

let browser;
const pages = {};

async function openPage(name, { blockWebTransport = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => console.error(`[${name}] page error: ${err.message}`));
  page.on("console", (msg) => {
    // Connection attempts while the gateway is down are expected; anything else (a CSP
    // violation, an exception) is worth seeing.
    if (msg.type() === "error" && !/net::ERR_|Failed to load resource/.test(msg.text())) {
      console.error(`[${name}] console: ${msg.text()}`);
    }
  });
  page.discoveries = [];
  if (blockWebTransport) {
    // WebTransport made to fail: the page is told to pin certificate hashes the server's
    // certificate does not have, so the WebTransport handshake fails and the SDK falls back.
    // (Node trusts the dev CA through NODE_EXTRA_CA_CERTS, set by browser.sh.)
    await page.route("**/v1/realtime", async (route) => {
      try {
        const response = await route.fetch();
        const info = await response.json();
        for (const hash of info.webTransport.certificateHashes) {
          hash.value = createHash("sha256").update(`not ${hash.value}`).digest("hex");
        }
        page.discoveries.push(info);
        await route.fulfill({ response, json: info });
      } catch {
        // The gateway is down (the restart test): the page sees the same failure.
        await route.abort("connectionrefused");
      }
    });
  }
  await page.goto(`${GATEWAY}/`);
  return page;
}

async function register(page, username) {
  await page.fill("#auth-form input[name=username]", username);
  await page.fill("#auth-form input[name=password]", "correct horse battery");
  await page.click("#auth-form button[value=register]");
  await page.waitForSelector("#connection[data-state=open]");
  return page.getAttribute("#connection", "data-transport");
}

async function openChat(page, username) {
  await page.fill("#new-chat input[name=username]", username);
  await page.click("#new-chat button");
  await page.waitForSelector(`#chat-view:not([hidden])`);
  await page.waitForFunction((u) => document.querySelector("#chat-title")?.textContent === u, username);
}

async function sendText(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The texts of the open conversation's messages, in order; `mine` picks one side. */
function texts(page, mine) {
  return page.$$eval(
    "#message-list li.msg",
    (items, mine) => items.filter((li) => mine === undefined || li.classList.contains("mine") === mine).map((li) => li.querySelector(".body").textContent),
    mine,
  );
}

async function waitForText(page, text, mine) {
  try {
    await page.waitForFunction(
      ([text, mine]) =>
        [...document.querySelectorAll("#message-list li.msg")].some(
          (li) => li.querySelector(".body").textContent === text && (mine === null || li.classList.contains("mine") === mine),
        ),
      [text, mine ?? null],
    );
  } catch (err) {
    err.message += `\n  waiting for "${text}"; the pages' connections: ${await connections()}`;
    throw err;
  }
}

/** Each open page's connection badge: state, transport and the last error (its title). */
async function connections() {
  const states = [];
  for (const [name, page] of Object.entries(pages)) {
    const badge = await page
      .$eval("#connection", (el) => `${el.dataset.state}/${el.dataset.transport || "-"} ${JSON.stringify(el.title)}`)
      .catch((err) => `unreadable (${err.message})`);
    states.push(`${name} ${badge}`);
  }
  return states.join("; ");
}

function waitForStatus(page, text, status) {
  return page.waitForFunction(
    ([text, status]) =>
      [...document.querySelectorAll("#message-list li.msg.mine")].some(
        (li) => li.querySelector(".body").textContent === text && li.dataset.status === status,
      ),
    [text, status],
  );
}

/** An element of `selector` whose `part` has exactly `text` (its links' text included). */
function withText(page, selector, part, text) {
  const exact = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
  return page.locator(selector).filter({ has: page.locator(part, { hasText: exact }) });
}

/** A post in a list (`#feed`, `#profile-posts`, `#thread-post`) by its text. */
function postIn(page, list, text) {
  return withText(page, `${list} li.post`, ".post-body", text);
}

async function openFeed(page) {
  await page.click("#tab-feed");
  await page.waitForSelector("#home-view:not([hidden])");
}

async function publish(page, text) {
  await page.fill("#post-text", text);
  await page.click("#post-form button[type=submit]");
}

/**
 * Waits for a post to be in the home timeline the server gives, refreshing it until then: the
 * fan-out to followers' timelines is asynchronous (the worker does it, usually within 100 ms).
 */
async function waitForFeedPost(page, text, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await page.click("#feed-refresh");
    try {
      await postIn(page, "#feed", text).waitFor({ timeout: 1_000 });
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`"${text}" is not in the home timeline after ${timeoutMs} ms: ${err.message}`);
    }
  }
}

const alice = `alice_${run}`;
const bob = `bob_${run}`;
const carol = `carol_${run}`;
const ayse = `ayse_${run}`;
const burak = `burak_${run}`;

describe("the demo page in Chromium", { timeout: 10 * TIMEOUT }, () => {
  before(async () => {
    mkdirSync(OUTPUT, { recursive: true });
    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        `--ignore-certificate-errors-spki-list=${serverSpki()}`,
      ],
    });
  });

  after(async () => {
    await browser?.close();
  });

  test("two users chat over WebTransport both ways, with typing and read marks", { timeout: TIMEOUT }, async () => {
    pages.alice = await openPage("alice");
    pages.bob = await openPage("bob");
    assert.equal(await register(pages.alice, alice), "webtransport");
    assert.equal(await register(pages.bob, bob), "webtransport");
    await openChat(pages.bob, alice);
    await openChat(pages.alice, bob);

    await sendText(pages.alice, "Merhaba Bob! 👋");
    await waitForText(pages.bob, "Merhaba Bob! 👋", false);
    // Bob has the conversation open: delivered, then read, reach Alice live.
    await waitForStatus(pages.alice, "Merhaba Bob! 👋", "read");

    // Typing goes to the members of a conversation that exists (the first message made it).
    await pages.bob.type("#text", "Selam");
    await pages.alice.waitForFunction((who) => document.querySelector("#typing").textContent === `${who} is typing…`, bob);
    await sendText(pages.bob, "Selam Alice");
    await waitForText(pages.alice, "Selam Alice", false);
    await pages.alice.waitForFunction(() => document.querySelector("#typing").textContent === "");
    await waitForStatus(pages.bob, "Selam Alice", "read");
    assert.deepEqual(await texts(pages.alice), ["Merhaba Bob! 👋", "Selam Alice"]);
  });

  test("a user whose WebTransport fails falls back to WebSocket and chats with a WebTransport user", { timeout: TIMEOUT }, async () => {
    pages.carol = await openPage("carol", { blockWebTransport: true });
    assert.equal(await register(pages.carol, carol), "websocket");
    // It did try WebTransport, with the hashes it was given, before falling back; the badge
    // says why.
    assert.equal(pages.carol.discoveries.length, 1);
    assert.ok(pages.carol.discoveries[0].webTransport.certificateHashes.length > 0);
    assert.match(await pages.carol.getAttribute("#connection", "title"), /^webtransport: /);
    assert.equal(await pages.alice.getAttribute("#connection", "title"), "");
    await openChat(pages.carol, alice);
    await sendText(pages.carol, "Hi Alice, over WebSocket");
    // Alice gets a new conversation with one unread message.
    const item = `#conversations li[data-title="${carol}"]`;
    await pages.alice.waitForSelector(`${item} .unread`);
    assert.equal(await pages.alice.textContent(`${item} .unread`), "1");
    await pages.alice.click(item);
    await waitForText(pages.alice, "Hi Alice, over WebSocket", false);
    await waitForStatus(pages.carol, "Hi Alice, over WebSocket", "read");
    await sendText(pages.alice, "Hi Carol, over WebTransport");
    await waitForText(pages.carol, "Hi Carol, over WebTransport", false);
    await waitForStatus(pages.alice, "Hi Carol, over WebTransport", "read");
    assert.equal(await pages.alice.getAttribute("#connection", "data-transport"), "webtransport");
    assert.equal(await pages.carol.getAttribute("#connection", "data-transport"), "websocket");
  });

  test("every page reconnects on its own across a gateway restart; messages sent meanwhile arrive once, in order", { timeout: 2 * TIMEOUT }, async () => {
    const { alice: a, bob: b, carol: c } = pages;
    execFileSync("bash", ["-c", required("HABERCI_TEST_GATEWAY_STOP")], { stdio: "inherit" });
    for (const page of [a, b, c]) await page.waitForSelector("#connection:not([data-state=open])");
    // Sent while no gateway runs: held by the SDK until a session takes them.
    await sendText(a, "while you were away 1");
    await sendText(a, "while you were away 2");
    await sendText(c, "me too");
    await a.waitForSelector('#message-list li.msg.mine[data-status="pending"]');
    execFileSync("bash", ["-c", required("HABERCI_TEST_GATEWAY_START")], { stdio: "inherit" });

    // Bob's page was idle on the same gateway: it comes back too (one that reconnected
    // before the restarted gateway had its token keys was once refused for good).
    for (const page of [a, b, c]) {
      // Up to the SDK's backoff ceiling (30 s) after the attempts made while it was down.
      await page.waitForSelector("#connection[data-state=open]", { timeout: TIMEOUT }).catch(async (err) => {
        err.message += `\n  the pages' connections: ${await connections()}`;
        throw err;
      });
    }
    await waitForText(c, "while you were away 2", false);
    await waitForText(a, "me too", false);
    await waitForStatus(a, "while you were away 2", "read");
    assert.deepEqual(await texts(c, false), ["Hi Carol, over WebTransport", "while you were away 1", "while you were away 2"]);
    assert.deepEqual(await texts(a, false), ["Hi Alice, over WebSocket", "me too"]);
    assert.equal(await a.getAttribute("#connection", "data-transport"), "webtransport");
    assert.equal(await c.getAttribute("#connection", "data-transport"), "websocket");
  });

  test("a message from the Rust client appears in the page", { timeout: TIMEOUT }, async () => {
    // Bob's second session: the Rust SDK over native QUIC, with Bob's token from his page.
    const token = await pages.bob.evaluate(() => JSON.parse(sessionStorage.getItem("haberci.tokens")).accessToken);
    const aliceId = await pages.alice.evaluate(async () => {
      const tokens = JSON.parse(sessionStorage.getItem("haberci.tokens"));
      const me = await fetch("/v1/me", { headers: { authorization: `Bearer ${tokens.accessToken}` } });
      return (await me.json()).id;
    });
    const peer = new Peer();
    try {
      const welcome = await peer.call({
        op: "connect",
        transport: "quic",
        host: hostname,
        tcpPort: Number(tcpPort),
        udpPort: Number(required("HABERCI_TEST_GATEWAY_UDP").split(":").pop()),
        ca: CA,
        token,
        resume: [],
      });
      assert.equal(welcome.frame.kind, "welcome");
      const clientMsgId = crypto.randomUUID();
      await peer.call({
        op: "send",
        frame: { kind: "send", clientMsgId, recipient: { userId: aliceId }, type: "text", content: "from the Rust SDK 🦀", media: null },
      });
      await peer.call({ op: "expect", match: [{ kind: "sent", clientMsgId }], timeoutMs: 10_000 });
      await pages.alice.click(`#conversations li[data-title="${bob}"]`);
      await waitForText(pages.alice, "from the Rust SDK 🦀", false);
      // Bob's page holds it too, as his own message from another session.
      await waitForText(pages.bob, "from the Rust SDK 🦀", true);
      await peer.call({ op: "close" });
    } finally {
      peer.kill();
    }
  });

  test("after a reload, history loads from the API and scrolling up loads older pages", { timeout: TIMEOUT }, async () => {
    const { alice: a, carol: c } = pages;
    await a.click(`#conversations li[data-title="${carol}"]`);
    const numbered = Array.from({ length: 55 }, (_, i) => `n${i + 1}`);
    // Above the send burst (40): the SDK resends what is rate limited, in order.
    for (const text of numbered) await sendText(a, text);
    await waitForText(c, "n55", false);
    await waitForStatus(a, "n55", "read");

    await c.reload();
    await c.waitForSelector("#connection[data-state=open]");
    await c.click(`#conversations li[data-title="${alice}"]`);
    await waitForText(c, "n55", false);
    // One page: the newest 50 of 60, and a way to the older ones.
    const seqs = await c.$$eval("#message-list li.msg", (items) => items.map((li) => `${li.dataset.seq}:${li.dataset.status ?? ""}`));
    assert.equal(seqs.length, 50, seqs.join(" "));
    await c.waitForSelector("#older:not([hidden])");
    await c.$eval("#messages", (box) => {
      box.scrollTop = 0;
    });
    await c.waitForFunction(() => document.querySelectorAll("#message-list li.msg").length === 60);
    const all = await texts(c);
    // Who got through first after the restart decided the order of those three.
    assert.deepEqual(all.slice(0, 2), ["Hi Alice, over WebSocket", "Hi Carol, over WebTransport"]);
    assert.deepEqual(all.slice(2, 5).sort(), ["me too", "while you were away 1", "while you were away 2"]);
    assert.deepEqual(all.slice(5), numbered);
    await c.waitForSelector("#older", { state: "hidden" });
  });

  test("a group of three: created on the page, messages and read marks reach every member", { timeout: TIMEOUT }, async () => {
    const { alice: a, bob: b, carol: c } = pages;
    const group = `tea ${run}`;
    await a.fill("#new-group input[name=name]", group);
    await a.fill("#new-group input[name=members]", `${bob}, ${carol}`);
    await a.click("#new-group button");
    await a.waitForFunction((g) => document.querySelector("#chat-title")?.textContent === g, group);
    assert.equal(await a.textContent("#chat-subtitle"), "3 members");
    await sendText(a, "Çay kimde?");
    for (const page of [b, c]) {
      await page.waitForSelector(`#conversations li[data-title="${group}"] .unread`);
      await page.click(`#conversations li[data-title="${group}"]`);
      await waitForText(page, "Çay kimde?", false);
    }
    // Read by both others: only then is it read.
    await waitForStatus(a, "Çay kimde?", "read");
    await sendText(b, "Bende");
    await waitForText(a, "Bende", false);
    await waitForText(c, "Bende", false);
    assert.equal(await c.textContent("#message-list li.msg:not(.mine) .sender"), alice);
  });

  test("a photo attached on the page reaches the other user, whose page loads its thumbnail through a signed link", { timeout: TIMEOUT }, async () => {
    const { alice: a, bob: b } = pages;
    await a.click(`#conversations li[data-title="${bob}"]`);
    await b.click(`#conversations li[data-title="${alice}"]`);
    // A 400 × 300 JPEG drawn in the page (two colour halves, so the BlurHash has a gradient).
    const jpeg = await a.evaluate(async () => {
      const canvas = document.createElement("canvas");
      canvas.width = 400;
      canvas.height = 300;
      const context = canvas.getContext("2d");
      context.fillStyle = "#e94e1b";
      context.fillRect(0, 0, 200, 300);
      context.fillStyle = "#1b6fe9";
      context.fillRect(200, 0, 200, 300);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
      const bytes = new Uint8Array(await blob.arrayBuffer());
      return btoa(String.fromCharCode(...bytes));
    });
    await a.setInputFiles("#attach", { name: "gün batımı.jpg", mimeType: "image/jpeg", buffer: Buffer.from(jpeg, "base64") });

    const shown = async (page, mine) => {
      const selector = `#message-list li.msg${mine ? ".mine" : ":not(.mine)"} .media-image img.media-thumb`;
      await page.waitForFunction((selector) => [...document.querySelectorAll(selector)].some((img) => img.complete && img.naturalWidth > 0), selector);
      return page.$$eval(selector, (imgs) => imgs.filter((img) => img.naturalWidth > 0).map((img) => ({ src: img.getAttribute("src"), natural: [img.naturalWidth, img.naturalHeight] })));
    };
    // Bob's page: the thumbnail (≤ 320 px, the photo's shape) from a signed link, no token.
    const [thumb] = await shown(b, false);
    assert.match(thumb.src, /^\/v1\/media\/[0-9a-f-]{36}\/thumb\?exp=\d+&sig=/);
    assert.deepEqual(thumb.natural, [320, 240]);
    // Alice's own message shows it too, stored (✓ at least) rather than pending.
    await shown(a, true);
    await a.waitForSelector('#message-list li.msg.mine.has-media:is([data-status="sent"], [data-status="delivered"], [data-status="read"])');
    // The signed link alone fetches the bytes, as an <img> does; a forged one is refused.
    const fetched = await b.evaluate(async (src) => {
      const good = await fetch(src);
      const bad = await fetch(src.replace(/sig=[^&]+/, "sig=AAAA"));
      return { status: good.status, type: good.headers.get("content-type"), forged: bad.status };
    }, thumb.src);
    assert.deepEqual(fetched, { status: 200, type: "image/jpeg", forged: 403 });

    // After a reload the message comes from history (GET …/messages carries `media`) and the
    // thumbnail loads again.
    await b.reload();
    await b.waitForSelector("#connection[data-state=open]");
    await b.click(`#conversations li[data-title="${alice}"]`);
    await shown(b, false);
  });

  test("the SDK refreshes its token in-band before expiry, and the server checks it", { timeout: TIMEOUT }, async () => {
    // The SDK bundle the gateway serves, used directly by a page, for a new user.
    const outcome = await pages.bob.evaluate(async (bobName) => {
      const sdk = await import("/haberci.min.js");
      const post = async (path, body, token) => {
        const headers = { "content-type": "application/json" };
        if (token) headers.authorization = `Bearer ${token}`;
        const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
        if (!response.ok) throw new Error(`${path}: ${response.status}`);
        return response.json();
      };
      const name = `dave_${Math.random().toString(36).slice(2, 8)}`;
      const { tokens } = await post("/v1/auth/register", { username: name, password: "correct horse battery", displayName: name, email: `${name}@example.com` });
      const bob = await (await fetch(`/v1/users/${bobName}`, { headers: { authorization: `Bearer ${tokens.accessToken}` } })).json();
      let refreshToken = tokens.refreshToken;
      const refreshed = [];
      let twice;
      const refreshedTwice = new Promise((resolve) => (twice = resolve));
      // Refresh 14 min 59 s before a 15 min token expires: about a second after Welcome.
      const good = await sdk.connect({
        url: location.origin,
        token: tokens.accessToken,
        refreshMarginMs: 899_000,
        refreshToken: async () => {
          const next = await post("/v1/auth/refresh", { refreshToken });
          refreshToken = next.refreshToken;
          refreshed.push(next.accessToken);
          if (refreshed.length === 2) twice();
          return next.accessToken;
        },
      });
      await refreshedTwice;
      // Still the same session, and it still works.
      const sent = await good.send({ userId: bob.id }, "after two refreshes");
      const goodState = good.state;
      good.close();
      // A token the server refuses, sent in-band: the session is closed as unauthenticated.
      const bad = await sdk.connect({
        url: location.origin,
        token: refreshed.at(-1),
        refreshMarginMs: 899_000,
        refreshToken: async () => "not.a.token",
      });
      const closed = await new Promise((resolve) => bad.on("state", (e) => e.state === "closed" && resolve(e.error.code)));
      return { refreshed: refreshed.length, goodState, seq: sent.seq, closed };
    }, bob);
    assert.ok(outcome.refreshed >= 2, JSON.stringify(outcome));
    assert.equal(outcome.goodState, "open");
    assert.equal(outcome.seq, 1);
    assert.equal(outcome.closed, "unauthenticated");
  });

  test("a screenshot of the chat is saved", { timeout: TIMEOUT }, async () => {
    const { alice: a } = pages;
    await a.click(`#conversations li[data-title="${bob}"]`);
    await waitForText(a, "from the Rust SDK 🦀", false);
    await a.waitForFunction(() => document.querySelector("#chat-subtitle").textContent === "online");
    const path = join(OUTPUT, "chat.png");
    await a.screenshot({ path });
    const png = readFileSync(path);
    assert.equal(png.subarray(1, 4).toString(), "PNG");
    console.log(`screenshot: ${path}`);
  });

  const firstPost = `İlk gönderim ${run} #merhaba`;
  const secondPost = `Çay demlendi, @${burak}? ${run}`;

  test("a post from the page is in its author's timeline; a follow from the profile brings the next one to the follower's", { timeout: TIMEOUT }, async () => {
    pages.ayse = await openPage("ayse");
    pages.burak = await openPage("burak");
    await register(pages.ayse, ayse);
    await register(pages.burak, burak);
    const { ayse: a, burak: b } = pages;

    await openFeed(a);
    await publish(a, firstPost);
    await postIn(a, "#feed", firstPost).waitFor();
    // The server's timeline has it too, not only the page: after a reload (the hash keeps
    // the feed open) it comes from GET /v1/feed/home.
    await a.reload();
    await a.waitForSelector("#home-view:not([hidden])");
    await waitForFeedPost(a, firstPost);
    assert.equal(await postIn(a, "#feed", firstPost).locator(".author").getAttribute("data-username"), ayse);

    // Burak finds her by username and follows her from her profile.
    await openFeed(b);
    await b.fill("#user-search input[name=q]", ayse);
    await b.click("#user-search button");
    await b.waitForSelector("#profile-view:not([hidden])");
    await b.waitForFunction((u) => document.querySelector("#profile-username").textContent === `@${u}`, ayse);
    await postIn(b, "#profile-posts", firstPost).waitFor();
    assert.equal(await b.textContent("#profile-followers"), "0");
    assert.equal(await b.textContent("#follow-button"), "Follow");
    await b.click("#follow-button");
    await b.waitForSelector('#follow-button[data-following="true"]');
    assert.equal(await b.textContent("#follow-button"), "Following");
    assert.equal(await b.textContent("#profile-followers"), "1");

    // Her next post reaches his timeline (shortly after: the fan-out is asynchronous).
    await publish(a, secondPost);
    await postIn(a, "#feed", secondPost).waitFor();
    await b.click(".home-link");
    await b.waitForSelector("#home-view:not([hidden])");
    await waitForFeedPost(b, secondPost);
    // Her name on the post leads to her profile, which says he follows her.
    await postIn(b, "#feed", secondPost).locator(".author").click();
    await b.waitForFunction((u) => document.querySelector("#profile-username").textContent === `@${u}`, ayse);
    await b.waitForSelector('#follow-button[data-following="true"]');
    await b.click(".home-link");
    await postIn(b, "#feed", secondPost).waitFor();
  });

  test("a like and a comment from the page move the author's notifications badge live; the panel lists them", { timeout: TIMEOUT }, async () => {
    const { ayse: a, burak: b } = pages;
    // No reload from here on: the page keeps this mark. And the badge must move by the live
    // Notification frame, not by asking the API: count her page's unread-count requests.
    await a.evaluate(() => (window.sameDocument = true));
    let countRequests = 0;
    a.on("request", (request) => {
      if (request.url().endsWith("/v1/notifications/unread-count")) countRequests++;
    });
    // Burak's follow is her one unread notification; opening the panel reads it.
    await a.waitForSelector('#notif-count:not([hidden])[data-count="1"]');
    await a.click("#notif-button");
    const follow = await a.waitForSelector('#notif-list li.notification[data-kind="follow"]');
    assert.equal(await follow.textContent().then((t) => t.startsWith(`@${burak} followed you`)), true);
    await a.waitForSelector("#notif-count", { state: "hidden" });
    await a.click("#notif-close");

    // He likes her post in his timeline.
    const post = postIn(b, "#feed", secondPost);
    await post.locator("button.like").click();
    await post.locator('button.like[aria-pressed="true"]').waitFor();
    assert.equal(await post.locator(".like-count").textContent(), "1");
    await a.waitForSelector('#notif-count:not([hidden])[data-count="1"]');

    // He comments in the post's thread.
    await post.locator("a.comment").click();
    await b.waitForSelector("#thread-view:not([hidden])");
    await postIn(b, "#thread-post", secondPost).waitFor();
    await b.fill("#comment-text", "Geliyorum ☕");
    await b.click("#comment-form button[type=submit]");
    await withText(b, "#comments li.comment-item", ".post-body", "Geliyorum ☕").waitFor();
    assert.equal(await postIn(b, "#thread-post", secondPost).locator(".comment-count").textContent(), "1");
    await a.waitForSelector('#notif-count:not([hidden])[data-count="2"]');
    assert.equal(countRequests, 0, "the badge moved by fetching the count, not by the live frame");

    // Her panel: the comment, the like (newest first), the follow already read.
    await a.click("#notif-button");
    // The panel may still show its last list until the new one arrives: wait for the comment.
    await a.waitForSelector('#notif-list li.notification[data-kind="comment"]');
    await a.waitForSelector('#notif-list li.notification[data-kind="follow"]');
    const kinds = await a.$$eval("#notif-list li.notification", (items) => items.map((li) => `${li.dataset.kind}${li.classList.contains("unread-item") ? "*" : ""}`));
    assert.deepEqual(kinds, ["comment*", "like*", "follow"]);
    await a.waitForSelector("#notif-count", { state: "hidden" });
    assert.equal(await a.evaluate(() => window.sameDocument), true);

    // From the like's notification to the thread, where her post shows the like and the comment.
    await a.click('#notif-list li.notification[data-kind="like"] a');
    await a.waitForSelector("#notif-panel", { state: "hidden" });
    const mine = postIn(a, "#thread-post", secondPost);
    await mine.waitFor();
    assert.equal(await mine.locator(".like-count").textContent(), "1");
    assert.equal(await mine.locator(".comment-count").textContent(), "1");
    await withText(a, "#comments li.comment-item", ".post-body", "Geliyorum ☕").waitFor();

    await b.click(".home-link");
    await postIn(b, "#feed", secondPost).waitFor();
    await a.click("#notif-button");
    await a.waitForSelector('#notif-list li.notification[data-kind="comment"]');
    const path = join(OUTPUT, "social.png");
    await a.screenshot({ path });
    await b.screenshot({ path: join(OUTPUT, "feed.png") });
    console.log(`screenshots: ${path}, ${join(OUTPUT, "feed.png")}`);
  });
});

/** The Rust SDK's interop_peer: one JSON request per line, one answer per line. */
class Peer {
  constructor() {
    this.child = spawn(PEER, [], { stdio: ["pipe", "pipe", "inherit"] });
    this.waiting = new Map();
    this.next = 1;
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      const answer = JSON.parse(line);
      this.waiting.get(answer.id)?.(answer);
      this.waiting.delete(answer.id);
    });
  }
  call(request) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, (answer) => (answer.ok ? resolve(answer) : reject(new Error(`interop_peer ${request.op}: ${JSON.stringify(answer)}`))));
      this.child.stdin.write(`${JSON.stringify({ ...request, id })}\n`);
    });
  }
  kill() {
    this.child.kill();
  }
}
