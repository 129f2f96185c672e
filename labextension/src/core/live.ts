/**
 * The live channel's client: one websocket to `{base_url}cma/api/live` per page, shared by every view.
 *
 * Views say what they want with `listen(interest, handlers)`; the client merges all interests into one
 * `subscribe` message, fans the server's messages out to the views whose interest they match, and calls each
 * view's `resync()` whenever the view must refetch its REST snapshot: soon after it starts listening, on every
 * `hello` (connect, reconnect, a new server process), on a `gap` (the server dropped messages for this page),
 * and once the server confirmed a filter that added what the view asked for. Reconnects back off 1 s ×2 up to
 * 30 s. Nothing here imports JupyterLab, so notebook widgets and the sidebar share it.
 */
import type { Transport } from './transport.js';

/** A message of the channel (docs/rest-api.md, "Live updates"). */
export type LiveMessage = { seq: number; t: number; kind: string; session_id: string | null; data: any };

/**
 * What a view wants:
 * - `kinds`: the message kinds; null/absent for every kind.
 * - `sessions`: sessions whose `session.event` messages are wanted (they are sent for listed sessions only); the
 *   other kinds are not limited by it.
 * - `egress`: `{session_id}` for that session's `egress.row` messages only; null/absent for every row.
 */
export interface LiveFilter {
  kinds?: string[] | null;
  sessions?: string[] | null;
  egress?: { session_id?: string } | null;
}

export interface LiveHandlers {
  /** A message matching the view's interest (apply it idempotently: it may also be in the next snapshot). */
  message(m: LiveMessage): void;
  /** Refetch the REST snapshot of what the view shows. */
  resync(): void;
}

/** What the client needs of a WebSocket (the browser's, or a fake in tests). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export interface LiveClientOptions {
  /** The ws(s) URL of cma/api/live (read at each connect). */
  url: () => string;
  /** Opens a socket; the browser's WebSocket by default. */
  createSocket?: (url: string) => SocketLike;
  /** Timers (tests pass fakes). */
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (handle: any) => void;
  /** The server's cap on sessions one subscriber may watch. */
  maxSessions?: number;
  /** Milliseconds the socket stays open after the last view stopped listening. */
  linger?: number;
}

/** The `subscribe` message the server takes. */
export interface SubscribeMessage {
  op: 'subscribe';
  kinds: string[] | null;
  sessions: string[] | null;
  egress: { session_id: string } | null;
}

export const MAX_SESSIONS = 20;

/** The kinds the server sends; others in a view's interest are left out of the filter (the server would refuse it). */
export const KINDS = [
  'session.state',
  'session.event',
  'session.tool',
  'egress.row',
  'tools.changed',
  'status.changed',
  'notebook.undone'
];

/** Reconnect delay after `attempt` failed tries (0-based): 1 s, 2 s, 4 s, … at most 30 s. */
export function backoffDelay(attempt: number): number {
  return Math.min(30_000, 1000 * Math.pow(2, Math.max(0, attempt)));
}

/**
 * All views' interests as one subscribe message: the union of kinds (null when any view wants every kind), the
 * union of sessions (capped; first come first served), and an egress session only when every view that wants
 * egress rows wants that same session's.
 */
export function mergeFilters(filters: LiveFilter[], maxSessions = MAX_SESSIONS): SubscribeMessage {
  let kinds: Set<string> | null = new Set();
  const sessions: string[] = [];
  const egress = new Set<string | null>();
  for (const f of filters) {
    if (f.kinds === null || f.kinds === undefined) {
      kinds = null;
    } else if (kinds) {
      f.kinds.filter(k => KINDS.includes(k)).forEach(k => kinds!.add(k));
    }
    for (const s of f.sessions ?? []) {
      if (!sessions.includes(s) && sessions.length < maxSessions) {
        sessions.push(s);
      }
    }
    if (wantsKind(f, 'egress.row')) {
      egress.add(f.egress?.session_id ?? null);
    }
  }
  const only = egress.size === 1 ? [...egress][0] : null;
  return {
    op: 'subscribe',
    kinds: kinds === null ? null : [...kinds].sort(),
    sessions: sessions.length ? sessions : null,
    egress: only ? { session_id: only } : null
  };
}

function wantsKind(f: LiveFilter, kind: string): boolean {
  return f.kinds === null || f.kinds === undefined || f.kinds.includes(kind);
}

/** Whether a message matches one view's interest (the same rules as the server's filter). */
export function matches(f: LiveFilter, m: LiveMessage): boolean {
  if (!wantsKind(f, m.kind)) {
    return false;
  }
  const sid = m.session_id ?? m.data?.session_id ?? null;
  if (m.kind === 'session.event') {
    return !!sid && (f.sessions ?? []).includes(sid);
  }
  if (m.kind === 'egress.row' && f.egress?.session_id) {
    return sid === f.egress.session_id;
  }
  return true;
}

