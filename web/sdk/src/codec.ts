// The wire codec: frames as plain typed objects <-> protobuf bodies (generated from
// wire/proto/haberci/v1/*.proto by pbjs at build time), varint length-delimited framing on
// streams, and every field check docs/PROTOCOL.md asks of a receiver. Sans-IO: bytes in,
// frames out.
//
// A frame object is the frame's JSON form of docs/PROTOCOL.md ("JSON forms"), except that
// timestamps are numbers (Unix milliseconds), so the golden vectors' `.json` files describe
// these objects almost literally.

import * as $protobuf from "protobufjs/minimal";
import { haberci } from "../../build/gen/proto.js";
import { bytesToUuid, uuidToBytes } from "./ids.js";

const pb = haberci.v1;

// 64-bit fields are numbers (seqs fit 2^53 - 1, timestamps fit too): never `Long`.
($protobuf.util as { Long: unknown }).Long = undefined;
$protobuf.configure();

// Strings must be valid UTF-8 (else `bad_frame`); protobufjs's own reader is lenient.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
$protobuf.Reader.prototype.string = function (this: $protobuf.Reader): string {
  return strictUtf8.decode(this.bytes());
};

/** Default max frame size (body bytes) before `Welcome` announces the server's. */
export const DEFAULT_MAX_FRAME_SIZE = 64 * 1024;
/** Largest seq (2^53 - 1). */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;
/** The protocol version this SDK speaks. */
export const PROTOCOL_VERSION = 1;
const MIN_TIMESTAMP = -62_167_219_200_000;
const MAX_TIMESTAMP = 253_402_300_799_999;

// ---------------------------------------------------------------- error codes

/** Every protocol code: [name, fatal, retry]; the index + 1 is the code. */
const CODE_TABLE = [
  ["bad_frame", true, false],
  ["frame_too_large", true, false],
  ["invalid_field", false, false],
  ["unknown_frame_kind", false, false],
  ["unsupported_version", true, false],
  ["unauthenticated", true, false],
  ["token_expired", true, true],
  ["forbidden", false, false],
  ["unknown_recipient", false, false],
  ["content_too_large", false, false],
  ["rate_limited", false, true],
  ["slow_consumer", true, true],
  ["server_draining", true, true],
  ["unavailable", false, true],
  ["internal", true, true],
  ["text_message_refused", true, false],
  ["idle_timeout", true, true],
  ["blocked", false, false],
  ["media_refused", false, false],
  ["too_many_sessions", true, true],
] as const;

/** The last code of this SDK's table: sent as `Hello.maxErrorCode`, so the server may send it all. */
export const MAX_ERROR_CODE = CODE_TABLE.length;

export type ErrorCodeName = (typeof CODE_TABLE)[number][0];

/** The numeric protocol code of a name. */
export function protocolCode(name: ErrorCodeName): number {
  return CODE_TABLE.findIndex(([n]) => n === name) + 1;
}

/** The name of a protocol code, or undefined when version 1 has no such code. */
export function codeName(code: number): ErrorCodeName | undefined {
  return CODE_TABLE[code - 1]?.[0];
}

/** Whether a code ends the session (travels in `Closing`). */
export function isFatal(name: ErrorCodeName): boolean {
  return CODE_TABLE[protocolCode(name) - 1][1];
}

/** Whether doing the same thing later can succeed (docs/PROTOCOL.md, the code table). */
export function isRetryable(name: ErrorCodeName): boolean {
  return CODE_TABLE[protocolCode(name) - 1][2];
}

/** What a receiver raises for bytes that are not a valid frame. */
export class ProtocolError extends Error {
  readonly code: ErrorCodeName;
  /** For `invalid_field`: the proto field at fault, e.g. `Ack.seq`. */
  readonly field?: string;
  /** For an invalid `Send`: the id the server's `Error` would name. */
  readonly clientMsgId?: string;
  constructor(code: ErrorCodeName, message: string, field?: string, clientMsgId?: string) {
    super(field ? `${code}: ${field}: ${message}` : `${code}: ${message}`);
    this.name = "ProtocolError";
    this.code = code;
    this.field = field;
    this.clientMsgId = clientMsgId;
  }
  get protocolCode(): number {
    return protocolCode(this.code);
  }
  get fatal(): boolean {
    return isFatal(this.code);
  }
}

