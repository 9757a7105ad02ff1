// The browser SDK's sans-IO core: everything the client decides, with no timers, no links and
// no clock (STYLE: quinn-proto; the TypeScript side of client/src/session.rs). Inputs go in —
// the link's fate (`linkOpened`, `connectFailed`, `linkClosed`), server frames
// (`handleFrame`), the application's requests (`send`, `read`, `typing`, …), tokens
// (`tokenRefreshed`, `refreshAuth`) and the clock (`handleTimeout`), each with `now` (Unix ms)
// passed in — and outputs come out, polled: frame bodies to write (`pollTransmit`), events,
// send answers and what the driver must do (`pollOutput`), and the next deadline
// (`pollTimeout`). client.ts is the driver: the link, one timer, the listeners.
//
// Unlike the Rust session, which lives for one connection (its caller reconnects, with
// client/src/backoff.rs), this one lives as long as the client: the web SDK reconnects by
// itself, so that decision is made here too. It owns:
// - the connection cycle: `connect` out, Hello, Welcome within 10 s, open; a lost connection
//   is retried with exponential backoff and equal jitter (the policy of backoff.rs), never
//   sooner than `Closing.retryAfterMs`; a code retrying cannot fix ends the client, and a first
//   connection that fails for good fails to the caller;
// - sends kept until `Sent`, by clientMsgId: written again after every reconnect and after
//   `rate_limited` / `unavailable` (backing off), in the order they were made, paced by the
//   send rate `Welcome` announced (a token bucket);
// - resume positions (duplicates dropped, a gap reconnects), coalesced acks and read marks;
// - typing (the repeat throttle, the expiry of others' "started") and the presence watch set;
// - the heartbeat: a Ping after a third of the idle timeout (25 s at most) quiet in either
//   direction, and a reconnect when its Pong is later than `pongTimeoutMs`;
// - token refresh timing: before expiry (then `RefreshAuth` in-band), and after a
//   `token_expired` close (then the reconnect).
//
// Invariant: the driver drains `pollTransmit` before `pollOutput` after every input, so what
// was queued before a `closeLink` (a local close's last acks) is written before the close.

import {
  MAX_ERROR_CODE,
  PROTOCOL_VERSION,
  ProtocolError,
  encodeClientFrame,
  isRetryable,
  mayTravelAsDatagram,
  type ClientFrame,
  type Message,
  type ResumePosition,
  type ServerFrame,
  type ServerFrameOf,
} from "./codec.js";
import type { LinkClosed, TransportName } from "./transport.js";

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

/** Acks and read marks are collected this long, then sent once per conversation. */
export const ACK_DELAY_MS = 50;
/** No `Welcome` this long after the link opened: the connection is taken as dead. */
export const WELCOME_TIMEOUT_MS = 10_000;
/** The server closes the link right after `Closing`; one still open after this is closed here. */
export const CLOSING_GRACE_MS = 5_000;
/** Receivers expire a typing "started" after this long without a refresh. */
export const TYPING_EXPIRY_MS = 6_000;
/** Senders repeat "started" at most this often while the user types. */
export const TYPING_REPEAT_MS = 3_000;
/** The heartbeat's longest interval: below the ≈ 30 s after which UDP NAT bindings expire. */
export const MAX_PING_INTERVAL_MS = 25_000;
export const DEFAULT_PONG_TIMEOUT_MS = 10_000;
export const DEFAULT_RECONNECT_DELAY_MS = 500;
export const DEFAULT_MAX_RECONNECT_DELAY_MS = 30_000;
/** After a failed refresh, the next is planned as if the token had at most this long to live. */
const REFRESH_RETRY_LIFETIME_MS = 50_000;

/** What the session decides by (the driver maps `ConnectOptions` onto it). */
export interface SessionSettings {
  clientName: string;
  clientVersion: string;
  /** Whether the driver can get a new token (`ConnectOptions.refreshToken` is set). */
  canRefresh: boolean;
  /** How long before expiry to refresh (ms). Default: a minute, or a fifth of the lifetime. */
  refreshMarginMs?: number;
  /** Ack every message (coalesced per conversation). Default true. */
  autoAck?: boolean;
  /** Reconnect backoff: first ceiling and last (ms). Default 500 and 30,000. */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** A Ping unanswered this long means the connection is dead (ms). Default 10,000. */
  pongTimeoutMs?: number;
  /** A number in [0, 1) for the reconnect jitter: `Math.random` in the driver, fixed in tests. */
  random: () => number;
}

