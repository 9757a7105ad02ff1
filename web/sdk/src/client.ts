// The realtime client of docs/PROTOCOL.md: the driver of the sans-IO `Session` (session.ts),
// which decides everything — Hello + token -> Welcome, sends kept until Sent, resume
// positions, acks, receipts, typing and presence, heartbeat, in-band token refresh, and
// reconnection with backoff and jitter. This side owns what the session may not: the link
// (discovery, WebTransport then WebSocket), one timer set to the session's next deadline,
// `refreshToken()`, the HTTP calls, and the listeners. Every input reaches the session with
// `now` from the wall clock (token expiry is wall-clock time), then `drive` carries out what
// it queued.

import type {
  ClientFrame,
  ErrorCodeName,
  MediaRef,
  MessageType,
  Recipient,
  ResumePosition,
  ServerFrame,
} from "./codec.js";
import { randomUuid } from "./ids.js";
import { ApiError, mediaInfo, mediaRefOf, uploadMedia, type MediaView, type UploadOptions } from "./media.js";
import {
  Session,
  tokenExpiresAt,
  type ClientEvents,
  type ConnectionState,
  type SessionEvent,
  type SessionOutput,
  type Sent,
  type Transmit,
} from "./session.js";
import {
  hasWebTransport,
  openWebSocket,
  openWebTransport,
  type Link,
  type LinkClosed,
  type TransportName,
} from "./transport.js";

export type { ClientEvents, ConnectionState, Sent };

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

type Listener<T> = (event: T) => void;

/** What waits for a send's answer: its promise's settle functions. */
interface SendWaiter {
  resolve(sent: Sent): void;
  reject(err: Error): void;
}