function invalid(field: string, message: string): never {
  throw new ProtocolError("invalid_field", message, field);
}

// ---------------------------------------------------------------- frame types

export type MessageType = "text" | "image" | "video" | "audio" | "file";
export type MessageStatus = "sent" | "delivered" | "read";
export type TypingState = "started" | "stopped";
const MESSAGE_TYPES: readonly MessageType[] = ["text", "image", "video", "audio", "file"];
const MESSAGE_STATUSES: readonly MessageStatus[] = ["sent", "delivered", "read"];
const TYPING_STATES: readonly TypingState[] = ["started", "stopped"];

/** What a notification is about (the HTTP API's notification `kind` strings). */
export type NotificationType = "follow" | "follow_request" | "like" | "comment" | "mention" | "repost";
const NOTIFICATION_TYPES: readonly NotificationType[] = [
  "follow",
  "follow_request",
  "like",
  "comment",
  "mention",
  "repost",
];

export type Recipient = { userId: string } | { groupId: string };
export interface MediaRef {
  mediaId: string;
  contentType: string;
  sizeBytes: number;
}
/**
 * Media as stored by the server and delivered with a message (`Message.media`): filled from
 * what the upload stored, never from the `Send`'s `MediaRef`. Fetch the bytes through
 * `GET /v1/media/{mediaId}/info` (short-lived signed URLs).
 */
export interface MediaInfo {
  mediaId: string;
  /** The detected content type, e.g. "image/jpeg"; "" = unknown. */
  contentType: string;
  /** Size of the stored original; 0 = unknown. */
  sizeBytes: number;
  /** Images and video, in pixels after EXIF orientation; null = unknown. */
  width: number | null;
  height: number | null;
  /** Video and audio; null = unknown. */
  durationMs: number | null;
  /** A BlurHash placeholder (images, video posters); null = none. */
  blurhash: string | null;
  /** Files: the name as uploaded, sanitized by the server; null = none. */
  filename: string | null;
}
/** Largest `MediaInfo.contentType`, in UTF-8 bytes. */
export const MAX_MEDIA_CONTENT_TYPE_BYTES = 255;
/** Largest `MediaInfo.blurhash`, in characters (code points). */
export const MAX_MEDIA_BLURHASH_CHARS = 100;
/** Largest `MediaInfo.filename`, in UTF-8 bytes. */
export const MAX_MEDIA_FILENAME_BYTES = 255;
export interface ResumePosition {
  conversationId: string;
  /** 0 = nothing yet. */
  lastSeq: number;
}
export interface Limits {
  maxFrameSize: number;
  sendRatePerSec: number;
  sendBurst: number;
  idleTimeoutMs: number;
}

/** A stored message (`ServerFrame.message`, and the HTTP API's message object). */
export interface Message {
  id: string;
  senderId: string;
  recipientId: string;
  type: MessageType;
  content: string;
  /** Unix milliseconds, set by the server when stored. */
  timestamp: number;
  status: MessageStatus;
  conversationId: string;
  seq: number;
  /** Image, video, audio and file messages; absent for text (and from an older server). */
  media?: MediaInfo;
}

export type ClientFrame =
  | {
      kind: "hello";
      accessToken: string;
      protocolVersion: number;
      clientName: string;
      clientVersion: string;
      resume: ResumePosition[];
      /** The highest code this client knows; absent (0 on the wire) = 17, the first v1 table. */
      maxErrorCode?: number;
    }
  | {
      kind: "send";
      clientMsgId: string;
      recipient: Recipient;
      type: MessageType;
      content: string;
      media: MediaRef | null;
    }
  | { kind: "ack"; conversationId: string; seq: number }
  | { kind: "read"; conversationId: string; seq: number }
  | { kind: "typing"; conversationId: string; state: TypingState }
  | { kind: "presenceWatch"; userIds: string[] }
  | { kind: "refreshAuth"; accessToken: string }
  | { kind: "ping"; nonce: number };

