// The service's API from the page: same origin, JSON, the API key (when set) sent as X-API-Key,
// every error turned into an ApiError carrying the service's {"error": {field, message, type}}.

const KEY = "cascade.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, field, message, type, requestId) {
    super(message);
    this.status = status;
    this.field = field;
    this.type = type;
    this.requestId = requestId;
  }

  describe() {
    const where = this.field ? `${this.field}: ` : "";
    let hint = "";
    if (this.status === 401) hint = " Set the admin key with the “API key” button (top right).";
    if (this.status === 503 && this.type === "loading") hint = " Try again in a few seconds.";
    const text = this.message.endsWith(".") ? this.message : `${this.message}.`; // not /\.\./: paths read ".../x"
    return `${this.status} · ${where}${text}${hint}`;
  }
}

export async function api(path, { method = "GET", body, text = false, raw = null, contentType } = {}) {
  const headers = { Accept: text ? "*/*" : "application/json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let payload;
  if (raw !== null) {
    payload = raw;
    headers["Content-Type"] = contentType || "text/plain; charset=utf-8";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload });
  } catch (exc) {
    throw new ApiError(0, null, `the service did not answer (${exc.message})`, "network");
  }
  if (!r.ok) {
    let err = { message: r.statusText || "request failed", field: null, type: "http" };
    try {
      const j = await r.json();
      if (j && j.error) err = j.error;
    } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, err.field, err.message, err.type, err.request_id);
  }
  return text ? r.text() : r.json();
}

export const enc = encodeURIComponent;