/** A frame body to write (no length prefix: the link frames it). */
export interface Transmit {
  body: Uint8Array;
  /** An ephemeral frame (typing): it may travel as a datagram, and may be lost. */
  ephemeral: boolean;
}

/** An event for the application's listeners. */
export type SessionEvent = {
  [K in keyof ClientEvents]: { kind: "event"; name: K; value: ClientEvents[K] };
}[keyof ClientEvents];

/** An output of the session other than bytes to write. `W` is what waits for a send's answer. */
export type SessionOutput<W> =
  | SessionEvent
  /** The send waiting on `waiter` was stored. */
  | { kind: "sendDone"; waiter: W; sent: Sent }
  /** The send waiting on `waiter` was refused, or the client closed before it was stored. */
  | { kind: "sendFailed"; waiter: W; error: Error }
  /** Open a link (discovery, the transports in order); answer with `linkOpened` or `connectFailed`. */
  | { kind: "connect" }
  /** Close the current link, if any. Its close is not to be reported: the session has moved on. */
  | { kind: "closeLink" }
  /** Call `refreshToken()`; answer with `tokenRefreshed` or `tokenRefreshFailed`. */
  | { kind: "refreshToken" }
  /** The largest frame the server will send (from `Welcome`), for the link's decoder. */
  | { kind: "maxFrameSize"; bytes: number };

/** Where the session is. */
export type SessionPhase =
  /** Constructed; `start` not called yet. */
  | "idle"
  /** `connect` is out; the driver is opening a link. */
  | "connecting"
  /** The link is open and `Hello` written; nothing else may be. */
  | "awaitingWelcome"
  | "open"
  /** The server sent `Closing`; the link's close follows. */
  | "closing"
  /** Waiting to reconnect (the backoff). */
  | "backoff"
  /** The token expired: waiting for a new one before reconnecting. */
  | "refreshing"
  /** For good: closed by the application, or a failure retrying cannot fix. */
  | "closed";

type SendFrame = Extract<ClientFrame, { kind: "send" }>;

interface PendingSend<W> {
  body: Uint8Array;
  waiter: W;
  /** Written on the current connection (and not refused since). */
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
  #tokens: number;
  #last: number;
  constructor(
    private readonly rate: number,
    private readonly burst: number,
    now: number,
  ) {
    this.#tokens = burst;
    this.#last = now;
  }
  /** Takes a token if there is one; else returns how long until there is (ms). */
  take(now: number): number {
    if (this.rate <= 0) return 0; // no limit announced
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) / 1000) * this.rate);
    this.#last = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.#tokens) / this.rate) * 1000);
  }
}

/** When a JWT expires (Unix ms, its `exp` claim), or null when it has none or cannot be read. */
export function tokenExpiresAt(token: string): number | null {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "="))) as { exp?: number };
    return claims.exp ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** The sans-IO client session. `W`: what waits for a send's answer. */