export type ServerFrame =
  | {
      kind: "welcome";
      sessionId: string;
      userId: string;
      protocolVersion: number;
      serverTime: number;
      tokenExpiresAt: number;
      limits: Limits;
    }
  | ({ kind: "message" } & Message)
  | {
      kind: "sent";
      clientMsgId: string;
      messageId: string;
      conversationId: string;
      seq: number;
      timestamp: number;
    }
  | {
      kind: "status";
      conversationId: string;
      userId: string;
      /** null = nothing delivered yet. */
      delivered: number | null;
      /** null = nothing read yet; never above `delivered`. */
      read: number | null;
    }
  | { kind: "typing"; conversationId: string; userId: string; state: TypingState }
  | { kind: "presence"; userId: string; online: boolean; lastSeen: number | null }
  | { kind: "error"; code: ErrorCodeName; message: string; clientMsgId: string | null }
  | {
      kind: "closing";
      code: ErrorCodeName;
      reason: string;
      retryAfterMs: number | null;
      supportedVersions: number[];
    }
  | { kind: "pong"; nonce: number }
  | {
      kind: "notification";
      id: string;
      type: NotificationType;
      actorId: string;
      actorUsername: string;
      /** null = not about a post. */
      postId: string | null;
      /** null = not about a comment. */
      commentId: string | null;
      /** Unix milliseconds. */
      createdAt: number;
      /** The user's unread notifications, this one included. */
      unreadCount: number;
    };

export type ServerFrameOf<K extends ServerFrame["kind"]> = Extract<ServerFrame, { kind: K }>;

// ---------------------------------------------------------------- field checks (decoding)

function id(field: string, bytes: Uint8Array | null | undefined): string {
  const b = bytes ?? new Uint8Array(0);
  if (b.length !== 16) invalid(field, `an id must be 16 bytes, got ${b.length}`);
  if (b.every((x) => x === 0)) invalid(field, "the nil UUID is not a valid id");
  return bytesToUuid(b);
}

function optionalId(field: string, bytes: Uint8Array | null | undefined): string | null {
  return bytes && bytes.length > 0 ? id(field, bytes) : null;
}

function seq(field: string, value: number | null | undefined): number {
  const v = value ?? 0;
  if (v < 1 || v > MAX_SEQ) invalid(field, `seq ${v} is outside 1..=2^53-1`);
  return v;
}

function optionalSeq(field: string, value: number | null | undefined): number | null {
  return value ? seq(field, value) : null;
}

function timestamp(field: string, value: number | null | undefined): number {
  const v = value ?? 0;
  if (v < MIN_TIMESTAMP || v > MAX_TIMESTAMP) invalid(field, `timestamp ${v} is out of range`);
  return v;
}

function enumValue<T>(field: string, names: readonly T[], value: number | null | undefined): T {
  const v = value ?? 0;
  if (v === 0) invalid(field, "missing");
  const name = names[v - 1];
  if (name === undefined) invalid(field, `unknown value ${v}`);
  return name;
}

function errorCode(field: string, value: number | null | undefined, fatal: boolean): ErrorCodeName {
  const name = codeName(value ?? 0);
  if (name === undefined) invalid(field, `unknown code ${value ?? 0}`);
  if (isFatal(name) !== fatal) {
    invalid(field, `${name} is ${fatal ? "not fatal" : "fatal"}; wrong frame for it`);
  }
  return name;
}

function required<T>(field: string, value: T | null | undefined): T {
  if (value === null || value === undefined) invalid(field, "missing");
  return value;
}

function nonEmpty(field: string, value: string | null | undefined): string {
  if (!value) invalid(field, "must not be empty");
  return value;
}

