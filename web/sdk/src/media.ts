// Media over the HTTP API (`POST /v1/media`, `GET /v1/media/{id}/info`, docs in the gateway's
// `GET /v1/openapi.json`) as plain functions of an origin and a token, the `MediaRef` a media
// message carries, and a BlurHash decoder for the placeholder painted while a thumbnail loads.
// `HaberciClient.uploadMedia` / `mediaInfo` / `sendMedia` call these with the session's token.

import { ProtocolError, type MediaInfo, type MediaRef, type MessageType } from "./codec.js";

/** What an upload is stored as; also the message type that carries it. */
export type MediaKind = Exclude<MessageType, "text">;
export const MEDIA_KINDS: readonly MediaKind[] = ["image", "video", "audio", "file"];

/**
 * An upload as the API returns it. `url`, `thumbUrl` and `previewUrl` are signed links
 * relative to the gateway's origin; they work without a token (an `<img src>`) until
 * `linksExpireAt`, then `mediaInfo` gives fresh ones.
 */
export interface MediaView {
  id: string;
  kind: MediaKind;
  /** What the bytes are, decided by the server from the bytes. */
  contentType: string;
  size: number;
  /** Hex SHA-256 of the stored bytes. */
  sha256: string;
  width: number | null;
  height: number | null;
  durationMs: number | null;
  blurhash: string | null;
  filename: string | null;
  /** RFC 3339. */
  createdAt: string;
  url: string;
  /** A JPEG ≤ 320 px on a side (images and video). */
  thumbUrl: string | null;
  /** A JPEG ≤ 1280 px on a side (images and video larger than that). */
  previewUrl: string | null;
  /** RFC 3339. */
  linksExpireAt: string;
}

export interface UploadOptions {
  kind: MediaKind;
  /** Kept with the upload (files show it); the server drops any path. */
  filename?: string;
  signal?: AbortSignal;
}

/** An HTTP API refusal: the status and the server's `error.code` (e.g. `media_too_large`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The path and query of an upload. */
export function uploadPath(options: UploadOptions): string {
  if (!MEDIA_KINDS.includes(options.kind)) {
    throw new TypeError(`uploadMedia: kind must be one of ${MEDIA_KINDS.join(", ")}, not ${JSON.stringify(options.kind)}`);
  }
  const query = new URLSearchParams({ kind: options.kind });
  if (options.filename) query.set("filename", options.filename);
  return `/v1/media?${query}`;
}

/** The kind a file of this MIME type is sent as (anything not image/video/audio is a file). */
export function mediaKindOf(contentType: string): MediaKind {
  const family = contentType.split("/")[0].trim().toLowerCase();
  return family === "image" || family === "video" || family === "audio" ? family : "file";
}

/** The `MediaRef` a Send carries for an upload (the server checks it names the sender's own). */
export function mediaRefOf(media: MediaView | MediaInfo): MediaRef {
  return "mediaId" in media
    ? { mediaId: media.mediaId, contentType: media.contentType, sizeBytes: media.sizeBytes }
    : { mediaId: media.id, contentType: media.contentType, sizeBytes: media.size };
}

/** A signed link made absolute against the gateway's origin. */
export function mediaUrl(origin: string, link: string): string {
  return new URL(link, origin).toString();
}