export class Session<W> {
  readonly #settings: SessionSettings;
  #phase: SessionPhase = "idle";
  #state: ConnectionState = "connecting";
  #token: string;
  /** Some connection reached `Welcome`: from then on every failure is retried. */
  #everOpen = false;
  /** Reconnect attempts since the last `Welcome`. */
  #retries = 0;
  #reconnectAt: number | null = null;
  /** The transport of the link being opened, and of the open connection. */
  #linkTransport: TransportName | null = null;
  #transport: TransportName | null = null;
  #fallback: string | undefined;
  #userId: string | null = null;
  #sessionId: string | null = null;
  #welcomeDue: number | null = null;
  #closing: ServerFrameOf<"closing"> | null = null;
  #closingDue: number | null = null;
  /** Per conversation, the last seq held with no gap below. */
  readonly #positions = new Map<string, number>();
  /** Sends without an answer yet, in the order they were made. */
  readonly #pending = new Map<string, PendingSend<W>>();
  #bucket: SendBucket | null = null;
  #pumpAt: number | null = null;
  /** Per conversation, the seq to ack at `#ackAt`. */
  readonly #unacked = new Map<string, number>();
  #ackAt: number | null = null;
  /** Every read mark made (sent again after each `Welcome`), and those not sent yet. */
  readonly #readMarks = new Map<string, number>();
  readonly #unsentReads = new Set<string>();
  #readAt: number | null = null;
  #watched: string[] = [];
  readonly #typingSentAt = new Map<string, number>();
  /** Others' typing "started", until it expires. */
  readonly #typingShown = new Map<string, { conversationId: string; userId: string; until: number }>();
  #pingEvery = 0;
  #lastSent = 0;
  #lastReceived = 0;
  #ping: { nonce: number; sentAt: number } | null = null;
  #nonce = 0;
  #refreshAt: number | null = null;
  /** The lifetime the current refresh plan was made for. */
  #refreshLifetime = 0;
  #refreshInFlight = false;
  #expiredReason = "";
  readonly #transmits: Transmit[] = [];
  readonly #outputs: SessionOutput<W>[] = [];

