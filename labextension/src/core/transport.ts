/**
 * How the views reach the server: a Transport fetches paths under `{base_url}cma/api/`.
 *
 * Two implementations: the JupyterLab one (lab/transport.ts, over ServerConnection) and `pageTransport()` here, for
 * notebook widgets, which have no JupyterLab application object: they read the page's `#jupyter-config-data`
 * (base URL, token) and send the `_xsrf` cookie back as `X-XSRFToken`, as ServerConnection does.
 * This module imports nothing from JupyterLab, so the widget bundles stay small.
 */

/** A query string's values; `undefined` and `null` leave the parameter out. */
export type Query = Record<string, string | number | boolean | null | undefined>;

/** What `Transport.request` takes besides the path. */
export interface RequestOptions {
  /** GET unless given. */
  method?: string;
  /** Sent as JSON when not undefined. */
  body?: unknown;
  query?: Query;
}

export interface Transport {
  /** fetch a path under {base_url}cma/api/ ; rejects with ApiError (status, message from the JSON body) on non-2xx */
  request(path: string, init?: RequestOptions): Promise<any>;
  /** raw Response for downloads (notebook export, JSONL); the path is under cma/api/ too, with its query string */
  fetchRaw(path: string, init?: RequestInit): Promise<Response>;
  /** ws(s) URL of cma/api/live, with ?token= when the page needs it */
  liveUrl(): string;
  /** the server's base URL ("/" or "/user/x/"), for links such as terminals/…, lab/tree/… */
  baseUrl: string;
}

/** A non-2xx answer: `status` is the HTTP status (0 when the server could not be reached), `message` the server's. */
export class ApiError extends Error {
  readonly status: number;
  /** The parsed JSON body of the answer, when it had one. */
  readonly body: unknown;

  constructor(status: number, message: string, body?: unknown) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }
}

/** `path` (relative to cma/api/, without a leading slash) with `query` appended; undefined/null values left out. */
export function apiPath(path: string, query?: Query): string {
  const clean = path.replace(/^\/+/, '');
  if (!query) {
    return clean;
  }
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) {
      params.append(key, String(value));
    }
  }
  const text = params.toString();
  if (!text) {
    return clean;
  }
  return clean + (clean.includes('?') ? '&' : '?') + text;
}

/** Joins a base URL (ends with "/" or not) and a relative path. */
export function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, '') + '/' + path.replace(/^\/+/, '');
}

/** The body of an answer: null for 204 or an empty body, parsed JSON when it parses, else the text. */
export async function readBody(response: Response): Promise<unknown> {
  if (response.status === 204) {
    return null;
  }
  const text = await response.text();
  if (!text) {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The ApiError for a non-2xx answer: the server's `{"message"}` when there is one, else the status line. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  let body: unknown = null;
  try {
    body = await readBody(response);
  } catch {
    body = null;
  }
  let message = '';
  if (body && typeof body === 'object' && typeof (body as any).message === 'string') {
    message = (body as any).message;
  } else if (typeof body === 'string' && body.length < 500 && !body.trimStart().startsWith('<')) {
    message = body;
  }
  if (!message) {
    message = `${response.status} ${response.statusText || 'error'}`.trim();
  }
  return new ApiError(response.status, message, body);
}

/** The network failure of a fetch, as an ApiError with status 0. */
export function networkError(error: unknown): ApiError {
  const why = error instanceof Error ? error.message : String(error);
  return new ApiError(0, `The Jupyter server could not be reached (${why}); check that it still runs.`);
}

/** The ws(s) URL matching an http(s) base URL (absolute), or a relative base resolved against `origin`. */
export function wsUrlFor(baseUrl: string, origin: string): string {
  const absolute = /^https?:\/\//i.test(baseUrl) ? baseUrl : joinUrl(origin, baseUrl);
  return absolute.replace(/^http/i, 'ws');
}

/** The value of the `_xsrf` cookie in a `document.cookie` string, decoded; undefined when absent. */
export function xsrfFromCookie(cookie: string): string | undefined {
  const match = cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  if (!match) {
    return undefined;
  }
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return match[1];
  }
}

/** What a page served by Jupyter says about its server (`#jupyter-config-data`). */
export interface PageConfig {
  baseUrl: string;
  wsUrl: string;
  token: string;
}

/**
 * The page's Jupyter configuration: `#jupyter-config-data` (JupyterLab, Notebook 7), falling back to the
 * classic notebook's `body[data-base-url]`, then "/".
 */
