// The realtime session of docs/PROTOCOL.md on top of a `Link`: Hello + token -> Welcome,
// sends answered by Sent (resent with the same client_msg_id until then), gapless in-order
// delivery with resume positions, automatic cumulative Acks, receipts, typing and presence,
// heartbeat, in-band token refresh, and reconnection with backoff and jitter.

import {
  MAX_ERROR_CODE,
  PROTOCOL_VERSION,
  ProtocolError,
  encodeClientFrame,
  isRetryable,
  type ClientFrame,
  type ErrorCodeName,
  type MediaRef,
  type Message,
  type MessageType,
  type Recipient,
  type ResumePosition,
  type ServerFrame,
  type ServerFrameOf,
  type TypingState,
} from "./codec.js";
import { randomUuid } from "./ids.js";
import {
  ApiError,
  mediaInfo,
  mediaRefOf,
  uploadMedia,
  type MediaView,
  type UploadOptions,
} from "./media.js";
import {
  hasWebTransport,
  openWebSocket,
  openWebTransport,
  type Link,
  type LinkClosed,
  type TransportName,
} from "./transport.js";

export const SDK_VERSION = "0.1.0";

export interface ConnectOptions {
  /** The gateway's HTTPS origin, e.g. `https://chat.example` or `https://localhost:8443`. */
  url: string;
  /** An access token (JWT) from the HTTP API. */
  token: string;
  /**
   * Gets a new access token (over HTTP, e.g. `POST /v1/auth/refresh`). Called before the
   * current one expires (the session then sends `RefreshAuth`) and after `token_expired`.
   * Without it, a session ends when its token expires.
   */
  refreshToken?: () => Promise<string>;
  /** How long before expiry to refresh (ms). Default: a minute, or a fifth of the lifetime. */
  refreshMarginMs?: number;
  /** Transports to try, in order. Default: WebTransport, then WebSocket. */
  transports?: TransportName[];
  /** How long WebTransport may take to connect before the next transport is tried (ms). */
  webTransportTimeoutMs?: number;
  /** Overrides what `GET /v1/realtime` says: the WebTransport URL, */
  webTransportUrl?: string;
  /** the certificate hashes to pin (hex SHA-256), */
  serverCertificateHashes?: string[];
  /** and the WebSocket URL. */
  webSocketUrl?: string;
  /** Where to resume: the last seq held per conversation (e.g. from storage). */
  resume?: ResumePosition[];
  /** Ack every message once the `message` listeners ran (default true). */
  autoAck?: boolean;
  /** Reconnect backoff: first delay and ceiling (ms). Default 500 and 30,000. */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** A connection that answers no Ping within this is taken as dead (ms, default 10,000). */
  pongTimeoutMs?: number;
  clientName?: string;
  clientVersion?: string;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** A send the server stored (`Sent`). */
export type Sent = Omit<ServerFrameOf<"sent">, "kind">;

export interface ClientEvents {
  /** A stored message, once, in seq order per conversation (backlog and live alike). */
  message: Message;
  /** One of this client's sends was stored. */
  sent: Sent;
  /** A member's receipt watermarks moved. */
  status: { conversationId: string; userId: string; delivered: number; read: number };
  /** Someone started or stopped typing (a start expires after 6 s without a refresh). */
  typing: { conversationId: string; userId: string; typing: boolean };
  presence: { userId: string; online: boolean; lastSeen: number | null };
  /**
   * A notification was stored for this user (a follow, a like, …), with the unread count
   * after it. Best effort: one missed while disconnected is not replayed; read
   * `GET /v1/notifications` after a reconnect.
   */
  notification: Omit<ServerFrameOf<"notification">, "kind">;
  /**
   * The connection changed: `transport` is the one in use when `open`, and `fallback` says
   * why the transports before it in the list were not used.
   */
  state: { state: ConnectionState; transport: TransportName | null; error?: Error; fallback?: string };
  /** A non-fatal `Error` the server sent that names no send of this client. */
  error: ProtocolError;
}

type Listener<T> = (event: T) => void;

/** Receivers expire a typing "started" after this long without a refresh. */
const TYPING_EXPIRY_MS = 6_000;
/** Senders repeat "started" at most this often while the user types. */
const TYPING_REPEAT_MS = 3_000;
const WELCOME_TIMEOUT_MS = 10_000;
const DISCOVERY_TIMEOUT_MS = 5_000;

interface PendingSend {
  frame: Extract<ClientFrame, { kind: "send" }>;
  resolve(sent: Sent): void;
  reject(err: Error): void;
  /** Written on the current session (and not refused since). */
  written: boolean;
  /** Earliest time (ms) it may be written again, after `rate_limited` or `unavailable`. */
  notBefore: number;
  attempts: number;
}

/**
 * The server's send rate as a token bucket on this side (Welcome.limits), so that sends leave
 * at a pace the server accepts and in the order they were made: a send refused for its rate
 * and resent later would otherwise land after the ones written behind it.
 */
class SendBucket {
  private tokens: number;
  private last: number;
  constructor(
    private readonly rate: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }
  /** Takes a token if there is one; else returns how long until there is (ms). */
  take(now: number): number {
    if (this.rate <= 0) return 0; // no limit announced
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) / this.rate) * 1000);
  }
}

