/**
 * The Tools view's logic and the agent form's built-in tools, kept free of the DOM so they are unit-tested without a
 * browser: the catalog of GET tools (each tier's standard tools, the built-in families with their availability, the
 * notebook tools kernels registered) as the views show it; a built-in family's settings as form fields (from its
 * settings schema) and back as the `builtins` of POST/PATCH agents; an agent's built-ins as short labels; and agents'
 * notebook edits (GET notebook-edits) as rows, with what an undo changes.
 */
import { STANDARD_TOOLS } from './agents-model.js';

// ------------------------------------------------------------------ where tools run

/** Where a tool runs, in words: `sandbox`, `server`, `kernel` (a notebook's), `anthropic`. */
export function runsLabel(runs: string | null | undefined): string {
  switch (runs) {
    case 'sandbox':
      return "in the session's sandbox";
    case 'server':
      return 'in the Jupyter server';
    case 'kernel':
    case 'notebook':
      return "in its notebook's kernel";
    case 'anthropic':
    case 'upstream':
      return 'at Anthropic';
    default:
      return runs ? String(runs) : '';
  }
}

// ------------------------------------------------------------------ built-in families

/** One setting of a built-in family, as a form field. */
export interface SettingField {
  name: string;
  /** `enum`: a select; `list`: strings, comma- or line-separated; `string`, `number`, `boolean` */
  kind: 'enum' | 'list' | 'string' | 'number' | 'boolean';
  options: string[];
  /** the schema's default (null: none) */
  default: unknown;
  description: string;
  required: boolean;
}

/** A tool of a family. */
export interface FamilyTool {
  name: string;
  description: string;
  runs: string;
}

/** A built-in family as the views show it. */
export interface Family {
  key: string;
  title: string;
  summary: string;
  requires: string;
  available: boolean;
  /** why it cannot run now, and the fix; null when it can */
  reason: string | null;
  /** seconds a call may take (null: not said) */
  timeout: number | null;
  tools: FamilyTool[];
  /** its settings, as form fields (empty: it takes none) */
  settings: SettingField[];
}

/** The notebook family's settings when the catalog gives no schema for them (the spec's `{"mode", "paths"}`). */
const NOTEBOOK_FIELDS: SettingField[] = [
  {
    name: 'mode',
    kind: 'enum',
    options: ['read', 'edit'],
    default: 'read',
    description: 'read: notebook_read only; edit: notebook_edit too',
    required: false
  },
  {
    name: 'paths',
    kind: 'list',
    options: [],
    default: ['**'],
    description: "the notebooks it may open, as globs under the server's root",
    required: false
  }
];

/** A settings schema's properties as form fields (a property of a kind the form cannot edit is left to the server's default). */
export function settingFields(schema: any, family = ''): SettingField[] {
  const props = schema && typeof schema.properties === 'object' && schema.properties ? schema.properties : null;
  if (!props || !Object.keys(props).length) {
    return family === 'notebook' ? NOTEBOOK_FIELDS.map(f => ({ ...f, options: [...f.options] })) : [];
  }
  const required = new Set<string>(Array.isArray(schema.required) ? schema.required.map(String) : []);
  const fields: SettingField[] = [];
  for (const [name, raw] of Object.entries<any>(props)) {
    const p = raw && typeof raw === 'object' ? raw : {};
    const type = Array.isArray(p.type) ? p.type.find((t: string) => t !== 'null') : p.type;
    let kind: SettingField['kind'] | null = null;
    let options: string[] = [];
    if (Array.isArray(p.enum)) {
      kind = 'enum';
      options = p.enum.filter((v: unknown) => v !== null).map(String);
    } else if (type === 'array' && (!p.items || p.items.type === undefined || p.items.type === 'string')) {
      kind = 'list';
    } else if (type === 'string') {
      kind = 'string';
    } else if (type === 'integer' || type === 'number') {
      kind = 'number';
    } else if (type === 'boolean') {
      kind = 'boolean';
    }
    if (kind) {
      fields.push({
        name,
        kind,
        options,
        default: p.default === undefined ? null : p.default,
        description: String(p.description ?? p.title ?? ''),
        required: required.has(name)
      });
    }
  }
  return fields;
}

