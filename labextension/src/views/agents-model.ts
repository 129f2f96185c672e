/**
 * The Agents view's logic, kept free of the DOM so it is unit-tested without a browser: the tiers an agent
 * may get (from GET status), the rows of the agents list, the tool catalog (GET tools) grouped by kernel and
 * notebook, and the request bodies of POST agents / PATCH agents/{id}, with server errors placed by field.
 */

/** What each tier gives every agent (the server's `tools_for_agent`; the Python client's STANDARD_TOOLS). */
export const STANDARD_TOOLS: Readonly<Record<string, readonly string[]>> = {
  container: ['bash', 'read', 'write', 'edit', 'glob', 'grep', 'web_fetch', 'web_search'],
  kernel: ['python', 'read', 'write', 'edit', 'glob', 'grep']
};

/** Tools of a tier that are custom tools on the agent: a notebook tool may not take their names. */
const TIER_CUSTOM_TOOLS: Readonly<Record<string, readonly string[]>> = { kernel: ['python'] };

/** The tools of the agent toolset, in the API's order. */
export const TOOLSET_NAMES: readonly string[] = ['bash', 'edit', 'read', 'write', 'glob', 'grep', 'web_fetch', 'web_search'];

/** Both tiers' instance sizes unless the server configured others (sandboxes/sizes.py DEFAULT_SIZES). */
export const DEFAULT_SIZES: readonly string[] = ['small', 'medium', 'large'];

/** The model an agent gets when none is named (web/schemas.py DEFAULT_MODEL). */
export const DEFAULT_MODEL = 'claude-sonnet-4-5';

/** A tier as the create/edit form offers it. */
export interface TierOption {
  name: string;
  available: boolean;
  /** why it is not available (null when it is, or when the server gave no reason) */
  reason: string | null;
  /** the instance sizes an agent on it may have */
  sizes: string[];
  /** the server's default tier */
  isDefault: boolean;
  /** what the tier gives every agent */
  standardTools: readonly string[];
}

function sizesOf(tier: any): string[] | null {
  const sizes = tier?.limits?.sizes ?? tier?.sizes;
  if (Array.isArray(sizes)) {
    return sizes.map(String);
  }
  if (sizes && typeof sizes === 'object') {
    return Object.keys(sizes).sort();
  }
  return null;
}

/** The tiers of GET status, the default first, each with whether it can serve now and, if not, why. */
export function tierOptions(status: any): TierOption[] {
  const tiers: Record<string, any> = (status && typeof status.tiers === 'object' && status.tiers) || {};
  // A tier that does not list its sizes has the same names as one that does (both tiers share the setting's
  // default); the server checks the size anyway.
  const listed = Object.values(tiers).map(sizesOf).find(s => s && s.length) ?? [...DEFAULT_SIZES];
  const options = Object.entries(tiers).map(([name, t]): TierOption => {
    const available = t?.available === true;
    let reason: string | null = null;
    if (!available) {
      reason = t?.reason ?? t?.error ?? t?.image_error ?? (t?.available == null ? 'still being checked' : null);
    }
    return {
      name,
      available,
      reason: reason == null ? null : String(reason),
      sizes: sizesOf(t) ?? listed,
      isDefault: status?.default_tier === name,
      standardTools: STANDARD_TOOLS[name] ?? []
    };
  });
  return options.sort((a, b) => Number(b.isDefault) - Number(a.isDefault) || a.name.localeCompare(b.name));
}