interface Endpoints {
  webTransportUrl: string;
  hashes: string[];
  webSocketUrl: string;
}

/** Connects and resolves once the first session is open (after `Welcome`). */
export async function connect(options: ConnectOptions): Promise<HaberciClient> {
  const client = new HaberciClient(options);
  await client.start();
  return client;
}

export class HaberciClient {
  /** The transport of the current connection (null while disconnected). */
  transport: TransportName | null = null;
  state: ConnectionState = "connecting";
  /** Who the token says we are (from `Welcome`). */
  userId: string | null = null;
  sessionId: string | null = null;
  /** Why the current connection is not on the first transport in the list (none if it is). */
  fallback: string | undefined;

  private readonly options: ConnectOptions;
  private token: string;
  private link: Link | null = null;
  private welcomed = false;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private readonly positions = new Map<string, number>();
  /** Sends without a `Sent` yet, in the order they were made. */
  private readonly pending = new Map<string, PendingSend>();
  private bucket: SendBucket | null = null;
  private pumpTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly pendingAcks = new Map<string, number>();
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly readSent = new Map<string, number>();
  private readonly pendingReads = new Set<string>();
  private readTimer: ReturnType<typeof setTimeout> | undefined;
  private watched: string[] = [];
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly typingSentAt = new Map<string, number>();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private welcomeTimer: ReturnType<typeof setTimeout> | undefined;
  private lastSentAt = 0;
  private lastReceivedAt = 0;
  private pongPending = false;
  private nonce = 0;
  private attempt = 0;
  private closing: ServerFrameOf<"closing"> | null = null;
  private stopped = false;
  private firstOpen: { resolve(): void; reject(err: Error): void } | null = null;

  constructor(options: ConnectOptions) {
    if (!options.url) throw new TypeError("connect: `url` (the gateway's https origin) is required");
    if (!options.token) throw new TypeError("connect: `token` (an access token) is required");
    for (const t of options.transports ?? []) {
      if (t !== "webtransport" && t !== "websocket") throw new TypeError(`connect: unknown transport ${JSON.stringify(t)}`);
    }
    this.options = options;
    this.token = options.token;
    for (const p of options.resume ?? []) this.positions.set(p.conversationId, p.lastSeq);
  }

