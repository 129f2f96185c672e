/**
 * The Egress views' logic, kept free of the DOM so it is unit-tested without a browser: filtering and merging
 * egress log rows (REST snapshot and live `egress.row` messages, by id), the query of a filter, policy documents
 * as JSON text and the validation answer as messages, the explain answer, and secret names.
 */

/** A row of GET egress/log (egress/log.py), as the live `egress.row` message carries it too. */
export interface EgressRow {
  id: number;
  at: number;
  session_id: string | null;
  agent_id: string | null;
  method: string;
  scheme: string;
  host: string;
  port: number | null;
  path: string | null;
  status: number | null;
  bytes_up: number;
  bytes_down: number;
  duration_ms: number | null;
  decision: string;
  rule: string | null;
}

/** The decisions a row can have (egress/log.py DECISIONS). */
export const DECISIONS: readonly string[] = ['allowed', 'denied', 'injected'];

/** The rows the log view keeps (and renders) at most. */
export const MAX_ROWS = 500;

/** What the log is filtered on; empty values match everything. */
export interface EgressFilter {
  host?: string;
  decision?: string;
  session?: string;
}

/** A filter with its values trimmed, the host in lower case (as the server compares it), empty ones dropped. */
export function normalizeFilter(filter: EgressFilter): EgressFilter {
  const out: EgressFilter = {};
  const host = (filter.host ?? '').trim().toLowerCase();
  const decision = (filter.decision ?? '').trim();
  const session = (filter.session ?? '').trim();
  if (host) {
    out.host = host;
  }
  if (decision) {
    out.decision = decision;
  }
  if (session) {
    out.session = session;
  }
  return out;
}

/** Whether a row passes a filter: the same exact matches the server applies to GET egress/log. */
export function rowMatches(row: EgressRow, filter: EgressFilter): boolean {
  const f = normalizeFilter(filter);
  return (
    (!f.host || (row.host ?? '').toLowerCase() === f.host) &&
    (!f.decision || row.decision === f.decision) &&
    (!f.session || row.session_id === f.session)
  );
}

/** The query of GET egress/log for a filter (also the JSON lines export's, so it exports what is shown). */
export function logQuery(filter: EgressFilter, extra: Record<string, string | number | undefined> = {}): Record<string, string | number | undefined> {
  const f = normalizeFilter(filter);
  const query: Record<string, string | number | undefined> = {};
  if (f.session) {
    query.session_id = f.session;
  }
  if (f.host) {
    query.host = f.host;
  }
  if (f.decision) {
    query.decision = f.decision;
  }
  return { ...query, ...extra };
}

/** Whether something is a log row (a live message's data is checked before it is shown). */
export function isEgressRow(value: any): value is EgressRow {
  return !!value && typeof value === 'object' && Number.isInteger(value.id) && typeof value.decision === 'string';
}

/**
 * Rows merged by id (a row seen twice, from the snapshot and live, is kept once, the newer copy winning),
 * newest first (largest id), at most `cap`.
 */
export function mergeRows(existing: readonly EgressRow[], incoming: readonly EgressRow[], cap: number = MAX_ROWS): EgressRow[] {
  const byId = new Map<number, EgressRow>();
  for (const row of existing) {
    byId.set(row.id, row);
  }
  for (const row of incoming) {
    if (isEgressRow(row)) {
      byId.set(row.id, row);
    }
  }
  return [...byId.values()].sort((a, b) => b.id - a.id).slice(0, Math.max(0, cap));
}

/** The largest id among rows (the `after=` cursor of a resync), or null for none. */
export function newestId(rows: readonly EgressRow[]): number | null {
  let max: number | null = null;
  for (const row of rows) {
    if (max === null || row.id > max) {
      max = row.id;
    }
  }
  return max;
}

/** The request of a row as one line: `GET https://pypi.org/simple/` (default ports left out). */
export function rowTarget(row: EgressRow): string {
  const scheme = row.scheme || 'https';
  const host = row.host && row.host !== '-' ? row.host : '-';
  const defaultPort = (scheme === 'https' || scheme === 'wss' ? 443 : 80) === row.port;
  const port = row.port == null || defaultPort ? '' : `:${row.port}`;
  return `${row.method || '-'} ${scheme}://${host}${port}${row.path ?? ''}`;
}

/** The counts of a list of rows by decision, e.g. to label the filter. */
export function countByDecision(rows: readonly EgressRow[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const row of rows) {
    counts[row.decision] = (counts[row.decision] ?? 0) + 1;
  }
  return counts;
}

// ---------------------------------------------------------------------- policies

