// Ids on the wire are UUIDs as exactly 16 raw bytes (docs/PROTOCOL.md, "Encoding conventions");
// in the SDK's API they are lowercase hyphenated strings.

const HEX = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const NIL = "00000000-0000-0000-0000-000000000000";

/** Whether `id` is a canonical (lowercase, hyphenated), non-nil UUID string. */
export function isUuid(id: string): boolean {
  return HEX.test(id) && id !== NIL;
}

/** The 16 bytes of a UUID string; throws a TypeError for anything else. */
export function uuidToBytes(id: string): Uint8Array {
  const lower = typeof id === "string" ? id.toLowerCase() : "";
  if (!isUuid(lower)) throw new TypeError(`not a UUID: ${JSON.stringify(id)}`);
  const hex = lower.replace(/-/g, "");
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** The canonical string of 16 bytes (no check for nil: callers check). */
export function bytesToUuid(bytes: Uint8Array): string {
  let hex = "";
  for (let i = 0; i < bytes.length; i++) hex += bytes[i].toString(16).padStart(2, "0");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A random UUIDv4 (a fresh `client_msg_id`). */
export function randomUuid(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  return bytesToUuid(bytes);
}

// Namespace of direct conversation ids: must equal `DIRECT_NAMESPACE` in seam/src/streams.rs.
const DIRECT_NAMESPACE = uuidToBytes("68616265-7263-6940-8000-646972656374");

/**
 * The id of the direct conversation between two users (either order): UUIDv5 of the smaller
 * id's bytes followed by the larger's, as the server computes it. Needs WebCrypto (secure
 * contexts and Node).
 */
export async function directConversationId(a: string, b: string): Promise<string> {
  const [low, high] = a.toLowerCase() <= b.toLowerCase() ? [a, b] : [b, a];
  const input = new Uint8Array(48);
  input.set(DIRECT_NAMESPACE, 0);
  input.set(uuidToBytes(low), 16);
  input.set(uuidToBytes(high), 32);
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-1", input));
  const id = hash.slice(0, 16);
  id[6] = (id[6] & 0x0f) | 0x50;
  id[8] = (id[8] & 0x3f) | 0x80;
  return bytesToUuid(id);
}