const utf8 = new TextEncoder();

/** A string of at most `max` UTF-8 bytes ("" stays ""). */
function atMostBytes(field: string, max: number, value: string | null | undefined): string {
  const v = value ?? "";
  const bytes = utf8.encode(v).length;
  if (bytes > max) invalid(field, `${bytes} bytes long, at most ${max} allowed`);
  return v;
}

/** An optional string ("" = null) of at most `max` characters (code points, not UTF-16 units). */
function optionalAtMostChars(field: string, max: number, value: string | null | undefined): string | null {
  const v = value ?? "";
  const chars = [...v].length;
  if (chars > max) invalid(field, `${chars} characters long, at most ${max} allowed`);
  return v || null;
}

function mediaFrom(m: haberci.v1.IMediaInfo): MediaInfo {
  return {
    mediaId: id("MediaInfo.media_id", m.mediaId),
    contentType: atMostBytes("MediaInfo.content_type", MAX_MEDIA_CONTENT_TYPE_BYTES, m.contentType),
    sizeBytes: (m.sizeBytes as number) || 0,
    width: m.width || null,
    height: m.height || null,
    durationMs: (m.durationMs as number) || null,
    blurhash: optionalAtMostChars("MediaInfo.blurhash", MAX_MEDIA_BLURHASH_CHARS, m.blurhash),
    filename: atMostBytes("MediaInfo.filename", MAX_MEDIA_FILENAME_BYTES, m.filename) || null,
  };
}

function messageFrom(m: haberci.v1.IMessage): Message {
  return {
    id: id("Message.id", m.id),
    senderId: id("Message.sender_id", m.senderId),
    recipientId: id("Message.recipient_id", m.recipientId),
    type: enumValue("Message.type", MESSAGE_TYPES, m.type),
    content: m.content ?? "",
    timestamp: timestamp("Message.timestamp", m.timestamp as number),
    status: enumValue("Message.status", MESSAGE_STATUSES, m.status),
    conversationId: id("Message.conversation_id", m.conversationId),
    seq: seq("Message.seq", m.seq as number),
    // Left out when absent, as in the JSON form (a text message's object is unchanged).
    ...(m.media ? { media: mediaFrom(m.media) } : {}),
  };
}

function recipientFrom(r: haberci.v1.IRecipient): Recipient {
  if (r.userId != null) return { userId: id("Recipient.user_id", r.userId) };
  if (r.groupId != null) return { groupId: id("Recipient.group_id", r.groupId) };
  invalid("Recipient.kind", "missing");
}

// ---------------------------------------------------------------- bodies

function parse<T>(decode: (r: Uint8Array) => T, body: Uint8Array): T {
  if (body.length === 0) throw new ProtocolError("bad_frame", "a frame body must not be empty");
  try {
    return decode(body);
  } catch (err) {
    throw new ProtocolError("bad_frame", `not a protobuf frame: ${(err as Error).message}`);
  }
}

/**
 * Decodes one server frame body (no length prefix) and checks every field. Returns null for
 * a frame kind this SDK does not know (a newer server): the protocol says to ignore it.
 */
