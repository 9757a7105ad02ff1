// The two browser transports as one `Link`: frames out, frames in, one close. WebTransport
// carries length-delimited frames on one bidirectional stream plus datagrams for typing and
// presence; WebSocket carries one frame per binary message (docs/PROTOCOL.md, "Transports").

import {
  FrameDecoder,
  ProtocolError,
  decodeServerDatagram,
  decodeServerFrame,
  delimit,
  webSocketBody,
  DEFAULT_MAX_FRAME_SIZE,
  type ServerFrame,
} from "./codec.js";

export type TransportName = "webtransport" | "websocket";

/** Why a link ended. */
export interface LinkClosed {
  /** A frame the server sent that broke the protocol, or a transport failure. */
  error?: Error;
  /** The WebSocket close code, or the WebTransport session's close code, when known. */
  code?: number;
  reason?: string;
}

export interface LinkEvents {
  frame(frame: ServerFrame): void;
  /** Called once, when the link is gone (either side closed it, or it failed). */
  closed(why: LinkClosed): void;
}

/** One open connection to a gateway, of either transport. */
export interface Link {
  readonly transport: TransportName;
  /** Sends a frame body reliably. */
  send(body: Uint8Array): void;
  /** Sends a body as a datagram if this link has datagrams and it fits; false otherwise. */
  sendDatagram(body: Uint8Array): boolean;
  /** The max frame size the server announced (applies to received frames too). */
  setMaxFrameSize(bytes: number): void;
  /** Closes normally (WebTransport code 0, WebSocket 1000); `closed` follows. */
  close(): void;
}

/** A timeout that rejects with a clear message. */
function deadline(ms: number, what: string): { promise: Promise<never>; cancel(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not complete within ${ms} ms`)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

function hexToBytes(hex: string): Uint8Array<ArrayBuffer> {
  if (!/^([0-9a-f]{2})+$/i.test(hex)) throw new TypeError(`not a hex hash: ${hex}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Whether this environment has WebTransport at all. */
export function hasWebTransport(): boolean {
  return typeof (globalThis as { WebTransport?: unknown }).WebTransport === "function";
}

/**
 * Opens a WebTransport session on `url` and its one bidirectional stream, within
 * `timeoutMs`. `hashes` (hex SHA-256) pin a self-signed development certificate; empty for a
 * CA-issued one.
 */
export async function openWebTransport(
  url: string,
  hashes: string[],
  timeoutMs: number,
  events: LinkEvents,
): Promise<Link> {
  if (!hasWebTransport()) throw new Error("WebTransport is not available in this browser");
  const options: WebTransportOptions = {};
  if (hashes.length) {
    options.serverCertificateHashes = hashes.map((h) => ({ algorithm: "sha-256", value: hexToBytes(h) }));
  }
  const wt = new WebTransport(url, options);
  // `closed` rejects when the session fails; observed from the start so that it never goes
  // unhandled, whatever happens below.
  const closed = wt.closed.then(
    (info) => ({ code: info.closeCode, reason: info.reason }) as LinkClosed,
    (err: unknown) => ({ error: err instanceof Error ? err : new Error(String(err)) }) as LinkClosed,
  );
  const limit = deadline(timeoutMs, "WebTransport connection");
  const opened = wt.ready.then(() => wt.createBidirectionalStream());
  const failed = closed.then((why) => Promise.reject(why.error ?? new Error(`WebTransport closed: ${why.reason ?? ""}`)));
  // Whichever loses the race settles later; that must not surface as an unhandled rejection.
  for (const p of [opened, failed, limit.promise]) p.catch(() => {});
  let stream: WebTransportBidirectionalStream;
  try {
    stream = await Promise.race([opened, limit.promise, failed]);
  } catch (err) {
    try {
      wt.close();
    } catch {
      // Already failed.
    }
    throw err;
  } finally {
    limit.cancel();
  }

  const writer = stream.writable.getWriter();
  const datagrams = wt.datagrams.writable.getWriter();
  const decoder = new FrameDecoder(DEFAULT_MAX_FRAME_SIZE);
  let done = false;
  const finish = (why: LinkClosed) => {
    if (done) return;
    done = true;
    try {
      wt.close(why.error ? { closeCode: 1, reason: "protocol error" } : { closeCode: 0, reason: "" });
    } catch {
      // Already closed.
    }
    events.closed(why);
  };
  const ignore = () => {};

  void (async () => {
    const reader = stream.readable.getReader();
    try {
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) {
          decoder.end();
          finish({ reason: "stream finished" });
          return;
        }
        for (const body of decoder.push(value)) {
          const frame = decodeServerFrame(body);
          if (frame) events.frame(frame);
          if (done) return;
        }
      }
    } catch (err) {
      finish(err instanceof ProtocolError ? { error: err } : await closed);
    }
  })();
  void (async () => {
    const reader = wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end || done) return;
        const frame = decodeServerDatagram(value);
        if (frame) events.frame(frame);
      }
    } catch (err) {
      if (err instanceof ProtocolError) finish({ error: err });
    }
  })();
  void closed.then(finish);

  return {
    transport: "webtransport",
    send(body) {
      if (!done) writer.write(delimit(body)).catch(ignore);
    },
    sendDatagram(body) {
      const max = (wt.datagrams as { maxDatagramSize?: number }).maxDatagramSize ?? 1200;
      if (done || body.length > max) return false;
      datagrams.write(body as Uint8Array<ArrayBuffer>).catch(ignore);
      return true;
    },
    setMaxFrameSize(bytes) {
      decoder.maxFrameSize = bytes;
    },
    close() {
      finish({ code: 0, reason: "closed by the client" });
    },
  };
}

