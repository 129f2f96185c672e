/**
 * CmaApi: one typed method per REST route of `{base_url}cma/api/` the frontends use (docs/rest-api.md).
 *
 * The types name the fields the views read; every row also keeps the server's other fields (index signatures),
 * so a view can show a field added later without a change here.
 */
import { apiPath, errorFromResponse, Query, Transport } from './transport.js';

// ------------------------------------------------------------------ shapes

/** A page of rows: `next_before` (sessions, egress log, webhooks), `next_page` (events), `next_after` (egress ?after=). */
export interface Page<T> {
  data: T[];
  next_before?: number | null;
  next_page?: string | null;
  next_after?: number | null;
}

/** `GET status` (docs/rest-api.md#the-status). */
export interface Status {
  version: string;
  mode: 'poll' | 'webhook' | string;
  ready: boolean;
  missing: string[];
  errors: string[];
  default_tier?: string;
  tiers: Record<string, { available: boolean; [key: string]: any }>;
  sessions: { live: number; sandboxes_started: number; [key: string]: any };
  egress?: { enforced?: boolean; [key: string]: any };
  [key: string]: any;
}

/** One check of `GET setup`. */
export interface SetupCheck {
  id: string;
  ok: boolean;
  severity: 'error' | 'warning';
  title: string;
  problem: string | null;
  fix: string | null;
  command: string | null;
  docs: string | null;
}

/** `GET setup` and `POST setup/emulator`. */
export interface SetupState {
  ready: boolean;
  mode: 'poll' | 'webhook' | string;
  emulator: { running: boolean; owned: boolean; url: string | null };
  can_start_emulator: boolean;
  checks: SetupCheck[];
}

/** An agent (Anthropic's agent object plus the tier stored here). */
export interface Agent {
  id: string;
  name: string;
  tier?: string | null;
  size?: string | null;
  model?: any;
  system?: string | null;
  description?: string | null;
  tools?: any[];
  version?: number;
  /** the built-in tool families it has, each with its settings (`{"web_fetch": {}, "notebook": {"mode": "edit", …}}`) */
  builtins?: BuiltinSettings;
  [key: string]: any;
}

/** An agent's built-in tool families: family key → that family's settings (`{}` when it takes none). */
export type BuiltinSettings = Record<string, Record<string, any>>;

/** `POST agents`. */
export interface AgentCreate {
  name: string;
  tier?: string;
  size?: string;
  model?: string | { id: string; [key: string]: any };
  system?: string;
  description?: string;
  metadata?: Record<string, string>;
  tools?: Array<{ type: 'custom'; name: string; description: string; input_schema: Record<string, any> }>;
  notebook_tools?: NotebookToolRef[];
  /** built-in tool families to enable; the server refuses (400) an unknown or unavailable family, or bad settings */
  builtins?: BuiltinSettings;
}

/** A notebook tool a kernel registered, by kernel and name. */
export interface NotebookToolRef {
  kernel_id: string;
  name: string;
}

/** `PATCH agents/{id}`: at least one field. */
export interface AgentPatch {
  tier?: string | null;
  size?: string | null;
  notebook_tools?: NotebookToolRef[];
  /** the whole set of built-ins the agent has from now on (`{}`: none) */
  builtins?: BuiltinSettings;
}

/** A standard tool of a tier, and where it runs (`sandbox`: in the session's sandbox; `anthropic`: upstream). */
export interface StandardTool {
  name: string;
  runs?: string;
  available?: boolean;
  reason?: string | null;
  [key: string]: any;
}

/** A tool of a built-in family (it runs in the Jupyter server: `runs` is `server`). */
export interface BuiltinTool {
  name: string;
  description?: string;
  input_schema?: Record<string, any>;
  runs?: string;
  [key: string]: any;
}

/** A family of built-in tools in `GET tools`: enabled per agent, run by the Jupyter server. */
export interface BuiltinFamilyInfo {
  family: string;
  title?: string;
  summary?: string;
  /** what it needs on this server, in words */
  requires?: string;
  available: boolean;
  /** why it cannot run now, with the fix (null when available) */
  reason?: string | null;
  /** seconds a call may take */
  timeout?: number | null;
  /** the JSON schema of the settings an agent gives it */
  settings_schema?: Record<string, any>;
  tools: BuiltinTool[];
  [key: string]: any;
}

/** `GET tools`: what agents can be given — each tier's standard tools, the built-in families, the notebook tools kernels
 * registered, and the server's own tool definitions. */
export interface ToolCatalog {
  standard?: Array<{ tier: string; tools: StandardTool[]; [key: string]: any }>;
  builtin?: BuiltinFamilyInfo[];
  notebook: Array<{ kernel_id: string; name: string; description?: string; [key: string]: any }>;
  server: any;
}

/** An agent's edit of a notebook (the `notebook` built-in), with the checkpoint taken before it. Times are unix seconds. */
export interface NotebookEdit {
  id: number;
  at: number;
  session_id: string;
  agent_id: string | null;
  /** the notebook's path under the server's root */
  path: string;
  checkpoint_id: string;
  /** what the edit did (operations, cell indexes) */
  summary: any;
  /** when it was undone (null: it stands) */
  undone_at: number | null;
  [key: string]: any;
}

