/**
 * The sessions table's logic: pure functions, no DOM (unit-tested with `node --test` on lib/).
 *
 * Rows come from `GET sessions` (a snapshot) and are kept current by live messages (`session.state`,
 * `session.tool`); a row is immutable, so a view redraws exactly the rows whose object changed. Live messages
 * apply idempotently: a message older than what a row already says is ignored.
 */

import type { SandboxSummary, SessionRow } from '../core/api.js';

export type { SandboxSummary, SessionRow };

export interface SessionFilter {
  /** a session state, or 'active' (any serving state); '' or undefined: any */
  state?: string;
  tier?: string;
  /** an agent id or name */
  agent?: string;
  /** words that must all appear in the row (id, title, agent, state, tier, sandbox, metadata) */
  text?: string;
}

/** A live message as the LiveClient hands it over. */
export interface LiveLike {
  kind: string;
  session_id?: string | null;
  data: any;
}

export const SERVING_STATES: readonly string[] = ['claimed', 'starting', 'running', 'idle', 'resumed'];
export const SESSION_STATES: readonly string[] = [...SERVING_STATES, 'sleeping', 'stopped', 'ended', 'failed'];
/** States `GET sessions?status=` takes (the others are filtered here only). */
const SERVER_STATES = new Set(['claimed', 'starting', 'running', 'idle', 'sleeping', 'resumed', 'stopped', 'failed']);
const AGENT_ID = /^agent_[A-Za-z0-9]+$/;

export type AgentNames = ReadonlyMap<string, string>;

/** A row's last lifecycle change (unix seconds; 0 when the row lacks it). */
export function updatedAt(row: SessionRow): number {
  return typeof row.updated_at === 'number' ? row.updated_at : 0;
}

/** When the row's session was created (unix seconds; 0 when the row lacks it). */
export function createdAt(row: SessionRow): number {
  return typeof row.created_at === 'number' ? row.created_at : 0;
}

/** Tool calls of the sandbox serving the session now (null when none serves it). */
export function toolCalls(row: SessionRow): number | null {
  return row.sandbox ? row.sandbox.tool_calls ?? 0 : null;
}

/** The agent as a row shows it: its name when known, else its id. */
export function agentLabel(row: SessionRow, names: AgentNames): string {
  if (!row.agent_id) {
    return '';
  }
  return names.get(row.agent_id) || row.agent_id;
}

/** When the session last did something: its sandbox's latest tool result, else its last lifecycle change. */
export function lastActivity(row: SessionRow): number {
  const tool = row.sandbox?.last_activity ?? null;
  const updated = updatedAt(row);
  return tool !== null && tool > updated ? tool : updated;
}

/** How the session's sandbox is isolated: the live sandbox's, else what its tier implies ('' when unknown). */
export function isolationOf(row: SessionRow): string {
  if (row.sandbox?.isolation) {
    return row.sandbox.isolation;
  }
  return row.tier === 'container' ? 'container' : '';
}

/** Whether a sandbox of this server serves the session now (its state is a serving one). */
export function isServing(row: SessionRow): boolean {
  return SERVING_STATES.includes(row.status);
}

/** Whether a row passes the filter. */
export function matchesFilter(row: SessionRow, filter: SessionFilter, names: AgentNames = new Map()): boolean {
  const state = filter.state || '';
  if (state === 'active' ? !SERVING_STATES.includes(row.status) : state && row.status !== state) {
    return false;
  }
  if (filter.tier && row.tier !== filter.tier) {
    return false;
  }
  const agent = (filter.agent || '').trim();
  if (agent) {
    const name = row.agent_id ? names.get(row.agent_id) : undefined;
    if (row.agent_id !== agent && (name || '').toLowerCase() !== agent.toLowerCase()) {
      return false;
    }
  }
  const words = (filter.text || '').toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length) {
    const haystack = searchText(row, names);
    if (!words.every(w => haystack.includes(w))) {
      return false;
    }
  }
  return true;
}

function searchText(row: SessionRow, names: AgentNames): string {
  const parts: unknown[] = [row.id, row.title, row.agent_id, agentLabel(row, names), row.status, row.tier, row.reason];
  if (row.sandbox) {
    parts.push(row.sandbox.start, row.sandbox.isolation, row.sandbox.state);
  }
  for (const [k, v] of Object.entries(row.metadata || {})) {
    parts.push(`${k}=${v}`);
  }
  return parts
    .filter(p => p !== null && p !== undefined && p !== '')
    .join(' ')
    .toLowerCase();
}