/** The `builtin` list of GET tools as families, in the server's order (an older server without it: none). */
export function builtinFamilies(catalog: any): Family[] {
  const families: Family[] = [];
  for (const f of Array.isArray(catalog?.builtin) ? catalog.builtin : []) {
    if (!f || !f.family) {
      continue;
    }
    const key = String(f.family);
    const available = f.available === true;
    families.push({
      key,
      title: String(f.title || key),
      summary: String(f.summary ?? ''),
      requires: String(f.requires ?? ''),
      available,
      reason: available ? null : String(f.reason || 'this server cannot run it now'),
      timeout: typeof f.timeout === 'number' ? f.timeout : null,
      tools: (Array.isArray(f.tools) ? f.tools : [])
        .filter((t: any) => t && t.name)
        .map((t: any) => ({ name: String(t.name), description: String(t.description ?? ''), runs: String(t.runs || 'server') })),
      settings: settingFields(f.settings_schema, key)
    });
  }
  return families;
}

/** A standard tool a tier gives every agent. */
export interface StandardToolRow {
  name: string;
  runs: string;
  available: boolean;
  reason: string | null;
  /** a remark (e.g. that it runs at Anthropic, outside this server's egress policy) */
  note: string | null;
}

/** A tier, whether it can serve now, the tools it gives every agent and the toolset's tools it turns off. */
export interface TierTools {
  tier: string;
  available: boolean;
  reason: string | null;
  tools: StandardToolRow[];
  /** the toolset's tools the tier does not give (e.g. the kernel tier's bash) */
  off: string[];
}

/** The `standard` list of GET tools by tier (an older server without it: what each tier is known to give). */
export function standardTiers(catalog: any): TierTools[] {
  const listed = Array.isArray(catalog?.standard) ? catalog.standard : null;
  if (!listed) {
    return Object.entries(STANDARD_TOOLS).map(([tier, names]) => ({
      tier,
      available: true,
      reason: null,
      tools: names.map(name => ({ name, runs: 'sandbox', available: true, reason: null, note: null })),
      off: []
    }));
  }
  return listed
    .filter((t: any) => t && t.tier)
    .map((t: any): TierTools => {
      const available = t.available !== false;
      const tools: StandardToolRow[] = [];
      const off: string[] = [];
      for (const x of Array.isArray(t.tools) ? t.tools : []) {
        if (!x || !x.name) {
          continue;
        }
        if (x.enabled === false) {
          off.push(String(x.name));
          continue;
        }
        // A tool of an unavailable tier says the tier's reason; the tier says it once.
        const own = x.available === false && available;
        tools.push({
          name: String(x.name),
          runs: String(x.runs || 'sandbox'),
          available: x.available !== false,
          reason: own ? String(x.reason || 'not available') : null,
          note: x.note ? String(x.note) : null
        });
      }
      return { tier: String(t.tier), available, reason: available ? null : String(t.reason || 'not available on this machine'), tools, off };
    });
}

/** Where a family's tools run and how long a call may take: "runs in the Jupyter server · 60 s per call". */
export function familyFacts(family: Family): string {
  const parts = ['runs in the Jupyter server'];
  if (family.timeout !== null) {
    parts.push(`${family.timeout} s per call`);
  }
  return parts.join(' · ');
}

// ------------------------------------------------------------------ the agent form's built-ins

/** What the form holds for one family: ticked or not, and its settings' raw values (text, or a checkbox's state). */
export interface BuiltinChoice {
  enabled: boolean;
  values: Record<string, string | boolean>;
}

export type BuiltinChoices = Record<string, BuiltinChoice>;

/** Strings of a list field: split on commas and new lines, trimmed, empty ones dropped. */
export function parseList(text: string): string[] {
  return text
    .split(/[\n,]/)
    .map(s => s.trim())
    .filter(Boolean);
}

/** A setting's value as the form shows it. */
function fieldText(field: SettingField, value: unknown): string | boolean {
  if (field.kind === 'boolean') {
    return value === true;
  }
  if (value === null || value === undefined) {
    return '';
  }
  if (field.kind === 'list') {
    return Array.isArray(value) ? value.map(String).join(', ') : String(value);
  }
  return String(value);
}

/** A family's form values from settings (the agent's, when editing), each missing one from the schema's default. */
export function choiceValues(family: Family, settings: Record<string, any> | null | undefined): Record<string, string | boolean> {
  const values: Record<string, string | boolean> = {};
  for (const field of family.settings) {
    const given = settings && Object.prototype.hasOwnProperty.call(settings, field.name) ? settings[field.name] : undefined;
    let value = fieldText(field, given === undefined ? field.default : given);
    if (field.kind === 'enum' && value === '' && field.options.length) {
      value = field.options[0];
    }
    values[field.name] = value;
  }
  return values;
}