/** `GET notebook-edits` filters. */
export interface NotebookEditsQuery {
  session_id?: string;
  path?: string;
  limit?: number;
}

/** A live sandbox's summary in a `GET sessions` row. */
export interface SandboxSummary {
  state: string;
  start?: string | null;
  isolation?: string | null;
  tool_calls?: number;
  last_activity?: number | null;
  in_tool?: boolean;
  [key: string]: any;
}

/** A row of `GET sessions`. Times are unix seconds. */
export interface SessionRow {
  id: string;
  status: string;
  tier?: string | null;
  agent_id?: string | null;
  title?: string | null;
  created_at?: number | null;
  updated_at?: number | null;
  cold_start_ms?: number | null;
  sandbox: SandboxSummary | null;
  [key: string]: any;
}

/** `GET sessions/{id}`: the row, its transitions and the live sandbox's description. */
export interface SessionDetail extends SessionRow {
  transitions: Array<{ from_state?: string | null; to_state?: string; state?: string; at: number; reason?: string | null; [key: string]: any }>;
}

/** `GET sessions` filters. */
export interface SessionsQuery {
  /** states, e.g. ["running", "idle"] */
  status?: string[];
  agent_id?: string;
  tier?: string;
  limit?: number;
  before?: number;
}

/** `POST sessions`. */
export interface SessionCreate {
  agent_id: string;
  message?: string;
  title?: string;
  metadata?: Record<string, string>;
}

/** A session event from Anthropic's API (`processed_at` is RFC 3339). */
export interface SessionEvent {
  id: string;
  type: string;
  processed_at?: string | null;
  [key: string]: any;
}

/** `GET sessions/{id}/events` parameters. */
export interface EventsQuery {
  limit?: number;
  page?: string;
  /** an event's processed_at: only events processed after it, oldest first */
  after?: string;
}

/** A row of the egress log (also the `egress.row` live message's data). */
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
  [key: string]: any;
}

/** `GET egress/log` filters; `after` (ascending, rows with a larger id) and `before` (newest first) page. */
export interface EgressLogQuery {
  session_id?: string;
  agent_id?: string;
  host?: string;
  decision?: string;
  since?: number;
  until?: number;
  limit?: number;
  before?: number;
  after?: number;
}

/** A stored egress policy (`document` is the policy, docs/egress.md#a-policy). */
export interface PolicyRecord {
  id: string;
  error?: string | null;
  warnings?: string[];
  [key: string]: any;
}

/** `POST egress/policies/validate`. */
export interface PolicyValidation {
  valid: boolean;
  errors: any[];
  warnings: any[];
  policy: any;
}

/** `POST egress/decide`. */
export interface DecideRequest {
  url: string;
  method?: string;
  session_id?: string;
  agent_id?: string;
  metadata?: Record<string, string>;
  websocket?: boolean;
}

export interface DecideAnswer {
  decision: { [key: string]: any };
  request: { method: string; scheme: string; host: string; port: number | null; path: string | null; websocket: boolean };
  context: any;
  resolution: any;
}

/** A secret as the server lists it: never a value. */
export interface SecretInfo {
  name: string;
  created_at: number;
  updated_at: number;
  fingerprint: string;
}

/** A received webhook delivery. */
export interface Delivery {
  seq: number;
  [key: string]: any;
}

/** `POST sessions/{id}/terminal`. */
export interface TerminalInfo {
  name: string;
  url: string;
  [key: string]: any;
}

// ------------------------------------------------------------------ the client

const seg = encodeURIComponent;

/** The REST API of jupyter-cma over a Transport. Every method rejects with ApiError on a non-2xx answer. */
export class CmaApi {
  constructor(readonly transport: Transport) {}

  // status and setup
  status(): Promise<Status> {
    return this.transport.request('status');
  }
  setup(): Promise<SetupState> {
    return this.transport.request('setup');
  }
  /** Start the local emulator this server owns and serve it; answers the new setup document (409 when configured for another API). */
  startEmulator(): Promise<SetupState> {
    return this.transport.request('setup/emulator', { method: 'POST', body: {} });
  }

  // agents and tools
  agents(limit?: number): Promise<Page<Agent>> {
    return this.transport.request('agents', { query: { limit } });
  }
  agent(id: string): Promise<Agent> {
    return this.transport.request(`agents/${seg(id)}`);
  }
  createAgent(body: AgentCreate): Promise<Agent> {
    return this.transport.request('agents', { method: 'POST', body });
  }
  patchAgent(id: string, body: AgentPatch): Promise<Agent> {
    return this.transport.request(`agents/${seg(id)}`, { method: 'PATCH', body });
  }
  tools(): Promise<ToolCatalog> {
    return this.transport.request('tools');
  }

