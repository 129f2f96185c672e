/**
 * A session's events as a transcript: pure functions, no DOM (unit-tested with `node --test` on lib/).
 *
 * The same reading as the Python client's `jupyter_cma/client/transcript.py`: messages, tool calls each holding
 * the result that answered it, errors, turns that ended otherwise than `end_turn`. Events are merged by id as
 * they stream in (`GET sessions/{id}/events?after=<processed_at>`), so a page read twice shows nothing twice.
 */

export type ItemKind = 'user' | 'agent' | 'thinking' | 'tool' | 'error' | 'stop' | 'terminated';

/** A content block as the API gives it (text, image, document, search_result, …). */
export interface Block {
  type: string;
  [key: string]: any;
}

/** An event as `GET sessions/{id}/events` gives it. */
export interface SessionEvent {
  id?: string;
  type: string;
  processed_at?: string | null;
  [key: string]: any;
}

/** One entry of a transcript. `key` is stable across re-reads (the event id), for incremental rendering. */
export interface TranscriptItem {
  kind: ItemKind;
  key: string;
  /** counts user messages: items before the first one are turn 0 */
  turn: number;
  text: string;
  name?: string;
  input?: unknown;
  /** a tool call's result blocks once answered; null while pending */
  result?: Block[] | null;
  isError?: boolean;
  toolType?: 'builtin' | 'custom' | 'mcp';
  server?: string | null;
  retryStatus?: string | null;
  explanation?: string | null;
}

const RESULT_KEYS: Record<string, string> = {
  'user.tool_result': 'tool_use_id',
  'user.custom_tool_result': 'custom_tool_use_id',
  'agent.tool_result': 'tool_use_id',
  'agent.mcp_tool_result': 'mcp_tool_use_id'
};
const CALLS: Record<string, 'builtin' | 'custom' | 'mcp'> = {
  'agent.tool_use': 'builtin',
  'agent.custom_tool_use': 'custom',
  'agent.mcp_tool_use': 'mcp'
};
const NOT_AN_END = new Set(['requires_action']);
const BOOKKEEPING = new Set(['session.usage', 'session.updated']);
export const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

/** The text of content blocks (a string stays as it is); other blocks are named in brackets. */
export function blocksText(content: unknown): string {
  if (content === null || content === undefined) {
    return '';
  }
  if (typeof content === 'string') {
    return content;
  }
  if (!Array.isArray(content)) {
    return String(content);
  }
  const parts: string[] = [];
  for (const block of content) {
    if (block === null || typeof block !== 'object') {
      parts.push(String(block));
    } else if (block.type === 'text') {
      parts.push(String(block.text ?? ''));
    } else if (block.type === 'search_result') {
      parts.push(blocksText(block.content));
    } else {
      parts.push(`[${block.type ?? 'block'}]`);
    }
  }
  return parts.join('\n');
}