const DISCOVERY_TIMEOUT_MS = 5_000;
const WEBSOCKET_TIMEOUT_MS = 10_000;
const DEFAULT_WEBTRANSPORT_TIMEOUT_MS = 3_000;
/** `setTimeout` fires at once for longer delays: a farther deadline is waited for in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const now = (): number => Date.now();

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
  private readonly options: ConnectOptions;
  private readonly session: Session<SendWaiter>;
  /** The open link, if any. Invariant: only this link's frames and close reach the session. */
  private link: Link | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The deadline `timer` is set for. */
  private timerAt: number | undefined;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private firstOpen: { resolve(): void; reject(err: Error): void } | null = null;

  constructor(options: ConnectOptions) {
    if (!options.url) throw new TypeError("connect: `url` (the gateway's https origin) is required");
    if (!options.token) throw new TypeError("connect: `token` (an access token) is required");
    for (const t of options.transports ?? []) {
      if (t !== "webtransport" && t !== "websocket") throw new TypeError(`connect: unknown transport ${JSON.stringify(t)}`);
    }
    this.options = options;
    this.session = new Session<SendWaiter>(
      {
        clientName: options.clientName ?? "haberci-web",
        clientVersion: options.clientVersion ?? SDK_VERSION,
        canRefresh: !!options.refreshToken,
        refreshMarginMs: options.refreshMarginMs,
        autoAck: options.autoAck,
        reconnectDelayMs: options.reconnectDelayMs,
        maxReconnectDelayMs: options.maxReconnectDelayMs,
        pongTimeoutMs: options.pongTimeoutMs,
        random: Math.random,
      },
      options.token,
      options.resume ?? [],
    );
  }

  /** The transport of the current connection (null while disconnected). */
  get transport(): TransportName | null {
    return this.session.transport;
  }
  get state(): ConnectionState {
    return this.session.state;
  }
  /** Who the token says we are (from `Welcome`). */
  get userId(): string | null {
    return this.session.userId;
  }
  get sessionId(): string | null {
    return this.session.sessionId;
  }
  /** Why the current connection is not on the first transport in the list (none if it is). */
  get fallback(): string | undefined {
    return this.session.fallback;
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
    const frame: Extract<ClientFrame, { kind: "send" }> = {
      kind: "send",
      clientMsgId: extra.clientMsgId ?? randomUuid(),
      recipient: typeof recipient === "string" ? { userId: recipient } : recipient,
      type,
      content,
      media: extra.media ?? null,
    };
    let waiter!: SendWaiter;
    const sent = new Promise<Sent>((resolve, reject) => (waiter = { resolve, reject }));
    // A bad frame throws here, at the call, and `sent` is dropped unsettled.
    this.session.send(frame, waiter, now());
    this.drive();
    return sent;
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
    this.session.read(conversationId, seq, now());
    this.drive();
  }

  /** Acks delivery up to `seq` (only needed with `autoAck: false`). */
  ack(conversationId: string, seq: number): void {
    this.session.ack(conversationId, seq, now());
    this.drive();
  }

  /**
   * The user is typing (or stopped). "started" is repeated at most every 3 s however often
   * this is called; on WebTransport it travels as a datagram.
   */
  typing(conversationId: string, typing: boolean): void {
    this.session.typing(conversationId, typing, now());
    this.drive();
  }

  /** Follows these users' presence (replaces the set; kept across reconnects). */
  watchPresence(userIds: string[]): void {
    this.session.watchPresence(userIds, now());
    this.drive();
  }

  /** Where this client stands in each conversation: the last seq it holds with no gap. */
  resumePositions(): ResumePosition[] {
    return this.session.positions();
  }

  /** Ends the session and stops reconnecting; pending sends are rejected. */
  close(): void {
    this.session.close(now());
    this.drive();
  }

  /** An HTTP call with the current token; after a 401, once more with a refreshed one. */
  private async withToken<T>(call: (token: string) => Promise<T>): Promise<T> {
    try {
      return await call(this.session.token);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401 && this.options.refreshToken)) throw err;
      const token = await this.options.refreshToken();
      this.session.refreshAuth(token, now());
      this.drive();
      return call(token);
    }
  }

  /** Opens the first session; rejects if it cannot be opened over any transport. */
  start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.firstOpen = { resolve, reject };
      this.session.start(now());
      this.drive();
    });
  }

  // ------------------------------------------------------------------ driving the session

  /**
   * Carries out what the session queued: bodies to the link first (so a local close's last
   * acks precede the close), then outputs, until both queues are empty; then sets the timer.
   * Re-entrant: a listener may call the client, whose own `drive` takes what it queued.
   */
  private drive(): void {
    for (;;) {
      const transmit = this.session.pollTransmit();
      if (transmit) {
        this.write(transmit);
        continue;
      }
      const output = this.session.pollOutput();
      if (!output) break;
      this.perform(output);
    }
    this.arm();
  }

  private write({ body, ephemeral }: Transmit): void {
    const link = this.link;
    if (!link) return;
    if (ephemeral && link.sendDatagram(body)) return;
    link.send(body);
  }

  private perform(output: SessionOutput<SendWaiter>): void {
    switch (output.kind) {
      case "event":
        this.emit(output);
        if (output.name === "state") this.settleStart(output.value);
        return;
      case "sendDone":
        output.waiter.resolve(output.sent);
        return;
      case "sendFailed":
        output.waiter.reject(output.error);
        return;
      case "connect":
        void this.open();
        return;
      case "closeLink": {
        const link = this.link;
        // Dropped first: its close must not reach the session, which has moved on.
        this.link = null;
        link?.close();
        return;
      }
      case "refreshToken":
        this.refresh();
        return;
      case "maxFrameSize":
        this.link?.setMaxFrameSize(output.bytes);
        return;
    }
  }

  /** `start()` resolves with the first `open`, and rejects with a `closed` before it. */
  private settleStart({ state, error }: ClientEvents["state"]): void {
    const first = this.firstOpen;
    if (!first || (state !== "open" && state !== "closed")) return;
    this.firstOpen = null;
    if (state === "open") first.resolve();
    else first.reject(error ?? new Error("the client is closed"));
  }

  /** One timer, at the session's next deadline. */
  private arm(): void {
    const at = this.session.pollTimeout();
    if (at === this.timerAt) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = at;
    if (at === undefined) return;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = undefined;
        this.session.handleTimeout(now());
        this.drive();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, at - now())),
    );
  }

  private refresh(): void {
    const refreshToken = this.options.refreshToken;
    // The session asks only when there is a refreshToken; a synchronous throw is a failure too.
    Promise.resolve()
      .then(() => refreshToken!())
      .then(
        (token) => {
          this.session.tokenRefreshed(token, now());
          this.drive();
        },
        (err: unknown) => {
          this.session.tokenRefreshFailed(err instanceof Error ? err : new Error(String(err)), now());
          this.drive();
        },
      );
  }

  private emit(event: SessionEvent): void {
    for (const listener of this.listeners.get(event.name) ?? []) {
      try {
        (listener as Listener<typeof event.value>)(event.value);
      } catch (err) {
        // A listener's bug must not break the session.
        console.error(`haberci: a "${event.name}" listener threw`, err);
      }
    }
  }

  // ------------------------------------------------------------------ the link

  /** Opens a link over the first transport that connects; tells the session either way. */
  private async open(): Promise<void> {
    let link: Link | null = null;
    const errors: string[] = [];
    const endpoints = await this.endpoints();
    for (const transport of this.options.transports ?? ["webtransport", "websocket"]) {
      if (this.session.isClosed) return;
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
    if (!link) {
      this.session.connectFailed(new Error(`cannot connect (${errors.join("; ")})`), now());
    } else {
      // Closed meanwhile: the session answers with `closeLink`.
      this.link = link;
      this.session.linkOpened(link.transport, errors.length ? errors.join("; ") : undefined, now());
    }
    this.drive();
  }

  private openLink(transport: TransportName, endpoints: Endpoints): Promise<Link> {
    const events = {
      frame: (frame: ServerFrame) => {
        if (!link || this.link !== link) return;
        this.session.handleFrame(frame, now());
        this.drive();
      },
      closed: (why: LinkClosed) => {
        if (!link || this.link !== link) return;
        this.link = null;
        this.session.linkClosed(why, now());
        this.drive();
      },
    };
    let link: Link | null = null;
    const opened =
      transport === "webtransport"
        ? openWebTransport(
            endpoints.webTransportUrl,
            endpoints.hashes,
            this.options.webTransportTimeoutMs ?? DEFAULT_WEBTRANSPORT_TIMEOUT_MS,
            events,
          )
        : openWebSocket(endpoints.webSocketUrl, WEBSOCKET_TIMEOUT_MS, events);
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
}

/** Milliseconds until a JWT's `exp` (0 when it has none or cannot be read). */
export function tokenLifetimeMs(token: string, now = Date.now()): number {
  const expires = tokenExpiresAt(token);
  return expires === null ? 0 : expires - now;
}

export type { ErrorCodeName };