  // ------------------------------------------------------------------ public API

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  /**
   * Sends a message; resolves with `Sent` once the server stored it. Survives reconnects: it
   * is resent with the same `clientMsgId` until stored. Rejects with a `ProtocolError` the
   * server refused it with (`forbidden`, `unknown_recipient`, …), or when the client closes.
   */
  send(
    recipient: Recipient | string,
    content: string,
    type: MessageType = "text",
    extra: { clientMsgId?: string; media?: MediaRef } = {},
  ): Promise<Sent> {
    if (this.stopped) return Promise.reject(new Error("the client is closed"));
    const frame: PendingSend["frame"] = {
      kind: "send",
      clientMsgId: extra.clientMsgId ?? randomUuid(),
      recipient: typeof recipient === "string" ? { userId: recipient } : recipient,
      type,
      content,
      media: extra.media ?? null,
    };
    // Checked now, so a bad call fails here rather than on the server.
    encodeClientFrame(frame);
    return new Promise<Sent>((resolve, reject) => {
      this.pending.set(frame.clientMsgId, { frame, resolve, reject, written: false, notBefore: 0, attempts: 0 });
      this.pump();
    });
  }

  /**
   * Uploads a file (`POST /v1/media`) with the session's token; resolves with what the server
   * stored. Rejects with an `ApiError` whose `code` names a refusal (`media_too_large`,
   * `media_type_mismatch`, `media_quota_exceeded`, …). Send it with `sendMedia`.
   */
  uploadMedia(file: Blob, options: UploadOptions): Promise<MediaView> {
    return this.withToken((token) => uploadMedia(this.options.url, token, file, options));
  }

  /** What an upload is (`GET /v1/media/{id}/info`), with freshly signed links. */
  mediaInfo(id: string): Promise<MediaView> {
    return this.withToken((token) => mediaInfo(this.options.url, token, id));
  }

  /**
   * Sends an upload (from `uploadMedia`, or a received message's `media`) as a message of its
   * kind, with an optional caption. The server refuses (`media_refused`) media that is not
   * the sender's own upload of that kind.
   */
  sendMedia(
    recipient: Recipient | string,
    media: MediaView,
    caption = "",
    extra: { clientMsgId?: string } = {},
  ): Promise<Sent> {
    return this.send(recipient, caption, media.kind, { ...extra, media: mediaRefOf(media) });
  }

  /** Tells the server (and so the other members) the user has read up to `seq`. */
  markRead(conversationId: string, seq: number): void {
    if ((this.readSent.get(conversationId) ?? 0) >= seq) return;
    this.readSent.set(conversationId, seq);
    // Cumulative, so a burst (a backlog shown at once) costs one frame per conversation.
    this.pendingReads.add(conversationId);
    this.readTimer ??= setTimeout(() => {
      this.readTimer = undefined;
      for (const id of this.pendingReads) {
        if (this.welcomed) this.write({ kind: "read", conversationId: id, seq: this.readSent.get(id)! });
      }
      this.pendingReads.clear();
    }, 50);
  }

  /** Acks delivery up to `seq` (only needed with `autoAck: false`). */
  ack(conversationId: string, seq: number): void {
    if (this.welcomed) this.write({ kind: "ack", conversationId, seq });
  }

  /**
   * The user is typing (or stopped). "started" is repeated at most every 3 s however often
   * this is called; on WebTransport it travels as a datagram.
   */
  typing(conversationId: string, typing: boolean): void {
    if (!this.welcomed || !this.link) return;
    const now = Date.now();
    if (typing) {
      if (now - (this.typingSentAt.get(conversationId) ?? 0) < TYPING_REPEAT_MS) return;
      this.typingSentAt.set(conversationId, now);
    } else {
      if (!this.typingSentAt.has(conversationId)) return;
      this.typingSentAt.delete(conversationId);
    }
    const state: TypingState = typing ? "started" : "stopped";
    // Typing counts against the send rate on the server, which drops it when over: spend a
    // token here too, so that it never costs a message its place.
    if (this.bucket && this.bucket.take(now) > 0) return;
    const frame: ClientFrame = { kind: "typing", conversationId, state };
    const body = encodeClientFrame(frame);
    if (!this.link.sendDatagram(body)) this.write(frame);
  }

  /** Follows these users' presence (replaces the set; kept across reconnects). */
  watchPresence(userIds: string[]): void {
    this.watched = [...new Set(userIds)];
    if (this.welcomed) this.write({ kind: "presenceWatch", userIds: this.watched });
  }