/**
 * Runs `run` at most once at a time; calls made while it runs collapse into one more run after it ("at most one
 * request in flight per view and resource, plus one trailing request"). The returned promise settles when the
 * run that covers this call has finished. Errors go to `onError` (default: rethrown to the caller).
 */
export function coalesce(run: () => Promise<unknown>, onError?: (e: unknown) => void): () => Promise<void> {
  let running: Promise<void> | null = null;
  let trailing: Promise<void> | null = null;
  const once = async (): Promise<void> => {
    try {
      await run();
    } catch (e) {
      if (onError) {
        onError(e);
      } else {
        throw e;
      }
    }
  };
  const start = (): Promise<void> => {
    const p = once().finally(() => {
      if (running === p) {
        running = null;
      }
    });
    running = p;
    return p;
  };
  return () => {
    if (!running) {
      return start();
    }
    if (!trailing) {
      const current: Promise<void> = running;
      trailing = current
        .catch(() => undefined)
        .then(() => {
          trailing = null;
          return start();
        });
    }
    return trailing;
  };
}

interface Listener {
  interest: LiveFilter;
  handlers: LiveHandlers;
  /** resync() was asked for and waits for the server to confirm the filter that serves it */
  pending: boolean;
}

const OPEN = 1;

/** One socket per page, shared by the views (see the module's comment). */
export class LiveClient {
  /** The page's client (the first call creates it; later calls get the same one, whatever the transport). */
  static shared(transport: Transport): LiveClient {
    const g = globalThis as any;
    if (!g.__jupyterCmaLive) {
      g.__jupyterCmaLive = new LiveClient({ url: () => transport.liveUrl() });
    }
    return g.__jupyterCmaLive;
  }

  private readonly options: Required<Omit<LiveClientOptions, 'createSocket'>> & Pick<LiveClientOptions, 'createSocket'>;
  private readonly listeners = new Set<Listener>();
  private readonly connectionCallbacks = new Set<(connected: boolean) => void>();
  private socket: SocketLike | null = null;
  private _connected = false;
  private attempt = 0;
  private reconnectTimer: any = null;
  private lingerTimer: any = null;
  private filterScheduled = false;
  private sentFilter = '';
  private _epoch: string | null = null;
  private _seq = 0;
  private disposed = false;

  constructor(options: LiveClientOptions) {
    this.options = {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: h => clearTimeout(h),
      maxSessions: MAX_SESSIONS,
      linger: 10_000,
      ...options
    };
  }

  /** True between the server's `hello` and the socket's close. */
  get connected(): boolean {
    return this._connected;
  }
  /** The server process's epoch from the last `hello` (null before the first). */
  get epoch(): string | null {
    return this._epoch;
  }
  /** The last sequence number seen. */
  get seq(): number {
    return this._seq;
  }
  /** The subscribe message the views' interests merge into now. */
  get filter(): SubscribeMessage {
    return mergeFilters([...this.listeners].map(l => l.interest), this.options.maxSessions);
  }

  /** Receive the messages matching `interest`; `resync()` is called soon, then whenever a refetch is due. */
  listen(interest: LiveFilter, handlers: LiveHandlers): { dispose(): void } {
    const listener: Listener = { interest: { ...interest }, handlers, pending: true };
    this.listeners.add(listener);
    if (this.lingerTimer !== null) {
      this.options.clearTimeout(this.lingerTimer);
      this.lingerTimer = null;
    }
    this.ensureSocket();
    this.scheduleFilter();
    return {
      dispose: () => {
        if (!this.listeners.delete(listener)) {
          return;
        }
        this.scheduleFilter();
        if (this.listeners.size === 0) {
          this.startLinger();
        }
      }
    };
  }

  /** Called with true/false when the channel comes up (hello) or goes down. */
  onConnectionChange(cb: (connected: boolean) => void): { dispose(): void } {
    this.connectionCallbacks.add(cb);
    return { dispose: () => void this.connectionCallbacks.delete(cb) };
  }