/** Calls the HTTP API with a bearer token; JSON answers, `ApiError` on refusal. */
export async function apiRequest<T>(
  origin: string,
  token: string,
  method: string,
  path: string,
  init: { body?: BodyInit; contentType?: string; signal?: AbortSignal } = {},
): Promise<{ status: number; value: T }> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}` };
  if (init.contentType) headers["content-type"] = init.contentType;
  const response = await fetch(new URL(path, origin), { method, headers, body: init.body, signal: init.signal, cache: "no-store" });
  const json = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = (json as { error?: { code?: string; message?: string; field?: string } } | null)?.error;
    throw new ApiError(response.status, error?.code ?? String(response.status), error?.message ?? response.statusText, error?.field);
  }
  return { status: response.status, value: json as T };
}

/** `POST /v1/media`: the bytes in one request (up to the kind's limit, e.g. 20 MB for images). */
export async function uploadMedia(origin: string, token: string, file: Blob, options: UploadOptions): Promise<MediaView> {
  const path = uploadPath(options);
  const { value } = await apiRequest<MediaView>(origin, token, "POST", path, {
    body: file,
    contentType: file.type || "application/octet-stream",
    signal: options.signal,
  });
  return value;
}

/** `GET /v1/media/{id}/info`: what an upload is, with freshly signed links. */
export async function mediaInfo(origin: string, token: string, id: string): Promise<MediaView> {
  const { value } = await apiRequest<MediaView>(origin, token, "GET", `/v1/media/${encodeURIComponent(id)}/info`);
  return value;
}

// ---------------------------------------------------------------- BlurHash

const BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

function decode83(text: string): number {
  let value = 0;
  for (const c of text) {
    const digit = BASE83.indexOf(c);
    if (digit < 0) throw new ProtocolError("invalid_field", `blurhash: ${JSON.stringify(c)} is not a base-83 digit`);
    value = value * 83 + digit;
  }
  return value;
}

function srgbToLinear(value: number): number {
  const v = value / 255;
  return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
}

function linearToSrgb(value: number): number {
  const v = Math.max(0, Math.min(1, value));
  return v <= 0.0031308 ? Math.round(v * 12.92 * 255) : Math.round((1.055 * Math.pow(v, 1 / 2.4) - 0.055) * 255);
}

const signPow = (value: number, exp: number) => Math.sign(value) * Math.pow(Math.abs(value), exp);

/**
 * Decodes a BlurHash (https://blurha.sh, the public algorithm) into `width × height` RGBA
 * pixels, ready for `new ImageData(pixels, width, height)`. `punch` > 1 strengthens the
 * colours. Throws `ProtocolError("invalid_field")` on a malformed hash.
 */
export function decodeBlurhash(hash: string, width: number, height: number, punch = 1): Uint8ClampedArray<ArrayBuffer> {
  if (hash.length < 6) throw new ProtocolError("invalid_field", "blurhash: shorter than 6 characters");
  const sizeFlag = decode83(hash[0]);
  const nx = (sizeFlag % 9) + 1;
  const ny = Math.floor(sizeFlag / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) {
    throw new ProtocolError("invalid_field", `blurhash: ${nx}×${ny} components need ${4 + 2 * nx * ny} characters, not ${hash.length}`);
  }
  const maxAc = ((decode83(hash[1]) + 1) / 166) * punch;
  const colors: [number, number, number][] = [];
  const dc = decode83(hash.slice(2, 6));
  colors.push([srgbToLinear(dc >> 16), srgbToLinear((dc >> 8) & 255), srgbToLinear(dc & 255)]);
  for (let i = 1; i < nx * ny; i++) {
    const ac = decode83(hash.slice(4 + i * 2, 6 + i * 2));
    const r = Math.floor(ac / (19 * 19));
    const g = Math.floor(ac / 19) % 19;
    const b = ac % 19;
    colors.push([signPow((r - 9) / 9, 2) * maxAc, signPow((g - 9) / 9, 2) * maxAc, signPow((b - 9) / 9, 2) * maxAc]);
  }
  const pixels = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let j = 0; j < ny; j++) {
        const cy = Math.cos((Math.PI * y * j) / height);
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / width) * cy;
          const c = colors[i + j * nx];
          r += c[0] * basis;
          g += c[1] * basis;
          b += c[2] * basis;
        }
      }
      const at = 4 * (x + y * width);
      pixels[at] = linearToSrgb(r);
      pixels[at + 1] = linearToSrgb(g);
      pixels[at + 2] = linearToSrgb(b);
      pixels[at + 3] = 255;
    }
  }
  return pixels;
}