/** The form's choices for every family: an agent's built-ins ticked with their settings (all unticked for a new agent). */
export function initialChoices(families: Family[], builtins: Record<string, any> | null | undefined): BuiltinChoices {
  const choices: BuiltinChoices = {};
  const have = builtins && typeof builtins === 'object' ? builtins : {};
  for (const family of families) {
    const enabled = Object.prototype.hasOwnProperty.call(have, family.key);
    choices[family.key] = { enabled, values: choiceValues(family, enabled ? have[family.key] : null) };
  }
  return choices;
}

/** One family's settings from its form values; problems (by setting) when a value cannot be sent. */
export function familySettings(family: Family, values: Record<string, string | boolean>): { settings: Record<string, any>; problems: string[] } {
  const settings: Record<string, any> = {};
  const problems: string[] = [];
  for (const field of family.settings) {
    const raw = values[field.name];
    if (field.kind === 'boolean') {
      settings[field.name] = raw === true;
      continue;
    }
    const text = typeof raw === 'string' ? raw.trim() : '';
    if (field.kind === 'list') {
      const items = parseList(text);
      if (items.length) {
        settings[field.name] = items;
      } else if (field.required || field.name === 'paths') {
        problems.push(`${family.key}: give at least one ${field.name === 'paths' ? 'path glob (e.g. ** for every notebook)' : field.name}`);
      }
    } else if (!text) {
      if (field.required) {
        problems.push(`${family.key}: give ${field.name}`);
      }
    } else if (field.kind === 'number') {
      const n = Number(text);
      if (!Number.isFinite(n)) {
        problems.push(`${family.key}: ${field.name} must be a number`);
      } else {
        settings[field.name] = n;
      }
    } else if (field.kind === 'enum' && field.options.length && !field.options.includes(text)) {
      problems.push(`${family.key}: ${field.name} is one of ${field.options.join(', ')}`);
    } else {
      settings[field.name] = text;
    }
  }
  return { settings, problems };
}

/**
 * The `builtins` of POST/PATCH agents from the form, and what the server would refuse: a ticked family this server
 * cannot run (its reason), a setting that cannot be sent. `keep` names families the agent has already: one of them
 * that became unavailable is not a problem of the form (the server keeps what it stored).
 */
export function builtinsBody(
  choices: BuiltinChoices,
  families: Family[],
  keep: Iterable<string> = []
): { builtins: Record<string, Record<string, any>>; problems: string[] } {
  const builtins: Record<string, Record<string, any>> = {};
  const problems: string[] = [];
  const had = new Set(keep);
  const known = new Map(families.map(f => [f.key, f]));
  for (const [key, choice] of Object.entries(choices)) {
    if (!choice.enabled) {
      continue;
    }
    const family = known.get(key);
    if (!family) {
      problems.push(`${key}: this server has no such built-in any more; untick it`);
      continue;
    }
    if (!family.available && !had.has(key)) {
      problems.push(`${key}: ${family.reason}`);
    }
    const { settings, problems: bad } = familySettings(family, choice.values);
    problems.push(...bad);
    builtins[key] = settings;
  }
  return { builtins, problems };
}