  // agents' notebook edits
  /** Agents' notebook edits, newest first; of one session or one notebook when given. */
  notebookEdits(query: NotebookEditsQuery = {}): Promise<Page<NotebookEdit>> {
    return this.transport.request('notebook-edits', { query: { session_id: query.session_id, path: query.path, limit: query.limit } });
  }
  /** Restores the notebook to the checkpoint taken before the edit (later edits of it are undone too); 409 when already undone. */
  undoNotebookEdit(id: number): Promise<{ [key: string]: any }> {
    return this.transport.request(`notebook-edits/${seg(String(id))}/undo`, { method: 'POST', body: {} });
  }

  // sessions
  sessions(query: SessionsQuery = {}): Promise<Page<SessionRow>> {
    const status = query.status && query.status.length ? query.status.join(',') : undefined;
    return this.transport.request('sessions', {
      query: { status, agent_id: query.agent_id, tier: query.tier, limit: query.limit, before: query.before }
    });
  }
  session(id: string): Promise<SessionDetail> {
    return this.transport.request(`sessions/${seg(id)}`);
  }
  createSession(body: SessionCreate): Promise<{ id: string; [key: string]: any }> {
    return this.transport.request('sessions', { method: 'POST', body });
  }
  events(id: string, query: EventsQuery = {}): Promise<Page<SessionEvent>> {
    return this.transport.request(`sessions/${seg(id)}/events`, {
      query: { limit: query.limit, page: query.page, after: query.after }
    });
  }
  sendMessage(id: string, text: string): Promise<{ session_id: string; sent: boolean }> {
    return this.transport.request(`sessions/${seg(id)}/messages`, { method: 'POST', body: { text } });
  }
  stopSession(id: string): Promise<{ id: string; stopped: boolean }> {
    return this.transport.request(`sessions/${seg(id)}/stop`, { method: 'POST', body: {} });
  }
  /** A terminal with a login shell in the session's running container (container tier). */
  openTerminal(id: string): Promise<TerminalInfo> {
    return this.transport.request(`sessions/${seg(id)}/terminal`, { method: 'POST', body: {} });
  }
  /** The session's work as notebook JSON (kernel tier). */
  async notebook(id: string): Promise<any> {
    return this.download(`sessions/${seg(id)}/notebook`).then(r => r.json());
  }

  // webhooks
  webhooks(query: { limit?: number; before?: number } = {}): Promise<Page<Delivery>> {
    return this.transport.request('webhooks', { query: { limit: query.limit, before: query.before } });
  }

  // egress
  egressLog(query: EgressLogQuery = {}): Promise<Page<EgressRow>> {
    return this.transport.request('egress/log', { query: { ...query } as Query });
  }
  /** The whole matching log as JSON lines (a download). */
  egressLogJsonl(query: Omit<EgressLogQuery, 'limit' | 'before' | 'after'> = {}): Promise<Response> {
    return this.download(apiPath('egress/log', { ...query, format: 'jsonl' } as Query));
  }
  policies(): Promise<Page<PolicyRecord>> {
    return this.transport.request('egress/policies');
  }
  policy(id: string): Promise<PolicyRecord> {
    return this.transport.request(`egress/policies/${seg(id)}`);
  }
  createPolicy(document: unknown): Promise<PolicyRecord> {
    return this.transport.request('egress/policies', { method: 'POST', body: document });
  }
  putPolicy(id: string, document: unknown): Promise<PolicyRecord> {
    return this.transport.request(`egress/policies/${seg(id)}`, { method: 'PUT', body: document });
  }
  deletePolicy(id: string): Promise<{ id: string; deleted: boolean }> {
    return this.transport.request(`egress/policies/${seg(id)}`, { method: 'DELETE' });
  }
  validatePolicy(document: unknown): Promise<PolicyValidation> {
    return this.transport.request('egress/policies/validate', { method: 'POST', body: document });
  }
  decide(body: DecideRequest): Promise<DecideAnswer> {
    return this.transport.request('egress/decide', { method: 'POST', body });
  }
  secrets(): Promise<Page<SecretInfo>> {
    return this.transport.request('egress/secrets');
  }
  putSecret(name: string, value: string): Promise<SecretInfo> {
    return this.transport.request(`egress/secrets/${seg(name)}`, { method: 'PUT', body: { value } });
  }
  deleteSecret(name: string): Promise<{ name: string; deleted: boolean }> {
    return this.transport.request(`egress/secrets/${seg(name)}`, { method: 'DELETE' });
  }

  /** A raw GET under cma/api/ that must answer 2xx (downloads). */
  async download(path: string): Promise<Response> {
    const response = await this.transport.fetchRaw(path, { method: 'GET' });
    if (!response.ok) {
      throw await errorFromResponse(response);
    }
    return response;
  }
}

/** The session states of this server (docs/how-it-works.md#session-lifecycle). */
export const SESSION_STATES = ['claimed', 'starting', 'running', 'idle', 'sleeping', 'resumed', 'stopped', 'failed'];

/** States a session does not leave: what is not "active" in the status bar and the commands. */
export const FINISHED_STATES = new Set(['stopped', 'failed']);

export function isActiveSession(row: Pick<SessionRow, 'status'>): boolean {
  return !FINISHED_STATES.has(String(row.status));
}