/** The transcript of a session's events (oldest first): each call holds the result that answered it. */
export function transcriptItems(events: readonly SessionEvent[]): TranscriptItem[] {
  const out: TranscriptItem[] = [];
  const calls = new Map<string, TranscriptItem>();
  let turn = 0;
  events.forEach((event, index) => {
    const kind = event.type;
    const key = event.id ? String(event.id) : `#${index}`;
    if (kind === 'user.message') {
      turn += 1;
      out.push({ kind: 'user', key, turn, text: blocksText(event.content) });
    } else if (kind === 'agent.message') {
      out.push({ kind: 'agent', key, turn, text: blocksText(event.content) });
    } else if (kind === 'agent.thinking') {
      out.push({ kind: 'thinking', key, turn, text: '' });
    } else if (kind in CALLS) {
      const call: TranscriptItem = {
        kind: 'tool',
        key,
        turn,
        text: '',
        name: String(event.name || '?'),
        input: event.input,
        result: null,
        isError: false,
        toolType: CALLS[kind],
        server: kind === 'agent.mcp_tool_use' ? event.mcp_server_name ?? null : null
      };
      out.push(call);
      if (event.id) {
        calls.set(String(event.id), call);
      }
    } else if (kind in RESULT_KEYS) {
      const call = calls.get(String(event[RESULT_KEYS[kind]]));
      if (call && call.result === null) {
        // the first answer stands, as upstream
        const content = event.content;
        call.result =
          typeof content === 'string' ? [{ type: 'text', text: content }] : Array.isArray(content) ? [...content] : [];
        call.isError = Boolean(event.is_error);
      }
    } else if (kind === 'user.tool_confirmation' && event.result !== undefined && event.result !== null && event.result !== 'allow') {
      const call = calls.get(String(event.tool_use_id));
      if (call && call.result === null) {
        call.result = [{ type: 'text', text: String(event.deny_message || 'denied') }];
        call.isError = true;
      }
    } else if (kind === 'session.error') {
      const error = event.error || {};
      out.push({
        kind: 'error',
        key,
        turn,
        text: String(error.message || error.type || 'error'),
        retryStatus: (error.retry_status || {}).type ?? null
      });
    } else if (kind === 'session.status_idle') {
      const reason = (event.stop_reason || {}).type;
      if (reason && reason !== 'end_turn' && !NOT_AN_END.has(reason)) {
        const details = event.stop_details || {};
        out.push({ kind: 'stop', key, turn, text: String(reason), explanation: details.explanation || details.category || null });
      }
    } else if (kind === 'session.status_terminated' || kind === 'session.deleted') {
      out.push({ kind: 'terminated', key, turn, text: kind });
    }
  });
  return out;
}

/** Where the latest turn stands (see the Python `TurnState`). */
export interface TurnState {
  state: 'none' | 'running' | 'requires_action' | 'done' | 'stopped' | 'error' | 'terminated';
  userMessages: number;
  reason: string;
  waitingFor: string[];
}

/** Where the latest turn stands: the last event decides, counting only what came after the last user message. */
export function turnState(events: readonly SessionEvent[]): TurnState {
  let lastUser = -1;
  let users = 0;
  events.forEach((e, i) => {
    if (e.type === 'user.message') {
      lastUser = i;
      users += 1;
    }
  });
  if (lastUser < 0) {
    return { state: 'none', userMessages: 0, reason: '', waitingFor: [] };
  }
  const since = events.slice(lastUser + 1);
  if (since.some(e => e.type === 'session.status_terminated' || e.type === 'session.deleted')) {
    return { state: 'terminated', userMessages: users, reason: 'the session was terminated', waitingFor: [] };
  }
  for (const e of since) {
    if (e.type === 'session.error') {
      const error = e.error || {};
      if ((error.retry_status || {}).type !== 'retrying') {
        return { state: 'error', userMessages: users, reason: String(error.message || error.type || 'session error'), waitingFor: [] };
      }
    }
  }
  const telling = since.filter(e => !BOOKKEEPING.has(e.type));
  const last = telling[telling.length - 1];
  if (last && last.type === 'session.status_idle') {
    const reason: string = (last.stop_reason || {}).type || '';
    if (reason === 'end_turn') {
      return { state: 'done', userMessages: users, reason, waitingFor: [] };
    }
    if (reason === 'requires_action') {
      const names = new Map<string, string>();
      for (const e of since) {
        if (e.type in CALLS) {
          names.set(String(e.id), String(e.name));
        }
      }
      const ids: unknown[] = (last.stop_reason || {}).event_ids || [];
      return {
        state: 'requires_action',
        userMessages: users,
        reason,
        waitingFor: ids.map(i => names.get(String(i)) ?? String(i))
      };
    }
    const details = last.stop_details || {};
    const explanation = details.explanation || details.category;
    return { state: 'stopped', userMessages: users, reason: explanation ? `${reason}: ${explanation}` : reason, waitingFor: [] };
  }
  return { state: 'running', userMessages: users, reason: '', waitingFor: [] };
}

