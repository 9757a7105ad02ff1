// The Socket.IO peer that `haberci-bench compare` measures Haberci against: the seed's design,
// kept as plain as the seed had it so the comparison is with what was there.
//
// - WebSocket transport only (no HTTP long-polling), TLS when a certificate is given.
// - A JWT (HS256, shared secret) checked once, on connect (`auth.token`); its `sub` is the user.
// - One room per user (`user:<id>`); a `message` event {to, id, content} is relayed to the
//   recipient's room and acknowledged to the sender with the server's timestamp.
// - Several nodes (processes) share one Redis through @socket.io/redis-adapter, so a recipient
//   on another node gets the message through Redis pub/sub.
// - Relay only: nothing is stored, nothing is resumed (at most once).
//
// Settings (environment): SIO_PORT, SIO_HOST (127.0.0.1), SIO_REDIS_URL, SIO_JWT_SECRET,
// SIO_TLS_CERT and SIO_TLS_KEY (PEM files; plain HTTP without them). Prints `ready <port>` on
// stdout once it listens and Redis answers; exits on SIGTERM or when stdin closes (so a
// crashed bench leaves no node behind).
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const https = require("node:https");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const jwt = require("jsonwebtoken");

function setting(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") {
    console.error(`socketio peer: ${name} is not set`);
    process.exit(64);
  }
  return value;
}

const port = Number(setting("SIO_PORT"));
const host = setting("SIO_HOST", "127.0.0.1");
const redisUrl = setting("SIO_REDIS_URL");
const secret = setting("SIO_JWT_SECRET");
const certFile = process.env.SIO_TLS_CERT;
const keyFile = process.env.SIO_TLS_KEY;

function health(req, res) {
  // Socket.IO answers its own path; everything else lands here.
  res.writeHead(req.url === "/healthz" ? 200 : 404, { "content-type": "text/plain" });
  res.end(req.url === "/healthz" ? "ok\n" : "not found\n");
}

const server =
  certFile && keyFile
    ? https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, health)
    : http.createServer(health);

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error("socketio peer: redis (pub):", err.message));
  sub.on("error", (err) => console.error("socketio peer: redis (sub):", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const io = new Server(server, {
    transports: ["websocket"],
    serveClient: false,
    adapter: createAdapter(pub, sub),
  });

  io.use((socket, next) => {
    const token = socket.handshake.auth && socket.handshake.auth.token;
    try {
      const claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
      if (typeof claims.sub !== "string" || claims.sub === "") throw new Error("no sub");
      socket.data.user = claims.sub;
      next();
    } catch {
      next(new Error("unauthorized"));
    }
  });

  io.on("connection", (socket) => {
    socket.join(`user:${socket.data.user}`);
    socket.on("message", (msg, ack) => {
      if (!msg || typeof msg.to !== "string" || typeof msg.content !== "string") {
        if (typeof ack === "function") ack({ error: "bad message" });
        return;
      }
      const out = { from: socket.data.user, to: msg.to, id: msg.id, content: msg.content, ts: Date.now() };
      io.to(`user:${msg.to}`).emit("message", out);
      if (typeof ack === "function") ack({ ok: true, ts: out.ts });
    });
  });

  server.listen(port, host, () => {
    process.stdout.write(`ready ${port}\n`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdin.on("end", stop);
  process.stdin.resume();
}

main().catch((err) => {
  console.error("socketio peer:", err);
  process.exit(1);
});
