// The one way the page talks to fusion: the public API, the key in the X-API-Key header
// (kept in this tab's sessionStorage, never in a URL), errors as the API's own `detail`.

const KEY = "fustor.key";
const SCOPE = "fustor.me"; // the key's last GET /api/v1/me answer: draw at once, then re-check

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (k) => sessionStorage.setItem(KEY, k),
  scope: () => {
    try {
      return JSON.parse(sessionStorage.getItem(SCOPE));
    } catch {
      return null;
    }
  },
  setScope: (me) => sessionStorage.setItem(SCOPE, JSON.stringify(me)),
  clear: () => {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(SCOPE);
  },
};

export class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status; // 0: fusion did not answer
    this.code = code;
  }
}

export async function api(path, { method = "GET", params, body, apiKey, signal,
  timeoutMs = 30000 } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json", "X-API-Key": apiKey ?? key.get() ?? "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // a fusion that hangs must turn into an error (and a stale marker), not a spinner
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), timeoutMs);
  const onAbort = () => timeout.abort();
  signal?.addEventListener("abort", onAbort);
  let r;
  try {
    r = await fetch(url, { method, headers, cache: "no-store", signal: timeout.signal,
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new ApiError(0, timeout.signal.aborted
      ? `fusion did not answer within ${timeoutMs / 1000} s`
      : "fusion did not answer (is it running, and is this its address?)", "unreachable");
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail
      : `${r.status} ${r.statusText || "error"}${text && !data ? `: ${text.slice(0, 200)}` : ""}`;
    throw new ApiError(r.status, detail, data?.code);
  }
  return data;
}

export const views = (v) => `/api/v1/views/${encodeURIComponent(v)}`;
export const management = "/api/v1/management";