/** The names of an agent's tools: its toolset's enabled tools, then its custom tools (client/agents.py _tool_names). */
export function agentToolNames(tools: any): string[] {
  const names: string[] = [];
  for (const tool of Array.isArray(tools) ? tools : []) {
    if (!tool || typeof tool !== 'object') {
      continue;
    }
    if (String(tool.type ?? '').startsWith('agent_toolset')) {
      const fallback = tool.default_config?.enabled;
      const configs = new Map<string, any>();
      for (const c of Array.isArray(tool.configs) ? tool.configs : []) {
        configs.set(String(c?.name), c);
      }
      for (const name of [...TOOLSET_NAMES, ...[...configs.keys()].filter(n => !TOOLSET_NAMES.includes(n))]) {
        let enabled = configs.get(name)?.enabled;
        if (enabled == null) {
          enabled = fallback ?? true;
        }
        if (enabled && !names.includes(name)) {
          names.push(name);
        }
      }
    } else if (tool.name && !names.includes(String(tool.name))) {
      names.push(String(tool.name));
    }
  }
  return names;
}

/** A notebook tool an agent has, and where it runs. */
export interface NotebookToolBinding {
  name: string;
  kernel_id: string;
  notebook: string | null;
}

/** One row of the agents list. */
export interface AgentRow {
  id: string;
  name: string;
  tier: string | null;
  size: string | null;
  model: string;
  /** the system prompt it was created with */
  system: string | null;
  tools: string[];
  notebookTools: NotebookToolBinding[];
  /** its built-in tool families and their settings (`{"web_fetch": {}, "notebook": {"mode": "edit", …}}`) */
  builtins: Record<string, Record<string, any>>;
}

/** An agent of GET agents as a row: model as its id, the tool names counted as the agent has them. */
export function agentRow(agent: any): AgentRow {
  const model = typeof agent?.model === 'string' ? agent.model : agent?.model?.id ?? '';
  const notebookTools = (Array.isArray(agent?.notebook_tools) ? agent.notebook_tools : []).map(
    (t: any): NotebookToolBinding => ({ name: String(t.name), kernel_id: String(t.kernel_id ?? ''), notebook: t.notebook ?? null })
  );
  return {
    id: String(agent?.id ?? ''),
    name: String(agent?.name ?? agent?.id ?? ''),
    tier: agent?.tier ?? null,
    size: agent?.size ?? null,
    model: String(model),
    system: typeof agent?.system === 'string' ? agent.system : null,
    tools: agentToolNames(agent?.tools),
    notebookTools,
    builtins: agent?.builtins && typeof agent.builtins === 'object' && !Array.isArray(agent.builtins) ? { ...agent.builtins } : {}
  };
}

/** A tool of the catalog a user may give an agent: a notebook tool a kernel registered. */
export interface CatalogTool {
  /** `kernel_id/name`: unique in the catalog */
  key: string;
  kernel_id: string;
  notebook: string | null;
  name: string;
  description: string;
}

/** The notebook tools of one kernel (one notebook). */
export interface ToolGroup {
  kernel_id: string;
  notebook: string | null;
  /** the notebook's path, or "kernel <id>" when the server knows no notebook for it */
  label: string;
  tools: CatalogTool[];
}

/** The tool catalog as the picker shows it. */
export interface ToolCatalog {
  groups: ToolGroup[];
  /** the server's own tools (every session has them; not picked) */
  server: { name: string; description: string }[];
}

/** The key of a notebook tool in the catalog and in a selection. */
export function toolKey(kernelId: string, name: string): string {
  return `${kernelId.toLowerCase()}/${name}`;
}

/** GET tools → the notebook tools grouped by kernel (labelled by notebook), groups and tools sorted by name. */
export function groupToolCatalog(catalog: any): ToolCatalog {
  const groups = new Map<string, ToolGroup>();
  for (const t of Array.isArray(catalog?.notebook) ? catalog.notebook : []) {
    if (!t || !t.kernel_id || !t.name) {
      continue;
    }
    const kernelId = String(t.kernel_id).toLowerCase();
    let group = groups.get(kernelId);
    if (!group) {
      const notebook = t.notebook ? String(t.notebook) : null;
      group = { kernel_id: kernelId, notebook, label: notebook ?? `kernel ${kernelId.slice(0, 8)}`, tools: [] };
      groups.set(kernelId, group);
    }
    group.tools.push({
      key: toolKey(kernelId, String(t.name)),
      kernel_id: kernelId,
      notebook: group.notebook,
      name: String(t.name),
      description: String(t.description ?? '')
    });
  }
  const sorted = [...groups.values()].sort((a, b) => a.label.localeCompare(b.label) || a.kernel_id.localeCompare(b.kernel_id));
  for (const g of sorted) {
    g.tools.sort((a, b) => a.name.localeCompare(b.name));
  }
  const server = (Array.isArray(catalog?.server) ? catalog.server : [])
    .filter((t: any) => t && t.name)
    .map((t: any) => ({ name: String(t.name), description: String(t.description ?? '') }));
  return { groups: sorted, server };
}