export function decodeServerFrame(body: Uint8Array): ServerFrame | null {
  const f = parse((b) => pb.ServerFrame.decode(b), body);
  switch (f.frame) {
    case "welcome": {
      const w = f.welcome!;
      const limits = required("Welcome.limits", w.limits);
      if (!limits.maxFrameSize) invalid("Limits.max_frame_size", "must be above 0");
      return {
        kind: "welcome",
        sessionId: id("Welcome.session_id", w.sessionId),
        userId: id("Welcome.user_id", w.userId),
        protocolVersion: w.protocolVersion ?? 0,
        serverTime: timestamp("Welcome.server_time", w.serverTime as number),
        tokenExpiresAt: timestamp("Welcome.token_expires_at", w.tokenExpiresAt as number),
        limits: {
          maxFrameSize: limits.maxFrameSize,
          sendRatePerSec: limits.sendRatePerSec ?? 0,
          sendBurst: limits.sendBurst ?? 0,
          idleTimeoutMs: limits.idleTimeoutMs ?? 0,
        },
      };
    }
    case "message":
      return { kind: "message", ...messageFrom(f.message!) };
    case "sent": {
      const s = f.sent!;
      return {
        kind: "sent",
        clientMsgId: id("Sent.client_msg_id", s.clientMsgId),
        messageId: id("Sent.message_id", s.messageId),
        conversationId: id("Sent.conversation_id", s.conversationId),
        seq: seq("Sent.seq", s.seq as number),
        timestamp: timestamp("Sent.timestamp", s.timestamp as number),
      };
    }
    case "status": {
      const s = f.status!;
      const delivered = optionalSeq("Status.delivered_seq", s.deliveredSeq as number);
      const read = optionalSeq("Status.read_seq", s.readSeq as number);
      if ((read ?? 0) > (delivered ?? 0)) invalid("Status.read_seq", "above delivered_seq");
      return {
        kind: "status",
        conversationId: id("Status.conversation_id", s.conversationId),
        userId: id("Status.user_id", s.userId),
        delivered,
        read,
      };
    }
    case "typing": {
      const t = f.typing!;
      return {
        kind: "typing",
        conversationId: id("ServerTyping.conversation_id", t.conversationId),
        userId: id("ServerTyping.user_id", t.userId),
        state: enumValue("ServerTyping.state", TYPING_STATES, t.state),
      };
    }
    case "presence": {
      const p = f.presence!;
      const lastSeen = (p.lastSeen as number) || 0;
      return {
        kind: "presence",
        userId: id("Presence.user_id", p.userId),
        online: !!p.online,
        lastSeen: lastSeen ? timestamp("Presence.last_seen", lastSeen) : null,
      };
    }
    case "error": {
      const e = f.error!;
      return {
        kind: "error",
        code: errorCode("Error.code", e.code, false),
        message: e.message ?? "",
        clientMsgId: optionalId("Error.client_msg_id", e.clientMsgId),
      };
    }
    case "closing": {
      const c = f.closing!;
      return {
        kind: "closing",
        code: errorCode("Closing.code", c.code, true),
        reason: c.reason ?? "",
        retryAfterMs: c.retryAfterMs || null,
        supportedVersions: c.supportedVersions ?? [],
      };
    }
    case "pong":
      return { kind: "pong", nonce: f.pong!.nonce ?? 0 };
    case "notification": {
      const n = f.notification!;
      return {
        kind: "notification",
        id: id("Notification.id", n.id),
        type: enumValue("Notification.type", NOTIFICATION_TYPES, n.type),
        actorId: id("Notification.actor_id", n.actorId),
        actorUsername: nonEmpty("Notification.actor_username", n.actorUsername),
        postId: optionalId("Notification.post_id", n.postId),
        commentId: optionalId("Notification.comment_id", n.commentId),
        createdAt: timestamp("Notification.created_at", n.createdAt as number),
        unreadCount: n.unreadCount ?? 0,
      };
    }
    default:
      return null;
  }
}

/**
 * Decodes one client frame body and checks every field, as the server does (used by tests
 * and tools; the SDK itself only encodes client frames). An unknown kind is
 * `unknown_frame_kind`.
 */
