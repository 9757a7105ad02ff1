// Haberci's browser SDK: the realtime protocol of docs/PROTOCOL.md over WebTransport, with a
// WebSocket fallback. `connect()` is the entry point; the codec is exported for tools and tests,
// and the sans-IO session core (session.ts) for tests and other drivers.
export * from "./codec.js";
export * from "./ids.js";
export * from "./client.js";
export * from "./media.js";
export {
  Session,
  type SessionEvent,
  type SessionOutput,
  type SessionPhase,
  type SessionSettings,
  type Transmit,
} from "./session.js";
export { hasWebTransport, type TransportName } from "./transport.js";