/** The catalog's tools by key. */
export function catalogIndex(catalog: ToolCatalog): Map<string, CatalogTool> {
  const index = new Map<string, CatalogTool>();
  for (const g of catalog.groups) {
    for (const t of g.tools) {
      index.set(t.key, t);
    }
  }
  return index;
}

/** The keys of the notebook tools an agent has now (to preselect them when editing). */
export function selectedKeys(agent: AgentRow): Set<string> {
  return new Set(agent.notebookTools.filter(t => t.kernel_id).map(t => toolKey(t.kernel_id, t.name)));
}

/** A selection's problems the server would refuse: two tools of one name, or a name the tier's own tool has. */
export function selectionProblems(keys: Iterable<string>, catalog: ToolCatalog, tier: string | null): string[] {
  const index = catalogIndex(catalog);
  const byName = new Map<string, CatalogTool[]>();
  const problems: string[] = [];
  for (const key of keys) {
    const tool = index.get(key);
    if (!tool) {
      const [kernel, name] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
      problems.push(`${name} is no longer registered by kernel ${kernel.slice(0, 8)}: run the cell that defines it, or untick it`);
      continue;
    }
    byName.set(tool.name, [...(byName.get(tool.name) ?? []), tool]);
  }
  const reserved = (tier && TIER_CUSTOM_TOOLS[tier]) || [];
  for (const [name, tools] of byName) {
    if (tools.length > 1) {
      problems.push(`${tools.length} tools are named ${name} (${tools.map(t => t.notebook ?? t.kernel_id).join(', ')}): pick one`);
    }
    if (reserved.includes(name)) {
      problems.push(`the ${tier} tier gives every agent a tool named ${name}: rename the notebook tool with @cma.tool(name=...)`);
    }
  }
  return problems;
}

/** What the create/edit form holds. */
export interface AgentFormValues {
  name: string;
  /** '' for the server's default */
  tier: string;
  /** '' for the tier's default */
  size: string;
  /** '' for the default model */
  model: string;
  system: string;
}

/** Problems the form can tell before sending, by field ('' for the form itself). */
export function checkAgentForm(values: AgentFormValues, tiers: TierOption[], creating: boolean): Record<string, string> {
  const errors: Record<string, string> = {};
  if (creating && !values.name.trim()) {
    errors.name = 'name: give the agent a name';
  } else if (values.name.length > 256) {
    errors.name = 'name: at most 256 characters';
  }
  const tier = tiers.find(t => t.name === values.tier);
  if (values.tier && !tier) {
    errors.tier = `tier: choose one of ${tiers.map(t => t.name).join(', ')}`;
  } else if (tier && !tier.available) {
    errors.tier = `tier: the ${tier.name} tier cannot serve sessions now${tier.reason ? ` (${tier.reason})` : ''}`;
  }
  if (values.size && tier && tier.sizes.length && !tier.sizes.includes(values.size)) {
    errors.size = `size: one of ${tier.sizes.join(', ')} on the ${tier.name} tier`;
  }
  if (values.model.length > 256) {
    errors.model = 'model: at most 256 characters';
  }
  return errors;
}