/** The fields of a policy document the server keeps for itself: left out when editing. */
const READ_ONLY = ['id', 'created_at', 'updated_at', 'warnings', 'error'];

/** A stored policy as the document to edit (what PUT takes), pretty-printed. */
export function policyText(record: any): string {
  const doc: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(record ?? {})) {
    if (!READ_ONLY.includes(key)) {
      doc[key] = value;
    }
  }
  return JSON.stringify(doc, null, 2);
}

/** A starting document for a new policy (egress.md's first example). */
export const NEW_POLICY_TEXT = JSON.stringify({ name: 'python packages', scope: { environment: true }, presets: ['pypi'] }, null, 2);

/** JSON text → the policy document, or what is wrong with the text (with its line and column). */
export function parsePolicyText(text: string): { doc: Record<string, unknown> } | { error: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    const pos = /position (\d+)/.exec(message);
    if (pos) {
      const offset = Number(pos[1]);
      const before = text.slice(0, offset).split('\n');
      return { error: `not valid JSON at line ${before.length}, column ${before[before.length - 1].length + 1}: ${message}` };
    }
    return { error: `not valid JSON: ${message}` };
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    return { error: 'a policy is a JSON object: {"name": …, "scope": {…}, …}' };
  }
  return { doc: value as Record<string, unknown> };
}

/** A message of a validation, shown above the Save button. */
export interface PolicyMessage {
  level: 'error' | 'warning' | 'ok';
  text: string;
}

/** POST egress/policies/validate's answer → messages: its errors, then its warnings, or that it is valid. */
export function validationMessages(result: any): PolicyMessage[] {
  const errors = (Array.isArray(result?.errors) ? result.errors : []).map((t: unknown): PolicyMessage => ({ level: 'error', text: String(t) }));
  const warnings = (Array.isArray(result?.warnings) ? result.warnings : []).map((t: unknown): PolicyMessage => ({ level: 'warning', text: String(t) }));
  if (result?.valid === false && !errors.length) {
    errors.push({ level: 'error', text: 'the server found the policy not valid' });
  }
  const out = [...errors, ...warnings];
  if (result?.valid === true) {
    out.push({ level: 'ok', text: warnings.length ? 'valid, with the warnings above' : 'valid' });
  }
  return out;
}

/** Whether messages allow saving (no error). */
export function canSave(messages: readonly PolicyMessage[]): boolean {
  return messages.length > 0 && !messages.some(m => m.level === 'error');
}

/** A policy's scope in words: `environment`, `agent agent_…`, `session sesn_…`, `metadata team=ml`. */
export function scopeLabel(scope: any): string {
  if (!scope || typeof scope !== 'object') {
    return '-';
  }
  if (scope.environment) {
    return 'environment';
  }
  if (scope.agent_id) {
    return `agent ${scope.agent_id}`;
  }
  if (scope.session_id) {
    return `session ${scope.session_id}`;
  }
  if (Array.isArray(scope.metadata)) {
    const parts = scope.metadata.map((m: any) => {
      if ('equals' in m) {
        return `${m.key}=${m.equals}`;
      }
      if ('one_of' in m) {
        return `${m.key} in [${(m.one_of ?? []).join(', ')}]`;
      }
      if ('matches' in m) {
        return `${m.key} ~ /${m.matches}/`;
      }
      return String(m.key);
    });
    return `metadata ${parts.join(', ')}`;
  }
  return JSON.stringify(scope);
}

/** A row of the policies list. */
export interface PolicyRow {
  id: string;
  name: string;
  scope: string;
  /** counts of rules, e.g. "presets 1 · allow 2 · deny 0 · inject 1" */
  summary: string;
  /** a stored policy that no longer validates (it denies everything it might concern) */
  error: string | null;
  updated_at: number | null;
}

/** GET egress/policies → rows in the server's order (most specific scope first). */
export function policyRows(data: any): PolicyRow[] {
  return (Array.isArray(data) ? data : []).map((p: any): PolicyRow => {
    const count = (k: string): number => (Array.isArray(p?.[k]) ? p[k].length : 0);
    const parts = [`presets ${count('presets')}`, `allow ${p?.allow_all ? 'all' : count('allow')}`, `deny ${count('deny')}`];
    if (count('inject')) {
      parts.push(`inject ${count('inject')}`);
    }
    if (count('private_services')) {
      parts.push(`private ${count('private_services')}`);
    }
    return {
      id: String(p?.id ?? ''),
      name: String(p?.name ?? ''),
      scope: p?.error ? '-' : scopeLabel(p?.scope),
      summary: p?.error ? '' : parts.join(' · '),
      error: p?.error ? String(p.error) : null,
      updated_at: typeof p?.updated_at === 'number' ? p.updated_at : null
    };
  });
}