/** An agent's `builtins` as short labels: "web_fetch", "notebook (edit: reports/**)". */
export function builtinLabels(builtins: unknown): string[] {
  if (!builtins || typeof builtins !== 'object' || Array.isArray(builtins)) {
    return [];
  }
  return Object.keys(builtins as object)
    .sort()
    .map(key => {
      const settings = (builtins as any)[key];
      const rest: string[] = [];
      let mode: string | null = null;
      for (const [name, value] of Object.entries<any>(settings && typeof settings === 'object' ? settings : {})) {
        if (name === 'mode' && value != null) {
          mode = String(value);
        } else if (Array.isArray(value)) {
          // paths speak for themselves; other lists are named
          rest.push(name === 'paths' ? value.join(' ') : `${name} ${value.join(' ')}`);
        } else if (value === true) {
          rest.push(name);
        } else if (value !== null && value !== undefined && value !== false) {
          rest.push(`${name} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
        }
      }
      if (mode !== null) {
        return rest.length ? `${key} (${mode}: ${rest.join('; ')})` : `${key} (${mode})`;
      }
      return rest.length ? `${key} (${rest.join('; ')})` : key;
    });
}

// ------------------------------------------------------------------ notebook edits

/** An agent's notebook edit as the views show it. */
export interface EditRow {
  id: number;
  at: number | null;
  sessionId: string;
  agentId: string | null;
  path: string;
  /** what it did, in words */
  summary: string;
  undoneAt: number | null;
}

const OPS: Record<string, string> = { insert: 'inserted', replace: 'replaced', delete: 'deleted' };

function opText(op: any): string {
  if (!op || typeof op !== 'object') {
    return String(op ?? '');
  }
  const verb = OPS[String(op.op)] ?? String(op.op ?? 'changed');
  const kind = op.cell_type ? `${op.cell_type} cell` : 'cell';
  return op.index === undefined || op.index === null ? `${verb} a ${kind}` : `${verb} ${kind} ${op.index}`;
}

/** An edit's summary (what the server recorded: text, or operations with their cell indexes) in words. */
export function editSummary(summary: unknown): string {
  if (summary === null || summary === undefined) {
    return '';
  }
  if (typeof summary === 'string') {
    return summary;
  }
  if (Array.isArray(summary)) {
    return summary.map(opText).join(', ');
  }
  if (typeof summary === 'object') {
    const s = summary as any;
    if (typeof s.text === 'string') {
      return s.text;
    }
    if (typeof s.summary === 'string') {
      return s.summary;
    }
    const ops = Array.isArray(s.operations) ? s.operations : Array.isArray(s.ops) ? s.ops : null;
    if (ops) {
      const shown = ops.slice(0, 4).map(opText);
      return ops.length > 4 ? `${shown.join(', ')} and ${ops.length - 4} more` : shown.join(', ');
    }
    if (s.op) {
      return opText(s);
    }
    return Object.entries(s)
      .map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
      .join(', ');
  }
  return String(summary);
}

/** An edit of GET notebook-edits → a row. */
export function editRow(e: any): EditRow {
  return {
    id: Number(e?.id ?? 0),
    at: typeof e?.at === 'number' ? e.at : null,
    sessionId: String(e?.session_id ?? ''),
    agentId: e?.agent_id == null ? null : String(e.agent_id),
    path: String(e?.path ?? ''),
    summary: editSummary(e?.summary),
    undoneAt: typeof e?.undone_at === 'number' ? e.undone_at : null
  };
}

/** GET notebook-edits → rows, newest first. */
export function editRows(answer: any): EditRow[] {
  return (Array.isArray(answer?.data) ? answer.data : Array.isArray(answer) ? answer : [])
    .map(editRow)
    .filter((r: EditRow) => r.id > 0)
    .sort((a: EditRow, b: EditRow) => b.id - a.id);
}

/** What an undo did, until the list is read again: the edit and the later edits of that notebook are undone. */
export function markUndone(rows: readonly EditRow[], id: number, at: number): EditRow[] {
  const edit = rows.find(r => r.id === id);
  if (!edit) {
    return [...rows];
  }
  return rows.map(r => (r.path === edit.path && r.id >= id && r.undoneAt === null ? { ...r, undoneAt: at } : r));
}

/** The URL of a notebook of the server's root, in JupyterLab (lab/tree/…) or Notebook 7 (notebooks/…). */
export function notebookUrl(baseUrl: string, path: string, lab: boolean): string {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const clean = path.replace(/^\/+/, '');
  return `${base}${lab ? 'lab/tree/' : 'notebooks/'}${clean.split('/').map(encodeURIComponent).join('/')}`;
}

/** Whether a page path is JupyterLab's (links to notebooks go under lab/tree/) rather than Notebook 7's. */
export function pageInLab(pathname: string): boolean {
  return /\/lab(\/|$)/.test(pathname) || !/\/(notebooks|tree|edit|terminals|consoles)(\/|$)/.test(pathname);
}

/** The tool that edits notebooks (the `notebook` built-in), whose calls make notebook edits. */
export const NOTEBOOK_EDIT_TOOL = 'notebook_edit';

/**
 * How far a session's events went with notebook edits: its `notebook_edit` calls plus the results that answered them.
 * A view reads the session's edits again when this grows (the edit is stored during the call, before its result).
 */
export function notebookEditProgress(events: readonly { type: string; [key: string]: any }[]): number {
  const uses = new Set<string>();
  let count = 0;
  for (const e of events) {
    if (e.type === 'agent.custom_tool_use' && e.name === NOTEBOOK_EDIT_TOOL) {
      count++;
      if (e.id) {
        uses.add(String(e.id));
      }
    } else if (e.type === 'user.custom_tool_result' && uses.has(String(e.custom_tool_use_id ?? ''))) {
      count++;
    }
  }
  return count;
}
