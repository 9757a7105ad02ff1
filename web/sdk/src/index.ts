// Haberci's browser SDK: the realtime protocol of docs/PROTOCOL.md over WebTransport, with a
// WebSocket fallback.
export * from "./codec.js";
export * from "./ids.js";