/** Where a turn stands, in words (the same words as the Python client's). */
export function describeTurn(state: TurnState): string {
  switch (state.state) {
    case 'none':
      return 'no message yet';
    case 'running':
      return 'the agent is working';
    case 'requires_action':
      return `waiting for the result of ${state.waitingFor.join(', ') || 'a tool call'}`;
    case 'done':
      return 'idle: the turn is done';
    case 'stopped':
      return `the turn ended: ${state.reason}`;
    case 'error':
      return `error: ${state.reason}`;
    default:
      return 'terminated';
  }
}

/**
 * Events merged by id: a known event read again is replaced in place (it may have gained its `processed_at`),
 * a new one is appended. Returns the merged list and how many were new or changed.
 */
export function mergeEvents(
  known: readonly SessionEvent[],
  incoming: readonly SessionEvent[]
): { events: SessionEvent[]; changed: number } {
  const events = [...known];
  const index = new Map<string, number>();
  events.forEach((e, i) => {
    if (e.id) {
      index.set(String(e.id), i);
    }
  });
  let changed = 0;
  for (const event of incoming) {
    const id = event.id ? String(event.id) : null;
    const at = id === null ? undefined : index.get(id);
    if (at === undefined) {
      if (id !== null) {
        index.set(id, events.length);
      }
      events.push(event);
      changed += 1;
    } else if ((events[at].processed_at ?? null) !== (event.processed_at ?? null)) {
      events[at] = event;
      changed += 1;
    }
  }
  return { events, changed };
}

/**
 * The `after=` cursor for the next read: the latest `processed_at` among the events, or undefined when none was
 * processed yet. ISO timestamps with the same offset compare as strings; they are compared as dates to be safe.
 */
export function eventsCursor(events: readonly SessionEvent[]): string | undefined {
  let best: string | undefined;
  let bestTime = -Infinity;
  for (const e of events) {
    if (!e.processed_at) {
      continue;
    }
    const time = Date.parse(e.processed_at);
    if (Number.isNaN(time)) {
      continue;
    }
    // Equal milliseconds: the longer-precision string decides (the API gives microseconds).
    if (time > bestTime || (time === bestTime && best !== undefined && e.processed_at > best)) {
      best = e.processed_at;
      bestTime = time;
    }
  }
  return best;
}

const BASE64 = /^[A-Za-z0-9+/=\s]*$/;

/**
 * The `src` an image block may be shown with: a data: URL of an image type with base64 characters only, or an
 * http(s) URL; null for anything else (nothing but an image type and base64 can ride along into the attribute).
 */
export function imageSource(block: Block): string | null {
  const source = block.source || {};
  if (source.type === 'base64') {
    const media = String(source.media_type || '');
    const data = String(source.data || '');
    if (IMAGE_TYPES.has(media) && BASE64.test(data)) {
      const compact = data.replace(/\s+/g, '');
      if (compact.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(compact)) {
        return `data:${media};base64,${compact}`;
      }
    }
    return null;
  }
  if (source.type === 'url') {
    const url = String(source.url || '');
    if (/^https?:\/\//.test(url)) {
      return url;
    }
  }
  return null;
}

/** A value as indented JSON (a tool's input), never throwing. */
export function prettyJson(value: unknown): string {
  try {
    const text = JSON.stringify(value, null, 2);
    return text === undefined ? String(value) : text;
  } catch {
    return String(value);
  }
}

/** At most `max` characters, saying how many more there were. */
export function cut(text: string, max = 20000): string {
  return text.length <= max ? text : `${text.slice(0, max)}\n… (${text.length - max} more characters)`;
}

/** A signature of what an item shows: it is drawn again only when this changes (a call gets its result). */
export function itemSignature(item: TranscriptItem): string {
  if (item.kind === 'tool') {
    return `tool:${item.result === null || item.result === undefined ? 'pending' : item.result.length}:${item.isError ? 1 : 0}`;
  }
  return `${item.kind}:${item.text.length}`;
}