export function decodeClientFrame(body: Uint8Array): ClientFrame {
  const f = parse((b) => pb.ClientFrame.decode(b), body);
  switch (f.frame) {
    case "hello": {
      const h = f.hello!;
      try {
        const seen = new Set<string>();
        const resume = (h.resume ?? []).map((r) => {
          const conversationId = id("ResumePosition.conversation_id", r.conversationId);
          if (seen.has(conversationId)) {
            invalid("ResumePosition.conversation_id", "a conversation listed twice");
          }
          seen.add(conversationId);
          return { conversationId, lastSeq: optionalSeq("ResumePosition.last_seq", r.lastSeq as number) ?? 0 };
        });
        return {
          kind: "hello",
          accessToken: nonEmpty("Hello.access_token", h.accessToken),
          protocolVersion: h.protocolVersion ?? 0,
          clientName: h.clientName ?? "",
          clientVersion: h.clientVersion ?? "",
          resume,
          ...(h.maxErrorCode ? { maxErrorCode: h.maxErrorCode } : {}),
        };
      } catch (err) {
        // Before Welcome there is no session to answer Error in: an invalid Hello closes,
        // unauthenticated without a token, bad_frame otherwise.
        if (err instanceof ProtocolError && err.code === "invalid_field") {
          const code = err.field === "Hello.access_token" ? "unauthenticated" : "bad_frame";
          throw new ProtocolError(code, err.message, err.field);
        }
        throw err;
      }
    }
    case "send": {
      const s = f.send!;
      const clientMsgId = id("Send.client_msg_id", s.clientMsgId);
      try {
        return {
          kind: "send",
          clientMsgId,
          recipient: recipientFrom(required("Send.recipient", s.recipient)),
          type: enumValue("Send.type", MESSAGE_TYPES, s.type),
          content: s.content ?? "",
          media: s.media
            ? {
                mediaId: id("MediaRef.media_id", s.media.mediaId),
                contentType: s.media.contentType ?? "",
                sizeBytes: (s.media.sizeBytes as number) ?? 0,
              }
            : null,
        };
      } catch (err) {
        // Once the idempotency key is known, every later problem names it.
        if (err instanceof ProtocolError) {
          throw new ProtocolError(err.code, err.message, err.field, clientMsgId);
        }
        throw err;
      }
    }
    case "ack":
    case "read": {
      const a = (f.ack ?? f.read)!;
      const name = f.frame === "ack" ? "Ack" : "Read";
      return {
        kind: f.frame,
        conversationId: id(`${name}.conversation_id`, a.conversationId),
        seq: seq(`${name}.seq`, a.seq as number),
      };
    }
    case "typing": {
      const t = f.typing!;
      return {
        kind: "typing",
        conversationId: id("ClientTyping.conversation_id", t.conversationId),
        state: enumValue("ClientTyping.state", TYPING_STATES, t.state),
      };
    }
    case "presenceWatch":
      return {
        kind: "presenceWatch",
        userIds: (f.presenceWatch!.userIds ?? []).map((u) => id("PresenceWatch.user_ids", u)),
      };
    case "refreshAuth":
      return { kind: "refreshAuth", accessToken: nonEmpty("RefreshAuth.access_token", f.refreshAuth!.accessToken) };
    case "ping":
      return { kind: "ping", nonce: f.ping!.nonce ?? 0 };
    default:
      throw new ProtocolError("unknown_frame_kind", "a client frame kind this receiver does not know");
  }
}

// Encoding writes fields in field-number order and omits defaults, so the bytes equal the
// golden vectors'. A field left at its default is not set on the object at all (protobufjs
// writes every field present on the object, default or not).

function put<T extends object>(target: T, key: keyof T, value: unknown, isDefault: boolean): void {
  if (!isDefault) (target as Record<keyof T, unknown>)[key] = value;
}

function checkSeq(field: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) invalid(field, `seq ${value} is outside 1..=2^53-1`);
}

function checkUint32(field: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) invalid(field, `${value} is not a uint32`);
}

function idBytes(field: string, value: string): Uint8Array {
  try {
    return uuidToBytes(value);
  } catch {
    invalid(field, `${JSON.stringify(value)} is not a UUID`);
  }
}

/**
 * Encodes one client frame as a body (no length prefix). Checks what the server would
 * refuse as `invalid_field` (ids, seqs, enum names, an empty token), so a bad call fails
 * here with a clear error instead of on the server.
 */