  /**
   * A session that will say `token` and resume from `resume`. Both are checked here (they
   * travel in every `Hello`): a bad one throws `ProtocolError("invalid_field")` at the call.
   */
  constructor(settings: SessionSettings, token: string, resume: readonly ResumePosition[] = []) {
    this.#settings = settings;
    this.#token = token;
    for (const p of resume) this.#positions.set(p.conversationId, p.lastSeq);
    encodeClientFrame(this.#hello());
  }

  // ------------------------------------------------------------------ state

  get phase(): SessionPhase {
    return this.#phase;
  }
  /** What the application sees (the last `state` event). */
  get state(): ConnectionState {
    return this.#state;
  }
  get isOpen(): boolean {
    return this.#phase === "open";
  }
  get isClosed(): boolean {
    return this.#phase === "closed";
  }
  /** The transport of the open connection (null while there is none). */
  get transport(): TransportName | null {
    return this.#transport;
  }
  /** Why the last link is not on the first transport in the list (undefined if it is). */
  get fallback(): string | undefined {
    return this.#fallback;
  }
  /** Who the token says we are, and the session's id (from the last `Welcome`). */
  get userId(): string | null {
    return this.#userId;
  }
  get sessionId(): string | null {
    return this.#sessionId;
  }
  /** The current access token (for the HTTP API too). */
  get token(): string {
    return this.#token;
  }
  /** Sends without an answer yet. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Where this client stands in each conversation: the last seq it holds with no gap. */
  positions(): ResumePosition[] {
    return [...this.#positions].map(([conversationId, lastSeq]) => ({ conversationId, lastSeq }));
  }

  // ------------------------------------------------------------------ outputs

  /** The next frame body to write, in order. */
  pollTransmit(): Transmit | undefined {
    return this.#transmits.shift();
  }

  pollOutput(): SessionOutput<W> | undefined {
    return this.#outputs.shift();
  }

  /** When `handleTimeout` next has work (Unix ms); undefined when nothing is timed. */
  pollTimeout(): number | undefined {
    const due: (number | null)[] = [];
    switch (this.#phase) {
      case "awaitingWelcome":
        due.push(this.#welcomeDue);
        break;
      case "closing":
        due.push(this.#closingDue);
        break;
      case "backoff":
        due.push(this.#reconnectAt);
        break;
      case "open":
        due.push(this.#ackAt, this.#readAt, this.#pumpAt, this.#refreshAt, this.#pingDue(), this.#pongDue());
        break;
    }
    for (const shown of this.#typingShown.values()) due.push(shown.until);
    let next: number | undefined;
    for (const at of due) if (at !== null && (next === undefined || at < next)) next = at;
    return next;
  }

  // ------------------------------------------------------------------ inputs: the connection

  /** Begins the first connection (`connect` out). */
  start(_now: number): void {
    if (this.#phase === "idle") this.#connect();
  }

  /** The driver opened a link after `connect`: `Hello` goes out. */
  linkOpened(transport: TransportName, fallback: string | undefined, now: number): void {
    if (this.#phase !== "connecting") {
      // Closed while the link was being opened: it is not wanted.
      this.#output({ kind: "closeLink" });
      return;
    }
    this.#phase = "awaitingWelcome";
    this.#linkTransport = transport;
    this.#fallback = fallback;
    this.#welcomeDue = now + WELCOME_TIMEOUT_MS;
    this.#lastReceived = now;
    this.#write(this.#hello(), now);
  }

  /** No transport could be opened after `connect`. */
  connectFailed(error: Error, now: number): void {
    if (this.#phase === "connecting") this.#retry(error, 0, now);
  }

  /** The link ended (either side closed it, or it failed). */
  linkClosed(why: LinkClosed, now: number): void {
    if (this.#linkUp()) this.#lost(why, now);
  }

  /** A frame from the server. */
  handleFrame(frame: ServerFrame, now: number): void {
    if (!this.#linkUp()) return; // from a link this session is done with
    this.#lastReceived = now;
    if (frame.kind === "closing") {
      // The link closes right after; `#lost` decides what to do with the code.
      this.#phase = "closing";
      this.#closing = frame;
      this.#closingDue = now + CLOSING_GRACE_MS;
      return;
    }
    if (this.#phase === "awaitingWelcome") {
      // The server's first frame is Welcome or Closing (docs/PROTOCOL.md, "Hello"): a
      // stray one before it is ignored, as the Rust session does.
      if (frame.kind === "welcome") this.#welcome(frame, now);
      return;
    }
    switch (frame.kind) {
      case "welcome":
        return; // a second Welcome
      case "message":
        return this.#message(frame, now);
      case "sent": {
        const { kind: _, ...sent } = frame;
        const pending = this.#pending.get(sent.clientMsgId);
        if (pending) {
          this.#pending.delete(sent.clientMsgId);
          this.#output({ kind: "sendDone", waiter: pending.waiter, sent });
        }
        this.#event("sent", sent);
        return;
      }
      case "status":
        this.#event("status", {
          conversationId: frame.conversationId,
          userId: frame.userId,
          delivered: frame.delivered ?? 0,
          read: frame.read ?? 0,
        });
        return;
      case "typing":
        return this.#typingFrame(frame, now);
      case "presence":
        this.#event("presence", { userId: frame.userId, online: frame.online, lastSeen: frame.lastSeen });
        return;
      case "notification": {
        const { kind: _kind, ...notification } = frame;
        this.#event("notification", notification);
        return;
      }
      case "error":
        return this.#errorFrame(frame, now);
      case "pong":
        if (this.#ping?.nonce === frame.nonce) this.#ping = null;
        return;
    }
  }

  /** The clock reached a deadline from `pollTimeout` (or any time later). */
  handleTimeout(now: number): void {
    this.#expireTyping(now);
    switch (this.#phase) {
      case "backoff":
        if (this.#reconnectAt !== null && now >= this.#reconnectAt) this.#connect();
        return;
      case "awaitingWelcome":
        if (this.#welcomeDue !== null && now >= this.#welcomeDue) {
          this.#disconnect(new Error(`no Welcome within ${WELCOME_TIMEOUT_MS} ms`), now);
        }
        return;
      case "closing":
        if (this.#closingDue !== null && now >= this.#closingDue) {
          this.#output({ kind: "closeLink" });
          this.#lost({ reason: "the server did not close the connection after Closing" }, now);
        }
        return;
      case "open":
        break;
      default:
        return;
    }
    const pong = this.#pongDue();
    if (pong !== null && now >= pong) {
      // No answer: the connection is dead even if the transport has not noticed.
      this.#disconnect(new Error(`no Pong within ${this.#pongTimeout()} ms`), now);
      return;
    }
    if (this.#ackAt !== null && now >= this.#ackAt) this.#flushAcks(now);
    if (this.#readAt !== null && now >= this.#readAt) this.#flushReads(now);
    if (this.#pumpAt !== null && now >= this.#pumpAt) this.#pump(now);
    const ping = this.#pingDue();
    if (ping !== null && now >= ping) {
      this.#nonce = (this.#nonce + 1) >>> 0;
      this.#write({ kind: "ping", nonce: this.#nonce }, now);
      this.#ping = { nonce: this.#nonce, sentAt: now };
    }
    if (this.#refreshAt !== null && now >= this.#refreshAt) {
      this.#refreshAt = null;
      this.#requestRefresh();
    }
  }

  // ------------------------------------------------------------------ inputs: the application

  /**
   * Keeps a send until the server answers it (`sendDone` / `sendFailed` with `waiter`),
   * writing it whenever a connection is open. A bad frame throws here (`ProtocolError`),
   * before anything is kept.
   */
  send(frame: SendFrame, waiter: W, now: number): void {
    if (this.#phase === "closed") {
      this.#output({ kind: "sendFailed", waiter, error: new Error("the client is closed") });
      return;
    }
    const body = encodeClientFrame(frame);
    if (this.#pending.has(frame.clientMsgId)) {
      const error = new Error(`a send with clientMsgId ${frame.clientMsgId} is already waiting for its answer`);
      this.#output({ kind: "sendFailed", waiter, error });
      return;
    }
    this.#pending.set(frame.clientMsgId, { body, waiter, written: false, notBefore: 0, attempts: 0 });
    this.#pump(now);
  }

  /** Acks delivery up to `seq` now (when open). */
  ack(conversationId: string, seq: number, now: number): void {
    this.#request({ kind: "ack", conversationId, seq }, now);
  }

  /**
   * The user has read up to `seq`: sent once per conversation after `ACK_DELAY_MS` (a backlog
   * shown at once costs one frame), and again after every reconnect.
   */
  read(conversationId: string, seq: number, now: number): void {
    if ((this.#readMarks.get(conversationId) ?? 0) >= seq) return;
    encodeClientFrame({ kind: "read", conversationId, seq }); // a bad id or seq fails here
    this.#readMarks.set(conversationId, seq);
    if (this.#phase !== "open") return; // `Welcome` sends them all
    this.#unsentReads.add(conversationId);
    this.#readAt ??= now + ACK_DELAY_MS;
  }

  /** The user is typing (or stopped): "started" at most every 3 s, and within the send rate. */
  typing(conversationId: string, typing: boolean, now: number): void {
    const frame: ClientFrame = { kind: "typing", conversationId, state: typing ? "started" : "stopped" };
    const body = encodeClientFrame(frame);
    if (this.#phase !== "open") return;
    if (typing) {
      if (now - (this.#typingSentAt.get(conversationId) ?? -Infinity) < TYPING_REPEAT_MS) return;
      this.#typingSentAt.set(conversationId, now);
    } else {
      if (!this.#typingSentAt.has(conversationId)) return;
      this.#typingSentAt.delete(conversationId);
    }
    // Typing counts against the send rate on the server, which drops it when over: spend a
    // token here too, so that it never costs a message its place.
    if (this.#bucket && this.#bucket.take(now) > 0) return;
    this.#transmit(body, frame.kind, now);
  }

  /** Follows these users' presence (replaces the set; sent again after every reconnect). */
  watchPresence(userIds: string[], now: number): void {
    const frame: ClientFrame = { kind: "presenceWatch", userIds: [...new Set(userIds)] };
    encodeClientFrame(frame);
    this.#watched = frame.userIds;
    if (this.#phase === "open") this.#write(frame, now);
  }

  /** A token the application got by itself (after an HTTP 401): kept, and sent in-band. */
  refreshAuth(token: string, now: number): void {
    const frame: ClientFrame = { kind: "refreshAuth", accessToken: token };
    encodeClientFrame(frame);
    this.#token = token;
    if (this.#phase === "open") this.#write(frame, now);
  }

  /** The answer to `refreshToken`. */
  tokenRefreshed(token: string, now: number): void {
    if (typeof token !== "string" || !token) {
      this.tokenRefreshFailed(new Error("refreshToken() gave no token"), now);
      return;
    }
    this.#refreshInFlight = false;
    if (this.#phase === "closed") return;
    this.#token = token;
    if (this.#phase === "refreshing") {
      this.#retry(new ProtocolError("token_expired", this.#expiredReason), 0, now);
    } else if (this.#phase === "open") {
      this.#write({ kind: "refreshAuth", accessToken: token }, now);
      const expires = tokenExpiresAt(token);
      this.#scheduleRefresh(expires === null ? 0 : expires - now, now);
    }
    // Otherwise between connections: the next Hello carries it, its Welcome plans the next.
  }

  /** `refreshToken` failed. */
  tokenRefreshFailed(error: Error, now: number): void {
    this.#refreshInFlight = false;
    if (this.#phase === "refreshing") {
      this.#stop(new Error(`the access token expired and refreshing it failed: ${error.message}`));
    } else if (this.#phase === "open") {
      this.#scheduleRefresh(Math.min(this.#refreshLifetime, REFRESH_RETRY_LIFETIME_MS), now);
    }
  }

  /**
   * Ends the session for good: coalesced acks and read marks are queued first (written before
   * the link closes), every pending send fails, `state` "closed" follows.
   */
  close(now: number): void {
    if (this.#phase === "closed") return;
    if (this.#phase === "open") {
      this.#flushAcks(now);
      this.#flushReads(now);
    }
    this.#output({ kind: "closeLink" });
    this.#stop(undefined);
  }

  // ------------------------------------------------------------------ the connection cycle

  /** A link is up: frames may be written and received. */
  #linkUp(): boolean {
    return this.#phase === "awaitingWelcome" || this.#phase === "open" || this.#phase === "closing";
  }

  #hello(): ClientFrame {
    return {
      kind: "hello",
      accessToken: this.#token,
      protocolVersion: PROTOCOL_VERSION,
      clientName: this.#settings.clientName,
      clientVersion: this.#settings.clientVersion,
      resume: this.positions(),
      // This build decodes every code of its table, so the server may send them all.
      maxErrorCode: MAX_ERROR_CODE,
    };
  }

  #connect(): void {
    this.#phase = "connecting";
    this.#reconnectAt = null;
    this.#setState(this.#everOpen ? "reconnecting" : "connecting");
    this.#output({ kind: "connect" });
  }

  #welcome(frame: ServerFrameOf<"welcome">, now: number): void {
    this.#phase = "open";
    this.#welcomeDue = null;
    this.#everOpen = true;
    this.#retries = 0;
    this.#userId = frame.userId;
    this.#sessionId = frame.sessionId;
    this.#transport = this.#linkTransport;
    this.#output({ kind: "maxFrameSize", bytes: frame.limits.maxFrameSize });
    // Unanswered sends go again, in order, with the same ids: the server stores each once.
    this.#bucket = new SendBucket(frame.limits.sendRatePerSec, Math.max(1, frame.limits.sendBurst), now);
    this.#pump(now);
    if (this.#watched.length) this.#write({ kind: "presenceWatch", userIds: this.#watched }, now);
    for (const [conversationId, seq] of this.#readMarks) this.#write({ kind: "read", conversationId, seq }, now);
    // As the Rust client: every 25 s at most, a third of the server's idle timeout at least.
    this.#pingEvery = Math.min(MAX_PING_INTERVAL_MS, Math.max(1_000, (frame.limits.idleTimeoutMs || 75_000) / 3));
    this.#ping = null;
    this.#scheduleRefresh(frame.tokenExpiresAt - frame.serverTime, now);
    this.#setState("open");
  }

  /** This side decided the connection is dead: the link is closed and the loss handled. */
  #disconnect(error: Error, now: number): void {
    this.#output({ kind: "closeLink" });
    this.#lost({ error }, now);
  }

  /** The link is gone: reconnect, refresh first, or stop. */
  #lost(why: LinkClosed, now: number): void {
    const closing = this.#closing;
    this.#transmits.length = 0; // nothing can be written on that link any more
    this.#teardown();
    if (closing && !isRetryable(closing.code)) {
      this.#stop(new ProtocolError(closing.code, closing.reason || "the server closed the session"));
      return;
    }
    if (closing?.code === "token_expired") {
      if (!this.#settings.canRefresh) {
        this.#stop(new ProtocolError("token_expired", "the access token expired and no refreshToken was given"));
        return;
      }
      this.#phase = "refreshing";
      this.#expiredReason = closing.reason;
      this.#setState(this.#everOpen ? "reconnecting" : "connecting", new ProtocolError("token_expired", closing.reason));
      this.#requestRefresh();
      return;
    }
    const error = closing
      ? new ProtocolError(closing.code, closing.reason)
      : (why.error ?? new Error(`connection closed${why.reason ? `: ${why.reason}` : ""}`));
    this.#retry(error, closing?.retryAfterMs ?? 0, now);
  }

  /** Plans the next connection attempt, with exponential backoff and equal jitter. */
  #retry(error: Error, atLeastMs: number, now: number): void {
    if (!this.#everOpen && !(error instanceof ProtocolError && isRetryable(error.code))) {
      // The first connection fails to the caller, who has no client yet to watch (a server
      // that is draining, or a token just refreshed, is worth another try).
      this.#stop(error);
      return;
    }
    const base = this.#settings.reconnectDelayMs ?? DEFAULT_RECONNECT_DELAY_MS;
    const max = this.#settings.maxReconnectDelayMs ?? DEFAULT_MAX_RECONNECT_DELAY_MS;
    const ceiling = Math.min(max, base * 2 ** Math.min(this.#retries, 16));
    const delay = Math.max(atLeastMs, ceiling / 2 + (this.#settings.random() * ceiling) / 2);
    this.#retries++;
    this.#phase = "backoff";
    this.#reconnectAt = now + delay;
    this.#setState("reconnecting", error);
  }

  /** For good: every pending send fails with `error` (or "closed"), `state` "closed". */
  #stop(error: Error | undefined): void {
    this.#teardown();
    this.#phase = "closed";
    this.#reconnectAt = null;
    this.#typingShown.clear();
    const failure = error ?? new Error("the client is closed");
    for (const pending of this.#pending.values()) this.#output({ kind: "sendFailed", waiter: pending.waiter, error: failure });
    this.#pending.clear();
    this.#setState("closed", error);
  }

  /** Forgets what belonged to the connection that ended. */
  #teardown(): void {
    this.#transport = null;
    this.#linkTransport = null;
    this.#closing = null;
    this.#closingDue = null;
    this.#welcomeDue = null;
    this.#ping = null;
    this.#refreshAt = null;
    this.#ackAt = null;
    this.#unacked.clear();
    this.#readAt = null;
    this.#unsentReads.clear();
    this.#pumpAt = null;
    this.#bucket = null;
    for (const pending of this.#pending.values()) pending.written = false;
    // Others' typing keeps its expiry: no "stopped" may come for it on the next connection.
  }

  #setState(state: ConnectionState, error?: Error): void {
    this.#state = state;
    const fallback = state === "open" ? this.#fallback : undefined;
    this.#event("state", { state, transport: this.#transport, error, fallback });
  }

  // ------------------------------------------------------------------ frames in

  #message(frame: ServerFrameOf<"message">, now: number): void {
    const { kind: _, ...message } = frame;
    const last = this.#positions.get(message.conversationId);
    if (last !== undefined && message.seq <= last) return; // a harmless duplicate
    if (last !== undefined && message.seq > last + 1) {
      // A gap, which a correct server never produces: reconnect and resume from `last`.
      const where = `conversation ${message.conversationId}: seq ${message.seq} after ${last}`;
      this.#disconnect(new Error(`a gap in ${where}`), now);
      return;
    }
    this.#positions.set(message.conversationId, message.seq);
    this.#event("message", message);
    if (this.#settings.autoAck ?? true) {
      // Coalesced: a backlog of many messages is acked once per conversation, after the
      // listeners ran.
      this.#unacked.set(message.conversationId, message.seq);
      this.#ackAt ??= now + ACK_DELAY_MS;
    }
  }

  #typingFrame(frame: ServerFrameOf<"typing">, now: number): void {
    const { conversationId, userId } = frame;
    const key = `${conversationId} ${userId}`;
    this.#typingShown.delete(key);
    const typing = frame.state === "started";
    if (typing) this.#typingShown.set(key, { conversationId, userId, until: now + TYPING_EXPIRY_MS });
    this.#event("typing", { conversationId, userId, typing });
  }

  #expireTyping(now: number): void {
    const expired = [...this.#typingShown].filter(([, shown]) => now >= shown.until).sort(([, a], [, b]) => a.until - b.until);
    for (const [key, { conversationId, userId }] of expired) {
      this.#typingShown.delete(key);
      this.#event("typing", { conversationId, userId, typing: false });
    }
  }

  #errorFrame(frame: ServerFrameOf<"error">, now: number): void {
    const error = new ProtocolError(frame.code, frame.message, undefined, frame.clientMsgId ?? undefined);
    const pending = frame.clientMsgId ? this.#pending.get(frame.clientMsgId) : undefined;
    if (!pending || !frame.clientMsgId) {
      this.#event("error", error);
      return;
    }
    if (isRetryable(frame.code)) {
      // rate_limited, unavailable: the same frame again later, backing off; the sends made
      // after it wait behind it.
      pending.attempts++;
      pending.written = false;
      pending.notBefore = now + Math.min(10_000, 250 * 2 ** Math.min(pending.attempts, 6));
      this.#pump(now);
      return;
    }
    this.#pending.delete(frame.clientMsgId);
    this.#output({ kind: "sendFailed", waiter: pending.waiter, error });
  }

  // ------------------------------------------------------------------ frames out

  /**
   * Writes the sends not yet written on this connection, in order, as fast as the send rate
   * allows; stops at the first that must wait (so none overtakes it) and comes back then.
   */
  #pump(now: number): void {
    this.#pumpAt = null;
    if (this.#phase !== "open" || !this.#bucket) return;
    for (const pending of this.#pending.values()) {
      if (pending.written) continue;
      const wait = pending.notBefore > now ? pending.notBefore - now : this.#bucket.take(now);
      if (wait > 0) {
        this.#pumpAt = now + wait;
        return;
      }
      pending.written = true;
      this.#transmit(pending.body, "send", now);
    }
  }

  #flushAcks(now: number): void {
    this.#ackAt = null;
    for (const [conversationId, seq] of this.#unacked) this.#write({ kind: "ack", conversationId, seq }, now);
    this.#unacked.clear();
  }

  #flushReads(now: number): void {
    this.#readAt = null;
    for (const conversationId of this.#unsentReads) {
      this.#write({ kind: "read", conversationId, seq: this.#readMarks.get(conversationId)! }, now);
    }
    this.#unsentReads.clear();
  }

  /** The heartbeat pings `#pingEvery` after the last frame either way, unless one is out. */
  #pingDue(): number | null {
    if (this.#ping || this.#pingEvery <= 0) return null;
    return Math.min(this.#lastSent, this.#lastReceived) + this.#pingEvery;
  }

  #pongDue(): number | null {
    return this.#ping ? this.#ping.sentAt + this.#pongTimeout() : null;
  }

  #pongTimeout(): number {
    return this.#settings.pongTimeoutMs ?? DEFAULT_PONG_TIMEOUT_MS;
  }

  /** Plans a refresh a minute (or a fifth of the lifetime, or `refreshMarginMs`) before expiry. */
  #scheduleRefresh(lifetimeMs: number, now: number): void {
    this.#refreshAt = null;
    if (!this.#settings.canRefresh || lifetimeMs <= 0) return;
    this.#refreshLifetime = lifetimeMs;
    const margin = this.#settings.refreshMarginMs ?? Math.min(60_000, lifetimeMs / 5);
    this.#refreshAt = now + Math.max(1_000, lifetimeMs - margin);
  }

  #requestRefresh(): void {
    // One call at a time: a token_expired close during a planned refresh waits for that one.
    if (this.#refreshInFlight) return;
    this.#refreshInFlight = true;
    this.#output({ kind: "refreshToken" });
  }

  /** A request of the application: checked (a bad one throws), written when open. */
  #request(frame: ClientFrame, now: number): void {
    const body = encodeClientFrame(frame);
    if (this.#phase === "open") this.#transmit(body, frame.kind, now);
  }

  #write(frame: ClientFrame, now: number): void {
    this.#transmit(encodeClientFrame(frame), frame.kind, now);
  }

  #transmit(body: Uint8Array, kind: ClientFrame["kind"], now: number): void {
    if (!this.#linkUp()) return;
    this.#transmits.push({ body, ephemeral: mayTravelAsDatagram(kind, "client") });
    this.#lastSent = now;
  }

  #event<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    this.#outputs.push({ kind: "event", name, value } as SessionEvent);
  }

  #output(output: SessionOutput<W>): void {
    this.#outputs.push(output);
  }
}