export function readPageConfig(doc: Document | undefined = (globalThis as any).document): PageConfig {
  let data: any = {};
  const el = doc?.getElementById('jupyter-config-data');
  if (el?.textContent) {
    try {
      data = JSON.parse(el.textContent);
    } catch {
      data = {};
    }
  }
  let baseUrl: string = data.baseUrl || (doc?.body?.dataset?.baseUrl ?? '') || '/';
  if (!baseUrl.endsWith('/')) {
    baseUrl += '/';
  }
  return { baseUrl, wsUrl: data.wsUrl || '', token: data.token || '' };
}

/** What `fetchTransport` needs; everything a browser page has, given explicitly so tests can supply it. */
export interface FetchTransportOptions {
  /** The server's base URL, "/" or "/user/x/" (or absolute). */
  baseUrl: string;
  /** ws(s) base URL; derived from baseUrl and `origin` when empty. */
  wsUrl?: string;
  /** A Jupyter token, sent as `Authorization: token …` (the login cookie authenticates otherwise). */
  token?: string;
  /** The XSRF token to send with each request (read per request: the cookie can change). */
  xsrf?: () => string | undefined;
  /** The page's origin, for relative base URLs. */
  origin?: string;
  /** Append ?token= to the live URL (only needed when the socket goes to another host than the page). */
  appendToken?: boolean;
  fetch?: typeof fetch;
}

/** A Transport over `fetch`, authenticated like ServerConnection: token header, XSRF header, same-origin cookies. */
export function fetchTransport(options: FetchTransportOptions): Transport {
  const origin = options.origin ?? (globalThis as any).location?.origin ?? 'http://localhost';
  const baseUrl = options.baseUrl.endsWith('/') ? options.baseUrl : options.baseUrl + '/';
  const absoluteBase = /^https?:\/\//i.test(baseUrl) ? baseUrl : joinUrl(origin, baseUrl);
  const doFetch = options.fetch ?? ((input: RequestInfo | URL, init?: RequestInit) => fetch(input, init));

  const headersFor = (init?: RequestInit): Headers => {
    const headers = new Headers(init?.headers ?? {});
    if (options.token && !headers.has('Authorization')) {
      headers.set('Authorization', `token ${options.token}`);
    }
    const xsrf = options.xsrf?.();
    if (xsrf && !headers.has('X-XSRFToken')) {
      headers.set('X-XSRFToken', xsrf);
    }
    return headers;
  };

  const fetchRaw = async (path: string, init?: RequestInit): Promise<Response> => {
    const url = joinUrl(absoluteBase, 'cma/api/' + path.replace(/^\/+/, ''));
    try {
      return await doFetch(url, { credentials: 'same-origin', cache: 'no-store', ...init, headers: headersFor(init) });
    } catch (error) {
      throw networkError(error);
    }
  };

  return {
    baseUrl,
    fetchRaw,
    async request(path: string, init?: RequestOptions): Promise<any> {
      const method = (init?.method ?? 'GET').toUpperCase();
      const headers: Record<string, string> = { Accept: 'application/json' };
      let body: string | undefined;
      if (init?.body !== undefined) {
        body = JSON.stringify(init.body);
        headers['Content-Type'] = 'application/json';
      }
      const response = await fetchRaw(apiPath(path, init?.query), { method, headers, body });
      if (!response.ok) {
        throw await errorFromResponse(response);
      }
      return readBody(response);
    },
    liveUrl(): string {
      const ws = options.wsUrl || wsUrlFor(absoluteBase, origin);
      const url = joinUrl(ws, 'cma/api/live');
      return options.appendToken && options.token ? `${url}?token=${encodeURIComponent(options.token)}` : url;
    }
  };
}

/**
 * The Transport of a page served by Jupyter (for notebook widgets): base URL and token from `#jupyter-config-data`,
 * `X-XSRFToken` from the `_xsrf` cookie. One per page, cached on globalThis.
 */
export function pageTransport(): Transport {
  const g = globalThis as any;
  if (!g.__jupyterCmaPageTransport) {
    const config = readPageConfig();
    const location = g.location;
    let appendToken = false;
    if (config.wsUrl && location?.host) {
      try {
        appendToken = new URL(config.wsUrl).host !== location.host;
      } catch {
        appendToken = false;
      }
    }
    g.__jupyterCmaPageTransport = fetchTransport({
      baseUrl: config.baseUrl,
      wsUrl: config.wsUrl,
      token: config.token,
      appendToken,
      xsrf: () => xsrfFromCookie(g.document?.cookie ?? '')
    });
  }
  return g.__jupyterCmaPageTransport;
}