export function encodeClientFrame(frame: ClientFrame): Uint8Array {
  const f: haberci.v1.IClientFrame = {};
  switch (frame.kind) {
    case "hello": {
      const h: haberci.v1.IHello = {};
      put(h, "accessToken", nonEmpty("Hello.access_token", frame.accessToken), false);
      checkUint32("Hello.protocol_version", frame.protocolVersion);
      put(h, "protocolVersion", frame.protocolVersion, frame.protocolVersion === 0);
      put(h, "clientName", frame.clientName, !frame.clientName);
      put(h, "clientVersion", frame.clientVersion, !frame.clientVersion);
      if (frame.resume.length) {
        h.resume = frame.resume.map((r) => {
          const p: haberci.v1.IResumePosition = {
            conversationId: idBytes("ResumePosition.conversation_id", r.conversationId),
          };
          if (r.lastSeq !== 0) checkSeq("ResumePosition.last_seq", r.lastSeq);
          put(p, "lastSeq", r.lastSeq, r.lastSeq === 0);
          return p;
        });
      }
      const maxErrorCode = frame.maxErrorCode ?? 0;
      checkUint32("Hello.max_error_code", maxErrorCode);
      put(h, "maxErrorCode", maxErrorCode, maxErrorCode === 0);
      f.hello = h;
      break;
    }
    case "send": {
      const clientMsgId = idBytes("Send.client_msg_id", frame.clientMsgId);
      const recipient: haberci.v1.IRecipient =
        "userId" in frame.recipient
          ? { userId: idBytes("Recipient.user_id", frame.recipient.userId) }
          : "groupId" in frame.recipient
            ? { groupId: idBytes("Recipient.group_id", frame.recipient.groupId) }
            : invalid("Send.recipient", "must be {userId} or {groupId}");
      const type = MESSAGE_TYPES.indexOf(frame.type) + 1;
      if (type === 0) invalid("Send.type", `unknown message type ${JSON.stringify(frame.type)}`);
      const s: haberci.v1.ISend = { clientMsgId, recipient, type };
      put(s, "content", frame.content, !frame.content);
      if (frame.media) {
        const m: haberci.v1.IMediaRef = { mediaId: idBytes("MediaRef.media_id", frame.media.mediaId) };
        put(m, "contentType", frame.media.contentType, !frame.media.contentType);
        put(m, "sizeBytes", frame.media.sizeBytes, !frame.media.sizeBytes);
        s.media = m;
      }
      f.send = s;
      break;
    }
    case "ack":
    case "read": {
      const name = frame.kind === "ack" ? "Ack" : "Read";
      checkSeq(`${name}.seq`, frame.seq);
      f[frame.kind] = { conversationId: idBytes(`${name}.conversation_id`, frame.conversationId), seq: frame.seq };
      break;
    }
    case "typing": {
      const state = TYPING_STATES.indexOf(frame.state) + 1;
      if (state === 0) invalid("ClientTyping.state", `unknown typing state ${JSON.stringify(frame.state)}`);
      f.typing = { conversationId: idBytes("ClientTyping.conversation_id", frame.conversationId), state };
      break;
    }
    case "presenceWatch": {
      const w: haberci.v1.IPresenceWatch = {};
      if (frame.userIds.length) w.userIds = frame.userIds.map((u) => idBytes("PresenceWatch.user_ids", u));
      f.presenceWatch = w;
      break;
    }
    case "refreshAuth":
      f.refreshAuth = { accessToken: nonEmpty("RefreshAuth.access_token", frame.accessToken) };
      break;
    case "ping": {
      checkUint32("Ping.nonce", frame.nonce);
      const p: haberci.v1.IPing = {};
      put(p, "nonce", frame.nonce, frame.nonce === 0);
      f.ping = p;
      break;
    }
    default:
      throw new TypeError(`unknown client frame kind ${JSON.stringify((frame as { kind: unknown }).kind)}`);
  }
  return pb.ClientFrame.encode(f).finish();
}

// ---------------------------------------------------------------- framing

/** A frame body with its varint length prefix: the stream form. */
export function delimit(body: Uint8Array): Uint8Array {
  const prefix: number[] = [];
  let n = body.length;
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    prefix.push(byte);
  } while (n > 0);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix, 0);
  out.set(body, prefix.length);
  return out;
}

