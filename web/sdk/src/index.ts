// Haberci's browser SDK: the realtime protocol of docs/PROTOCOL.md over WebTransport, with a
// WebSocket fallback. `connect()` is the entry point; the codec is exported for tools and tests.
export * from "./codec.js";
export * from "./ids.js";
export * from "./client.js";
export * from "./media.js";
export { hasWebTransport, type TransportName } from "./transport.js";