  /** Where this client stands in each conversation: the last seq it holds with no gap. */
  resumePositions(): ResumePosition[] {
    return [...this.positions].map(([conversationId, lastSeq]) => ({ conversationId, lastSeq }));
  }

  /** Ends the session and stops reconnecting; pending sends are rejected. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.teardown();
    this.link?.close();
    this.link = null;
    this.failPending(new Error("the client is closed"));
    this.setState("closed");
  }

  /** An HTTP call with the current token; after a 401, once more with a refreshed one. */
  private async withToken<T>(call: (token: string) => Promise<T>): Promise<T> {
    try {
      return await call(this.token);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401 && this.options.refreshToken)) throw err;
      this.token = await this.options.refreshToken();
      if (this.welcomed) this.write({ kind: "refreshAuth", accessToken: this.token });
      return call(this.token);
    }
  }

  // ------------------------------------------------------------------ connection

  /** Opens the first session; rejects if it cannot be opened over any transport. */
  start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.firstOpen = { resolve, reject };
      void this.open();
    });
  }

  private async open(): Promise<void> {
    this.setState(this.firstOpen ? "connecting" : "reconnecting");
    let link: Link | null = null;
    const errors: string[] = [];
    const endpoints = await this.endpoints();
    for (const transport of this.options.transports ?? ["webtransport", "websocket"]) {
      if (this.stopped) return;
      if (transport === "webtransport" && !hasWebTransport()) {
        errors.push("webtransport: not available in this browser");
        continue;
      }
      try {
        link = await this.openLink(transport, endpoints);
        break;
      } catch (err) {
        errors.push(`${transport}: ${(err as Error).message}`);
      }
    }
    if (this.stopped) {
      link?.close();
      return;
    }
    if (!link) {
      this.retry(new Error(`cannot connect (${errors.join("; ")})`));
      return;
    }
    this.link = link;
    this.fallback = errors.length ? errors.join("; ") : undefined;
    this.closing = null;
    this.write({
      kind: "hello",
      accessToken: this.token,
      protocolVersion: PROTOCOL_VERSION,
      clientName: this.options.clientName ?? "haberci-web",
      clientVersion: this.options.clientVersion ?? SDK_VERSION,
      resume: this.resumePositions(),
      maxErrorCode: MAX_ERROR_CODE,
    });
    this.welcomeTimer = setTimeout(() => {
      if (this.link === link && !this.welcomed) link.close();
    }, WELCOME_TIMEOUT_MS);
  }

  private openLink(transport: TransportName, endpoints: Endpoints): Promise<Link> {
    const events = {
      frame: (frame: ServerFrame) => {
        if (this.link === link) this.handle(frame);
      },
      closed: (why: LinkClosed) => {
        if (this.link === link) this.lost(why);
      },
    };
    let link: Link | null = null;
    const opened =
      transport === "webtransport"
        ? openWebTransport(endpoints.webTransportUrl, endpoints.hashes, this.options.webTransportTimeoutMs ?? 3_000, events)
        : openWebSocket(endpoints.webSocketUrl, 10_000, events);
    return opened.then((l) => (link = l));
  }

  /** The realtime endpoints: from the options, else `GET /v1/realtime`, else the defaults. */
  private async endpoints(): Promise<Endpoints> {
    const origin = new URL(this.options.url);
    const wss = `${origin.protocol === "http:" ? "ws:" : "wss:"}//${origin.host}`;
    let found: Endpoints = {
      webTransportUrl: `https://${origin.host}/v1/rt`,
      hashes: [],
      webSocketUrl: `${wss}/v1/ws`,
    };
    const fixed = this.options.webTransportUrl && this.options.serverCertificateHashes && this.options.webSocketUrl;
    if (!fixed) {
      try {
        const response = await fetch(new URL("/v1/realtime", origin), {
          signal: AbortSignal.timeout(DISCOVERY_TIMEOUT_MS),
          cache: "no-store",
        });
        if (response.ok) {
          const info = (await response.json()) as {
            webTransport?: { port?: number; path?: string; certificateHashes?: { algorithm: string; value: string }[] };
            webSocket?: { path?: string };
          };
          const wt = info.webTransport ?? {};
          found = {
            webTransportUrl: `https://${origin.hostname.includes(":") ? `[${origin.hostname}]` : origin.hostname}:${wt.port ?? (origin.port || 443)}${wt.path ?? "/v1/rt"}`,
            hashes: (wt.certificateHashes ?? []).filter((h) => h.algorithm === "sha-256").map((h) => h.value),
            webSocketUrl: `${wss}${info.webSocket?.path ?? "/v1/ws"}`,
          };
        }
      } catch {
        // No discovery (an older gateway, or the network): the defaults above.
      }
    }
    return {
      webTransportUrl: this.options.webTransportUrl ?? found.webTransportUrl,
      hashes: this.options.serverCertificateHashes ?? found.hashes,
      webSocketUrl: this.options.webSocketUrl ?? found.webSocketUrl,
    };
  }

  /** The link is gone: decide between reconnecting and stopping. */
  private lost(why: LinkClosed): void {
    const closing = this.closing;
    this.link = null;
    this.teardown();
    if (this.stopped) return;
    if (closing && !isRetryable(closing.code)) {
      this.stop(new ProtocolError(closing.code, closing.reason || "the server closed the session"));
      return;
    }
    if (closing?.code === "token_expired") {
      if (!this.options.refreshToken) {
        this.stop(new ProtocolError("token_expired", "the access token expired and no refreshToken was given"));
        return;
      }
      this.options.refreshToken().then(
        (token) => {
          this.token = token;
          this.retry(new ProtocolError("token_expired", closing.reason), 0);
        },
        (err: Error) => this.stop(new Error(`the access token expired and refreshing it failed: ${err.message}`)),
      );
      return;
    }
    const error = closing
      ? new ProtocolError(closing.code, closing.reason)
      : (why.error ?? new Error(`connection closed${why.reason ? `: ${why.reason}` : ""}`));
    this.retry(error, closing?.retryAfterMs ?? 0);
  }

  /** Schedules the next connection attempt, with exponential backoff and jitter. */
  private retry(error: Error, atLeastMs = 0): void {
    if (this.stopped) return;
    if (this.firstOpen && !(error instanceof ProtocolError && isRetryable(error.code))) {
      // The first connection fails to the caller, who has no client yet to watch (a server
      // that is draining, or a token just refreshed, is worth another try).
      const first = this.firstOpen;
      this.firstOpen = null;
      this.stopped = true;
      this.failPending(error);
      this.setState("closed", error);
      first.reject(error);
      return;
    }
    const base = this.options.reconnectDelayMs ?? 500;
    const max = this.options.maxReconnectDelayMs ?? 30_000;
    const backoff = Math.min(max, base * 2 ** Math.min(this.attempt, 16));
    const delay = Math.max(atLeastMs, backoff / 2 + (Math.random() * backoff) / 2);
    this.attempt++;
    this.setState("reconnecting", error);
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
  }

  private stop(error: Error): void {
    this.stopped = true;
    this.failPending(error);
    this.setState("closed", error);
    if (this.firstOpen) {
      this.firstOpen.reject(error);
      this.firstOpen = null;
    }
  }

  private teardown(): void {
    this.welcomed = false;
    this.transport = null;
    clearInterval(this.heartbeat);
    clearTimeout(this.pongTimer);
    this.pongPending = false;
    clearTimeout(this.refreshTimer);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.welcomeTimer);
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    clearTimeout(this.readTimer);
    this.readTimer = undefined;
    this.pendingReads.clear();
    this.pendingAcks.clear();
    clearTimeout(this.pumpTimer);
    this.pumpTimer = undefined;
    for (const p of this.pending.values()) p.written = false;
    for (const timer of this.typingTimers.values()) clearTimeout(timer);
    this.typingTimers.clear();
  }

  private failPending(error: Error): void {
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  private setState(state: ConnectionState, error?: Error): void {
    this.state = state;
    this.emit("state", { state, transport: this.transport, error, fallback: state === "open" ? this.fallback : undefined });
  }

  // ------------------------------------------------------------------ frames

  private write(frame: ClientFrame): void {
    if (!this.link) return;
    this.link.send(encodeClientFrame(frame));
    this.lastSentAt = Date.now();
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as Listener<ClientEvents[K]>)(value);
      } catch (err) {
        // A listener's bug must not break the session.
        console.error(`haberci: a "${event}" listener threw`, err);
      }
    }
  }

  private handle(frame: ServerFrame): void {
    this.lastReceivedAt = Date.now();
    switch (frame.kind) {
      case "welcome":
        return this.welcome(frame);
      case "message":
        return this.message(frame);
      case "sent": {
        const { kind: _, ...sent } = frame;
        const pending = this.pending.get(sent.clientMsgId);
        if (pending) {
          this.pending.delete(sent.clientMsgId);
          pending.resolve(sent);
        }
        this.emit("sent", sent);
        return;
      }
      case "status":
        this.emit("status", {
          conversationId: frame.conversationId,
          userId: frame.userId,
          delivered: frame.delivered ?? 0,
          read: frame.read ?? 0,
        });
        return;
      case "typing":
        return this.typingFrame(frame);
      case "presence":
        this.emit("presence", { userId: frame.userId, online: frame.online, lastSeen: frame.lastSeen });
        return;
      case "notification": {
        const { kind: _kind, ...notification } = frame;
        this.emit("notification", notification);
        return;
      }
      case "error":
        return this.error(frame);
      case "closing":
        // The transport closes right after; `lost` decides what to do with the code.
        this.closing = frame;
        return;
      case "pong":
        clearTimeout(this.pongTimer);
        this.pongPending = false;
        return;
    }
  }

  private welcome(frame: ServerFrameOf<"welcome">): void {
    const link = this.link!;
    clearTimeout(this.welcomeTimer);
    this.welcomed = true;
    this.attempt = 0;
    this.userId = frame.userId;
    this.sessionId = frame.sessionId;
    this.transport = link.transport;
    link.setMaxFrameSize(frame.limits.maxFrameSize);
    // Unanswered sends go again, in order, with the same ids: the server stores each once.
    this.bucket = new SendBucket(frame.limits.sendRatePerSec, Math.max(1, frame.limits.sendBurst), Date.now());
    this.pump();
    if (this.watched.length) this.write({ kind: "presenceWatch", userIds: this.watched });
    for (const [conversationId, seq] of this.readSent) this.write({ kind: "read", conversationId, seq });
    this.startHeartbeat(frame.limits.idleTimeoutMs);
    this.scheduleRefresh(frame.tokenExpiresAt - frame.serverTime);
    this.setState("open");
    if (this.firstOpen) {
      this.firstOpen.resolve();
      this.firstOpen = null;
    }
  }

  private message(frame: ServerFrameOf<"message">): void {
    const { kind: _, ...message } = frame;
    const last = this.positions.get(message.conversationId);
    if (last !== undefined && message.seq <= last) return; // a harmless duplicate
    if (last !== undefined && message.seq > last + 1) {
      // A gap, which a correct server never produces: reconnect and resume from `last`.
      this.link?.close();
      return;
    }
    this.positions.set(message.conversationId, message.seq);
    this.emit("message", message);
    if (this.options.autoAck ?? true) {
      this.pendingAcks.set(message.conversationId, message.seq);
      // Coalesced: a backlog of many messages is acked once per conversation.
      this.ackTimer ??= setTimeout(() => {
        this.ackTimer = undefined;
        for (const [conversationId, seq] of this.pendingAcks) this.write({ kind: "ack", conversationId, seq });
        this.pendingAcks.clear();
      }, 50);
    }
  }

  private typingFrame(frame: ServerFrameOf<"typing">): void {
    const key = `${frame.conversationId} ${frame.userId}`;
    clearTimeout(this.typingTimers.get(key));
    this.typingTimers.delete(key);
    const typing = frame.state === "started";
    if (typing) {
      this.typingTimers.set(
        key,
        setTimeout(() => {
          this.typingTimers.delete(key);
          this.emit("typing", { conversationId: frame.conversationId, userId: frame.userId, typing: false });
        }, TYPING_EXPIRY_MS),
      );
    }
    this.emit("typing", { conversationId: frame.conversationId, userId: frame.userId, typing });
  }

  private error(frame: ServerFrameOf<"error">): void {
    const error = new ProtocolError(frame.code, frame.message, undefined, frame.clientMsgId ?? undefined);
    const pending = frame.clientMsgId ? this.pending.get(frame.clientMsgId) : undefined;
    if (!pending) {
      this.emit("error", error);
      return;
    }
    if (isRetryable(frame.code)) {
      // rate_limited, unavailable: the same frame again later, backing off; the sends made
      // after it wait behind it.
      pending.attempts++;
      pending.written = false;
      pending.notBefore = Date.now() + Math.min(10_000, 250 * 2 ** Math.min(pending.attempts, 6));
      this.pump();
      return;
    }
    this.pending.delete(frame.clientMsgId!);
    pending.reject(error);
  }

  /**
   * Writes the sends not yet written on this session, in order, as fast as the send rate
   * allows; stops at the first that must wait (so none overtakes it) and comes back then.
   */
  private pump(): void {
    if (!this.welcomed || !this.bucket) return;
    clearTimeout(this.pumpTimer);
    this.pumpTimer = undefined;
    const now = Date.now();
    for (const p of this.pending.values()) {
      if (p.written) continue;
      const wait = p.notBefore > now ? p.notBefore - now : this.bucket.take(now);
      if (wait > 0) {
        this.pumpTimer = setTimeout(() => this.pump(), wait);
        return;
      }
      p.written = true;
      this.write(p.frame);
    }
  }

  // ------------------------------------------------------------------ timers

  private startHeartbeat(idleTimeoutMs: number): void {
    // As the Rust client: every 25 s at most (below ≈ 30 s UDP NAT bindings), a third of the
    // server's idle timeout at least.
    const every = Math.min(25_000, Math.max(1_000, (idleTimeoutMs || 75_000) / 3));
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      // Ping when either direction has been quiet: a client that keeps sending to a dead
      // server hears nothing back, and only a Ping's missing Pong tells it so.
      const quiet = Date.now() - Math.max(0, Math.min(this.lastSentAt, this.lastReceivedAt));
      if (this.pongPending || quiet < every * 0.9) return;
      this.pongPending = true;
      this.nonce = (this.nonce + 1) >>> 0;
      this.write({ kind: "ping", nonce: this.nonce });
      clearTimeout(this.pongTimer);
      const link = this.link;
      this.pongTimer = setTimeout(() => {
        // No answer: the connection is dead even if the transport has not noticed.
        if (this.link === link) link?.close();
      }, this.options.pongTimeoutMs ?? 10_000);
    }, every);
  }

  /** Refreshes the token a minute (or a fifth of its lifetime) before it expires. */
  private scheduleRefresh(lifetimeMs: number): void {
    clearTimeout(this.refreshTimer);
    const refresh = this.options.refreshToken;
    if (!refresh || lifetimeMs <= 0) return;
    const margin = this.options.refreshMarginMs ?? Math.min(60_000, lifetimeMs / 5);
    this.refreshTimer = setTimeout(() => {
      refresh().then(
        (token) => {
          this.token = token;
          if (!this.welcomed) return;
          this.write({ kind: "refreshAuth", accessToken: token });
          this.scheduleRefresh(tokenLifetimeMs(token));
        },
        () => this.scheduleRefresh(Math.min(lifetimeMs, 10_000 * 5)),
      );
    }, Math.max(1_000, lifetimeMs - margin));
  }
}

/** Milliseconds until a JWT's `exp` (0 when it has none or cannot be read). */
export function tokenLifetimeMs(token: string, now = Date.now()): number {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "="))) as { exp?: number };
    return claims.exp ? claims.exp * 1000 - now : 0;
  } catch {
    return 0;
  }
}

export type { ErrorCodeName };