export type SortKey =
  | 'agent'
  | 'tier'
  | 'isolation'
  | 'state'
  | 'start'
  | 'cold_start'
  | 'age'
  | 'tool_calls'
  | 'last_activity';

export interface Sort {
  key: SortKey;
  descending: boolean;
}

export const DEFAULT_SORT: Sort = { key: 'last_activity', descending: true };

function sortValue(row: SessionRow, key: SortKey, names: AgentNames): string | number {
  switch (key) {
    case 'agent':
      return agentLabel(row, names).toLowerCase();
    case 'tier':
      return row.tier || '';
    case 'isolation':
      return isolationOf(row);
    case 'state':
      return row.status;
    case 'start':
      return row.sandbox?.start || '';
    case 'cold_start':
      return row.cold_start_ms ?? -1;
    case 'age':
      return -createdAt(row); // the oldest first when descending: an age grows as created_at shrinks
    case 'tool_calls':
      return toolCalls(row) ?? -1;
    default:
      return lastActivity(row);
  }
}

/** The rows in this order; ties keep the most recently active first, then the id, so the order is stable. */
export function sortSessions(rows: Iterable<SessionRow>, sort: Sort = DEFAULT_SORT, names: AgentNames = new Map()): SessionRow[] {
  const sign = sort.descending ? -1 : 1;
  return [...rows].sort((a, b) => {
    const x = sortValue(a, sort.key, names);
    const y = sortValue(b, sort.key, names);
    if (x < y) {
      return -sign;
    }
    if (x > y) {
      return sign;
    }
    const activity = lastActivity(b) - lastActivity(a);
    return activity !== 0 ? activity : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
}

/** The rows a table shows: filtered, sorted, at most `max` (the count before the cap is `total`). */
export function visibleSessions(
  rows: Iterable<SessionRow>,
  filter: SessionFilter,
  options: { sort?: Sort; names?: AgentNames; max?: number } = {}
): { rows: SessionRow[]; total: number } {
  const names = options.names ?? new Map();
  const matching = [...rows].filter(r => matchesFilter(r, filter, names));
  const sorted = sortSessions(matching, options.sort ?? DEFAULT_SORT, names);
  const max = options.max ?? 500;
  return { rows: sorted.slice(0, max), total: sorted.length };
}

/** The query of `GET sessions` for a filter: what the server can filter is asked of it (the rest is filtered here). */
export function snapshotQuery(filter: SessionFilter, limit = 200): Record<string, string | number | undefined> {
  const query: Record<string, string | number | undefined> = { limit: Math.max(1, Math.min(500, Math.floor(limit))) };
  const state = filter.state || '';
  if (state === 'active') {
    query.status = SERVING_STATES.join(',');
  } else if (SERVER_STATES.has(state)) {
    query.status = state;
  }
  if (filter.tier === 'kernel' || filter.tier === 'container') {
    query.tier = filter.tier;
  }
  const agent = (filter.agent || '').trim();
  if (AGENT_ID.test(agent)) {
    query.agent_id = agent;
  }
  return query;
}

export type LiveResult = 'changed' | 'unchanged' | 'unknown';

/**
 * A live message applied to the rows (replacing the row object that changed). `unknown`: the message names a
 * session the rows lack — a placeholder row was added from what the message says; refetch to fill it in.
 */
export function applyLive(rows: Map<string, SessionRow>, message: LiveLike): LiveResult {
  const data = message.data || {};
  if (message.kind === 'session.state') {
    const id = String(data.id || message.session_id || '');
    if (!id || typeof data.state !== 'string') {
      return 'unchanged';
    }
    const at = typeof data.at === 'number' ? data.at : Date.now() / 1000;
    const row = rows.get(id);
    if (!row) {
      rows.set(id, {
        id,
        agent_id: data.agent_id ?? null,
        status: data.state,
        tier: data.tier ?? null,
        title: null,
        created_at: at,
        updated_at: at,
        cold_start_ms: null,
        sandbox: null
      });
      return 'unknown';
    }
    if (at < updatedAt(row) || (at === updatedAt(row) && row.status === data.state)) {
      return 'unchanged'; // older than the row, or the same news again
    }
    const serving = SERVING_STATES.includes(data.state);
    rows.set(id, {
      ...row,
      status: data.state,
      updated_at: at,
      tier: data.tier ?? row.tier,
      agent_id: data.agent_id ?? row.agent_id,
      sandbox: serving ? row.sandbox : null
    });
    return 'changed';
  }
  if (message.kind === 'session.tool') {
    const id = String(data.session_id || message.session_id || '');
    const row = rows.get(id);
    if (!row) {
      return id ? 'unknown' : 'unchanged';
    }
    const sandbox: SandboxSummary = row.sandbox ?? { state: 'busy', start: null, isolation: null, tool_calls: 0, last_activity: null };
    const known = sandbox.tool_calls ?? 0;
    const calls = typeof data.tool_calls === 'number' ? Math.max(known, data.tool_calls) : known + 1;
    const at = typeof data.at === 'number' ? Math.max(sandbox.last_activity ?? 0, data.at) : sandbox.last_activity ?? null;
    const coldStart = typeof data.cold_start_ms === 'number' ? data.cold_start_ms : row.cold_start_ms ?? null;
    if (row.sandbox && calls === known && at === (sandbox.last_activity ?? null) && coldStart === (row.cold_start_ms ?? null)) {
      return 'unchanged';
    }
    rows.set(id, { ...row, cold_start_ms: coldStart, sandbox: { ...sandbox, tool_calls: calls, last_activity: at } });
    return 'changed';
  }
  return 'unchanged';
}

/**
 * A fresh snapshot merged with what live messages said meanwhile: the snapshot's rows, except that a row a live
 * message made newer keeps its newer state (and the larger tool count). A row missing from the snapshot stays
 * only if a live message touched it while the snapshot was on its way (`touched`: those sessions' ids), since
 * the snapshot may have been read before that session existed.
 */
export function mergeSnapshot(
  current: ReadonlyMap<string, SessionRow>,
  snapshot: readonly SessionRow[],
  touched: ReadonlySet<string> = new Set()
): Map<string, SessionRow> {
  const merged = new Map<string, SessionRow>();
  for (const fresh of snapshot) {
    const known = current.get(fresh.id);
    let row = fresh;
    if (known && updatedAt(known) > updatedAt(fresh)) {
      row = { ...row, status: known.status, updated_at: known.updated_at, sandbox: known.sandbox ?? null };
    }
    if (known?.sandbox && row.sandbox && (known.sandbox.tool_calls ?? 0) > (row.sandbox.tool_calls ?? 0)) {
      row = { ...row, sandbox: { ...row.sandbox, tool_calls: known.sandbox.tool_calls, last_activity: known.sandbox.last_activity } };
    }
    // Unchanged rows keep their object, so the view redraws nothing for them.
    merged.set(fresh.id, known && sameRow(known, row) ? known : row);
  }
  for (const [id, known] of current) {
    if (!merged.has(id) && touched.has(id)) {
      merged.set(id, known);
    }
  }
  return merged;
}

/** Whether two rows show the same (a shallow comparison, the sandbox and metadata one level down). */
export function sameRow(a: SessionRow, b: SessionRow): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const key of keys) {
    const x = a[key];
    const y = b[key];
    if (x === y) {
      continue;
    }
    if (x && y && typeof x === 'object' && typeof y === 'object') {
      if (JSON.stringify(x) === JSON.stringify(y)) {
        continue;
      }
    }
    return false;
  }
  return true;
}

/** The agent ids the rows name that `names` lacks (fetch the agents again when there are some). */
export function unknownAgents(rows: Iterable<SessionRow>, names: AgentNames): string[] {
  const missing = new Set<string>();
  for (const row of rows) {
    if (row.agent_id && !names.has(row.agent_id)) {
      missing.add(row.agent_id);
    }
  }
  return [...missing];
}

/** The filter as traits / options may give it, cleaned: unknown states and tiers dropped, text trimmed. */
export function cleanFilter(filter: Partial<Record<keyof SessionFilter, unknown>>): SessionFilter {
  const text = (v: unknown) => (typeof v === 'string' ? v.trim() : '');
  const state = text(filter.state);
  const tier = text(filter.tier);
  return {
    state: state === 'active' || SESSION_STATES.includes(state) ? state : '',
    tier: tier === 'kernel' || tier === 'container' ? tier : '',
    agent: text(filter.agent),
    text: text(filter.text)
  };
}