  /** Reconnect now instead of waiting for the backoff (e.g. after the user fixed the server). */
  reconnect(): void {
    this.attempt = 0;
    if (this.reconnectTimer !== null) {
      this.options.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    if (!this.socket) {
      this.ensureSocket();
    }
  }

  /** Close the socket for good (tests; a page keeps its client). */
  dispose(): void {
    this.disposed = true;
    this.listeners.clear();
    this.connectionCallbacks.clear();
    for (const timer of [this.reconnectTimer, this.lingerTimer]) {
      if (timer !== null) {
        this.options.clearTimeout(timer);
      }
    }
    this.reconnectTimer = this.lingerTimer = null;
    this.closeSocket();
    const g = globalThis as any;
    if (g.__jupyterCmaLive === this) {
      delete g.__jupyterCmaLive;
    }
  }

  // ------------------------------------------------------------------ socket

  private ensureSocket(): void {
    if (this.socket || this.disposed || this.reconnectTimer !== null || this.listeners.size === 0) {
      return;
    }
    let socket: SocketLike;
    try {
      const create = this.options.createSocket ?? ((url: string) => new WebSocket(url) as unknown as SocketLike);
      socket = create(this.options.url());
    } catch {
      this.connectionFailed();
      return;
    }
    this.socket = socket;
    this.sentFilter = '';
    socket.onmessage = ev => {
      if (this.socket === socket) {
        this.onFrame(ev.data);
      }
    };
    socket.onclose = () => {
      if (this.socket === socket) {
        this.socket = null;
        this.connectionFailed();
      }
    };
    socket.onerror = () => {
      // the close event follows; it decides what happens next
    };
    socket.onopen = () => undefined;
  }

  private closeSocket(): void {
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000, 'done');
      } catch {
        // already closed
      }
    }
    this.setConnected(false);
  }

  private connectionFailed(): void {
    const wasConnected = this._connected;
    this.setConnected(false);
    if (this.disposed || this.listeners.size === 0) {
      return;
    }
    // Views that never got their first snapshot load it from REST now rather than wait for the channel.
    if (!wasConnected) {
      this.resyncPending();
    }
    const delay = backoffDelay(this.attempt++);
    this.reconnectTimer = this.options.setTimeout(() => {
      this.reconnectTimer = null;
      this.ensureSocket();
    }, delay);
  }

  private startLinger(): void {
    if (this.lingerTimer !== null) {
      return;
    }
    this.lingerTimer = this.options.setTimeout(() => {
      this.lingerTimer = null;
      if (this.listeners.size === 0) {
        if (this.reconnectTimer !== null) {
          this.options.clearTimeout(this.reconnectTimer);
          this.reconnectTimer = null;
        }
        this.closeSocket();
      }
    }, this.options.linger);
  }

  private setConnected(connected: boolean): void {
    if (this._connected === connected) {
      return;
    }
    this._connected = connected;
    for (const cb of [...this.connectionCallbacks]) {
      try {
        cb(connected);
      } catch (e) {
        console.error('jupyter-cma: a live connection callback failed', e);
      }
    }
  }

  // ------------------------------------------------------------------ frames

  /** One text frame from the server. Public for tests that drive the client without a socket. */
  onFrame(text: unknown): void {
    let frame: any;
    try {
      frame = typeof text === 'string' ? JSON.parse(text) : text;
    } catch {
      return;
    }
    if (Array.isArray(frame)) {
      for (const m of frame) {
        if (m && typeof m === 'object' && typeof m.kind === 'string') {
          this.dispatch(m as LiveMessage);
        }
      }
      return;
    }
    if (!frame || typeof frame !== 'object') {
      return;
    }
    switch (frame.kind) {
      case 'hello':
        this._epoch = typeof frame.epoch === 'string' ? frame.epoch : null;
        this._seq = Number(frame.seq) || 0;
        this.attempt = 0;
        this.setConnected(true);
        // A fresh connection has the server's default filter: send ours; every view refetches (anything may have
        // happened while it was not connected, or the server is a new process) once the server applies it, so
        // nothing published in between is missed.
        for (const l of this.listeners) {
          l.pending = true;
        }
        this.sendFilter(true);
        break;
      case 'gap':
        if (typeof frame.seq === 'number') {
          this._seq = frame.seq;
        }
        for (const l of this.listeners) {
          l.pending = false;
          this.callResync(l);
        }
        break;
      case 'subscribed':
        this.resyncPending();
        break;
      case 'error':
        console.warn(`jupyter-cma: the live channel refused a message: ${frame.message}`);
        this.resyncPending();
        break;
      default:
        break;
    }
  }

  private dispatch(m: LiveMessage): void {
    if (typeof m.seq === 'number' && m.seq > this._seq) {
      this._seq = m.seq;
    }
    for (const l of [...this.listeners]) {
      if (matches(l.interest, m)) {
        try {
          l.handlers.message(m);
        } catch (e) {
          console.error('jupyter-cma: a view failed to apply a live message', e);
        }
      }
    }
  }

  private resyncPending(): void {
    for (const l of this.listeners) {
      if (l.pending) {
        l.pending = false;
        this.callResync(l);
      }
    }
  }

  private callResync(l: Listener): void {
    try {
      l.handlers.resync();
    } catch (e) {
      console.error('jupyter-cma: a view failed to resync', e);
    }
  }

  // ------------------------------------------------------------------ the filter

  private scheduleFilter(): void {
    if (this.filterScheduled) {
      return;
    }
    this.filterScheduled = true;
    queueMicrotask(() => {
      this.filterScheduled = false;
      if (this._connected) {
        this.sendFilter(false);
      }
    });
  }

  /**
   * Sends the merged filter when it changed (or always, on a new connection). Views waiting for their first
   * snapshot resync once the server confirms it (`subscribed`); when nothing changed they resync at once.
   */
  private sendFilter(force: boolean): void {
    const message = this.filter;
    const text = JSON.stringify(message);
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) {
      return;
    }
    if (!force && text === this.sentFilter) {
      this.resyncPending();
      return;
    }
    this.sentFilter = text;
    try {
      socket.send(text);
    } catch {
      // the close event follows
    }
  }
}