/**
 * Splits a stream into frame bodies, whatever way it arrives (a prefix or a body cut
 * anywhere, several frames per chunk). Refuses a declared length above the max frame size
 * from the prefix alone (`frame_too_large`), a zero-length frame, a prefix longer than 10
 * bytes or overflowing 64 bits (`bad_frame`). After an error the stream is out of sync.
 */
export class FrameDecoder {
  private buf: Uint8Array = new Uint8Array(0);
  constructor(public maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE) {}

  /** Feeds bytes; returns the bodies completed by them. */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.buf.length === 0) {
      this.buf = chunk;
    } else {
      const joined = new Uint8Array(this.buf.length + chunk.length);
      joined.set(this.buf, 0);
      joined.set(chunk, this.buf.length);
      this.buf = joined;
    }
    const bodies: Uint8Array[] = [];
    let at = 0;
    for (;;) {
      const header = this.readPrefix(at);
      if (header === null) break;
      const [len, prefixLen] = header;
      if (this.buf.length - at - prefixLen < len) break;
      const start = at + prefixLen;
      bodies.push(this.buf.slice(start, start + len));
      at = start + len;
    }
    this.buf = this.buf.slice(at);
    return bodies;
  }

  /** The stream ended: throws `bad_frame` if it ended inside a frame. */
  end(): void {
    if (this.buf.length > 0) throw new ProtocolError("bad_frame", "the stream ended inside a frame");
  }

  /** [length, prefix bytes], or null when the prefix is not complete yet. */
  private readPrefix(at: number): [number, number] | null {
    let len = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (at + i >= this.buf.length) return null;
      const byte = this.buf[at + i];
      if (i === 9 && byte > 0x01) throw new ProtocolError("bad_frame", "length prefix overflows 64 bits");
      len += (byte & 0x7f) * scale;
      scale *= 128;
      if ((byte & 0x80) === 0) {
        if (len === 0) throw new ProtocolError("bad_frame", "zero-length frame");
        // Refused from the prefix alone, before any of the body is buffered.
        if (len > this.maxFrameSize) {
          throw new ProtocolError("frame_too_large", `declared length ${len} above ${this.maxFrameSize}`);
        }
        return [len, i + 1];
      }
    }
    throw new ProtocolError("bad_frame", "length prefix longer than 10 bytes");
  }
}

/** Frames that may travel as datagrams (ephemeral ones). */
export function mayTravelAsDatagram(kind: ClientFrame["kind"] | ServerFrame["kind"], from: "client" | "server"): boolean {
  return kind === "typing" || (from === "server" && kind === "presence");
}

/** Decodes a server datagram: only typing and presence may come this way (else `bad_frame`). */
export function decodeServerDatagram(body: Uint8Array): ServerFrame | null {
  const frame = decodeServerFrame(body);
  if (frame && !mayTravelAsDatagram(frame.kind, "server")) {
    throw new ProtocolError("bad_frame", `a ${frame.kind} frame may not travel as a datagram`);
  }
  return frame;
}

/** A WebSocket message: binary only (a text message is `text_message_refused`). */
export function webSocketBody(data: ArrayBuffer | string, maxFrameSize: number): Uint8Array {
  if (typeof data === "string") throw new ProtocolError("text_message_refused", "frames travel as binary messages");
  if (data.byteLength > maxFrameSize) throw new ProtocolError("frame_too_large", `message above ${maxFrameSize} bytes`);
  return new Uint8Array(data);
}

/** Decodes a client datagram as a server would: only typing may come this way. */
export function decodeClientDatagram(body: Uint8Array): ClientFrame {
  const frame = decodeClientFrame(body);
  if (!mayTravelAsDatagram(frame.kind, "client")) {
    throw new ProtocolError("bad_frame", `a ${frame.kind} frame may not travel as a datagram`);
  }
  return frame;
}