/** Opens a WebSocket on `url` with the protocol's subprotocol, within `timeoutMs`. */
export async function openWebSocket(url: string, timeoutMs: number, events: LinkEvents): Promise<Link> {
  const ws = new WebSocket(url, "haberci.v1");
  ws.binaryType = "arraybuffer";
  let maxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  let done = false;
  const finish = (why: LinkClosed, code = 1000) => {
    if (done) return;
    done = true;
    try {
      ws.close(code);
    } catch {
      // Already closed.
    }
    events.closed(why);
  };
  const limit = deadline(timeoutMs, "WebSocket connection");
  try {
    await Promise.race([
      new Promise<void>((resolve, reject) => {
        ws.onopen = () => resolve();
        ws.onclose = (e) => reject(new Error(`WebSocket closed before opening (${e.code})`));
      }),
      limit.promise,
    ]);
  } catch (err) {
    done = true;
    ws.close();
    throw err;
  } finally {
    limit.cancel();
  }
  if (ws.protocol !== "haberci.v1") {
    done = true;
    ws.close();
    throw new Error(`the server did not accept the haberci.v1 subprotocol (got ${JSON.stringify(ws.protocol)})`);
  }
  ws.onmessage = (e: MessageEvent<ArrayBuffer | string>) => {
    if (done) return;
    try {
      const frame = decodeServerFrame(webSocketBody(e.data, maxFrameSize));
      if (frame) events.frame(frame);
    } catch (err) {
      // A protocol error on our side: close with the code's WebSocket close code.
      const error = err as ProtocolError;
      finish({ error }, error instanceof ProtocolError ? 4000 + error.protocolCode : 1002);
    }
  };
  ws.onclose = (e) => finish({ code: e.code, reason: e.reason });
  ws.onerror = () => {
    // `onclose` follows with the code.
  };
  return {
    transport: "websocket",
    send(body) {
      if (!done && ws.readyState === WebSocket.OPEN) ws.send(body as Uint8Array<ArrayBuffer>);
    },
    sendDatagram() {
      return false;
    },
    setMaxFrameSize(bytes) {
      maxFrameSize = bytes;
    },
    close() {
      finish({ code: 1000, reason: "closed by the client" });
    },
  };
}