/** The catalog tools of a selection as POST/PATCH `notebook_tools` refs. */
function refs(keys: Iterable<string>): { kernel_id: string; name: string }[] {
  return [...keys].sort().map(key => {
    const slash = key.indexOf('/');
    return { kernel_id: key.slice(0, slash), name: key.slice(slash + 1) };
  });
}

/** The body of POST agents (web/schemas.py AgentCreate): only what the user filled in; `builtins` when any is ticked. */
export function createAgentBody(
  values: AgentFormValues,
  keys: Iterable<string>,
  builtins: Record<string, Record<string, any>> | null = null
): Record<string, unknown> {
  const body: Record<string, unknown> = { name: values.name.trim() };
  if (values.tier) {
    body.tier = values.tier;
  }
  if (values.size) {
    body.size = values.size;
  }
  if (values.model.trim()) {
    body.model = values.model.trim();
  }
  if (values.system.trim()) {
    body.system = values.system;
  }
  const tools = refs(keys);
  if (tools.length) {
    body.notebook_tools = tools;
  }
  if (builtins && Object.keys(builtins).length) {
    body.builtins = builtins;
  }
  return body;
}

/**
 * The body of PATCH agents/{id} (AgentPatch): the fields that changed, or null when nothing did. `builtins` (the whole
 * set the agent has from now on) is sent when it differs from the agent's; null leaves them as they are.
 */
export function patchAgentBody(
  agent: AgentRow,
  values: AgentFormValues,
  keys: Iterable<string>,
  builtins: Record<string, Record<string, any>> | null = null
): Record<string, unknown> | null {
  const body: Record<string, unknown> = {};
  if (values.tier && values.tier !== (agent.tier ?? '')) {
    body.tier = values.tier;
  }
  if (values.size && values.size !== (agent.size ?? '')) {
    body.size = values.size;
  }
  const now = refs(keys);
  const before = refs(selectedKeys(agent));
  if (JSON.stringify(now) !== JSON.stringify(before)) {
    body.notebook_tools = now;
  }
  if (builtins && !sameBuiltins(agent.builtins, builtins)) {
    body.builtins = builtins;
  }
  return Object.keys(body).length ? body : null;
}

/** Built-ins compared as the server stores them (key order aside). */
export function sameBuiltins(a: Record<string, any> | null | undefined, b: Record<string, any> | null | undefined): boolean {
  return canonical(a ?? {}) === canonical(b ?? {});
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) {
    return `[${value.map(canonical).join(',')}]`;
  }
  if (value && typeof value === 'object') {
    return `{${Object.keys(value as object)
      .sort()
      .map(k => `${JSON.stringify(k)}:${canonical((value as any)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}

const FIELDS = ['name', 'tier', 'size', 'model', 'system', 'description', 'metadata', 'tools', 'notebook_tools', 'builtins', 'message'];

/**
 * The form field a server message is about ('' when it is about the whole request), to show it next to it.
 * `families` are the built-in families' keys: a message that starts with one (or speaks of a built-in) is the
 * built-ins' field.
 */
export function errorField(message: string, families: readonly string[] = []): string {
  const text = message.trim();
  const lead = /^([a-z_]+)\b/.exec(text)?.[1];
  if (lead && FIELDS.includes(lead)) {
    return lead === 'tools' ? 'notebook_tools' : lead;
  }
  if ((lead && families.includes(lead)) || /\bbuilt-?ins?\b/i.test(text)) {
    return 'builtins';
  }
  if (/^the \S+ tier has no instance sizes/.test(text)) {
    return 'size';
  }
  if (/^kernel \S+ has no tool|already has a tool named/.test(text)) {
    return 'notebook_tools';
  }
  return '';
}

/** A server message (one or several problems joined by "; ") → problems by field. */
export function errorsByField(message: string, families: readonly string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of message.split(/;\s+(?=[a-z_]+\b)/)) {
    const field = errorField(part, families);
    out[field] = out[field] ? `${out[field]}; ${part}` : part;
  }
  return out;
}