// ---------------------------------------------------------------------- explain

/** What the explain form sends: POST egress/decide's body from the form's fields. */
export function decideBody(
  url: string, method: string, sessionId: string, websocket = false
): { url: string; method: string; session_id?: string; websocket?: boolean } {
  const body: { url: string; method: string; session_id?: string; websocket?: boolean } = { url: url.trim(), method: (method.trim() || 'GET').toUpperCase() };
  if (sessionId.trim()) {
    body.session_id = sessionId.trim();
  }
  if (websocket) {
    body.websocket = true;
  }
  return body;
}

/** POST egress/decide's answer, as the explain view shows it. */
export interface Explanation {
  action: string;
  allowed: boolean;
  rule: string;
  reason: string;
  status: number | null;
  request: string;
  injections: { header: string; secret: string; set: boolean | null }[];
  privateService: string | null;
  policies: { id: string; name: string; scope: string; role: string }[];
  systemAllowance: string | null;
  error: string | null;
  middleware: string[];
}

/** The decide answer → what to show: the decision, its rule, the request as read, and the policies applied. */
export function explanation(answer: any): Explanation {
  const d = answer?.decision ?? {};
  const r = answer?.request ?? {};
  const res = answer?.resolution ?? {};
  const action = String(d.action ?? '');
  const request = r.host
    ? rowTarget({
        id: 0, at: 0, session_id: null, agent_id: null, method: String(r.method ?? ''), scheme: String(r.scheme ?? ''),
        host: String(r.host), port: r.port ?? null, path: r.path ?? null, status: null, bytes_up: 0, bytes_down: 0,
        duration_ms: null, decision: '', rule: null
      })
    : '';
  return {
    action,
    allowed: action === 'allow' || action === 'allowed',
    rule: String(d.rule ?? ''),
    reason: String(d.reason ?? ''),
    status: typeof d.status === 'number' ? d.status : null,
    request: r.websocket ? `${request} (WebSocket)` : request,
    injections: (Array.isArray(d.injections) ? d.injections : []).map((i: any) => ({
      header: String(i.header ?? ''), secret: String(i.secret ?? ''), set: typeof i.secret_set === 'boolean' ? i.secret_set : null
    })),
    privateService: d.private_service ? `${d.private_service.name} → ${d.private_service.target}` : null,
    policies: (Array.isArray(res.policies) ? res.policies : []).map((p: any) => ({
      id: String(p.id ?? ''), name: String(p.name ?? ''), scope: scopeLabel(p.scope), role: String(p.role ?? '')
    })),
    systemAllowance: res.system_allowance ?? null,
    error: res.error ? `${res.error.rule}: ${res.error.reason}` : null,
    middleware: Array.isArray(res.middleware) ? res.middleware.map(String) : []
  };
}

// ---------------------------------------------------------------------- secrets

const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

/** What is wrong with a secret name (egress/secrets.py check_name), or null. */
export function secretNameProblem(name: string): string | null {
  return SECRET_NAME.test(name)
    ? null
    : "a secret name is letters, digits and '_', not starting with a digit, at most 128 characters (like GITHUB_TOKEN)";
}

/** What is wrong with a secret value before it is sent (one line of printable ASCII), or null. Never echoes it. */
export function secretValueProblem(value: string): string | null {
  const v = value.trim();
  if (!v) {
    return 'the value is empty';
  }
  if (!/^[\x20-\x7e]+$/.test(v)) {
    return 'the value must be one line of printable ASCII (it is sent in a header)';
  }
  return null;
}

/** A secret of GET egress/secrets as shown: never a value, which the API does not return anyway. */
export interface SecretRow {
  name: string;
  fingerprint: string;
  created_at: number | null;
  updated_at: number | null;
}

/** GET egress/secrets → rows by name; any field other than name, fingerprint and times is dropped. */
export function secretRows(data: any): SecretRow[] {
  return (Array.isArray(data) ? data : [])
    .map((s: any): SecretRow => ({
      name: String(s?.name ?? ''),
      fingerprint: String(s?.fingerprint ?? ''),
      created_at: typeof s?.created_at === 'number' ? s.created_at : null,
      updated_at: typeof s?.updated_at === 'number' ? s.updated_at : null
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** A fingerprint as a table shows it: its digest's first 12 characters ("hmac-sha256:0e6b…" → "0e6b…"). */
export function shortFingerprint(fingerprint: string): string {
  const digest = fingerprint.includes(':') ? fingerprint.slice(fingerprint.indexOf(':') + 1) : fingerprint;
  return digest.length > 12 ? `${digest.slice(0, 12)}…` : digest;
}
