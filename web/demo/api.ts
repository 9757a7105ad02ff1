// The HTTP API as the demo page uses it: tokens kept in sessionStorage, bearer auth, one
// refresh-and-retry on 401, errors as `ApiError` with the server's message. Shared by the chat
// (app.ts) and the social part (social.ts, notifications.ts).

export interface Tokens {
  accessToken: string;
  refreshToken: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const TOKENS_KEY = "haberci.tokens";
// A pair saved before the API's fields became camelCase (issue #15) is dropped: log in again.
const stored: Partial<Tokens> | null = JSON.parse(sessionStorage.getItem(TOKENS_KEY) ?? "null");
export let tokens: Tokens | null = stored?.accessToken && stored.refreshToken ? (stored as Tokens) : null;

export function saveTokens(next: Tokens | null): void {
  tokens = next;
  if (next) sessionStorage.setItem(TOKENS_KEY, JSON.stringify({ accessToken: next.accessToken, refreshToken: next.refreshToken }));
  else sessionStorage.removeItem(TOKENS_KEY);
}

let signedOut: () => void = () => {};
/** What to do when the refresh token is refused (the session is gone): the page logs out. */
export function onSignedOut(handler: () => void): void {
  signedOut = handler;
}

export async function api<T>(method: string, path: string, body?: unknown, retried = false): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (tokens) headers.authorization = `Bearer ${tokens.accessToken}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && tokens && !retried && !path.startsWith("/v1/auth/")) {
    await refreshTokens();
    return api<T>(method, path, body, true);
  }
  const json = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = (json as { error?: { message?: string; field?: string } } | null)?.error;
    const field = error?.field ? ` (${error.field})` : "";
    throw new ApiError(response.status, `${error?.message ?? response.statusText}${field}`);
  }
  return json as T;
}

let refreshing: Promise<string> | null = null;
/** A new access token from the refresh token (rotated on every use; one refresh at a time). */
export function refreshTokens(): Promise<string> {
  refreshing ??= (async () => {
    try {
      const next = await api<Tokens>("POST", "/v1/auth/refresh", { refreshToken: tokens?.refreshToken });
      saveTokens(next);
      return next.accessToken;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) signedOut();
      throw err;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** A path segment: usernames and ids never need it, but a typed search might. */
export const seg = encodeURIComponent;

export const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

/** An element with a class and text, the building block of the page's rendering. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
