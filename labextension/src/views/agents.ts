/**
 * The Agents view: the agents of this server (GET agents), a form to create one (POST agents) or edit one (PATCH
 * agents/{id}: tier, size, notebook tools) with the tiers of GET status (those that cannot serve now are shown
 * with the reason, and cannot be chosen) and a tool picker built from GET tools (the notebook tools each kernel
 * registered, grouped by notebook) and the built-in tool families (a family this server cannot run is shown with
 * the reason and cannot be ticked; the notebook family's mode and paths), and "start a session" (POST sessions) for
 * an agent. Server errors are shown next to the field they are about. The catalog is refetched on the live channel's `tools.changed`, the tiers on
 * `status.changed`, everything on a resync. The logic is in agents-model.ts.
 */
import type { AgentCreate } from '../core/api.js';
import { button, h, message, replaceChildren } from '../core/dom.js';
import { errorMessage, plural, shortId } from '../core/format.js';
import { coalesce } from '../core/live.js';
import { ApiError } from '../core/transport.js';
import type { View, ViewContext } from '../core/view.js';
import {
  AgentFormValues,
  AgentRow,
  agentRow,
  checkAgentForm,
  createAgentBody,
  DEFAULT_MODEL,
  errorsByField,
  groupToolCatalog,
  patchAgentBody,
  selectedKeys,
  selectionProblems,
  TierOption,
  tierOptions,
  ToolCatalog
} from './agents-model.js';
import { BuiltinChoices, builtinFamilies, builtinLabels, builtinsBody, choiceValues, Family, initialChoices, SettingField } from './tools-model.js';

/** The fields of the form that can carry an error of their own ('' is the form's). */
const FORM_FIELDS = ['name', 'tier', 'size', 'model', 'system', 'notebook_tools', 'builtins', ''];

let formCount = 0;

/** What a host may give the view besides the context. */
export interface AgentsViewOptions {
  /** shows a session in the host (the sidebar's Sessions tab); when given, a started session offers "Show it" */
  showSession?(sessionId: string): void;
}

export class AgentsView implements View {
  readonly node: HTMLElement;

  private agents: AgentRow[] = [];
  private tiers: TierOption[] = [];
  private catalog: ToolCatalog = { groups: [], server: [] };
  /** the notebook tools ticked in the form, by key (kernel_id/name) */
  private selection = new Set<string>();
  /** the built-in families of the catalog, and what the form holds for each */
  private families: Family[] = [];
  private builtinChoices: BuiltinChoices = {};
  /** the agent being edited; null while creating one */
  private editing: AgentRow | null = null;
  private disposed = false;
  private readonly subscriptions: Array<{ dispose(): void }> = [];

  private readonly notice: HTMLElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly empty: HTMLElement;
  private readonly form: HTMLFormElement;
  private readonly formTitle: HTMLElement;
  private readonly nameInput: HTMLInputElement;
  private readonly tierSelect: HTMLSelectElement;
  private readonly tierNote: HTMLElement;
  private readonly sizeSelect: HTMLSelectElement;
  private readonly modelInput: HTMLInputElement;
  private readonly systemInput: HTMLTextAreaElement;
  private readonly picker: HTMLFieldSetElement;
  private readonly pickerBody: HTMLElement;
  private readonly pickerProblems: HTMLElement;
  private readonly builtinsBody: HTMLElement;
  private readonly builtinsProblems: HTMLElement;
  private readonly submitButton: HTMLButtonElement;
  private readonly errors = new Map<string, HTMLElement>();
  private readonly startArea: HTMLElement;

  private readonly loadAgents: () => Promise<void>;
  private readonly loadTools: () => Promise<void>;
  private readonly loadStatus: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly options: AgentsViewOptions = {}) {
    const id = `jp-cma-agent-form-${++formCount}`;
    this.notice = h('div', { class: 'jp-cma-agents-notice', 'aria-live': 'polite' });
    this.tbody = h('tbody');
    this.empty = h('p', { class: 'jp-cma-muted jp-cma-agents-empty', hidden: true }, 'No agents yet: create one with "New agent".');
    const table = h(
      'table',
      { class: 'jp-cma-table jp-cma-agents-table' },
      // Two columns, so the sidebar's width shows everything: the agent (name, model, actions); tier, size and tools.
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Agent'), h('th', { scope: 'col' }, 'Tier · tools'))),
      this.tbody
    );

    const errorFor = (field: string): HTMLElement => {
      const el = h('div', { class: 'jp-cma-field-error', dataset: { field: field || 'form' }, role: 'alert', hidden: true, id: `${id}-err-${field || 'form'}` });
      this.errors.set(field, el);
      return el;
    };
    const field = (name: string, label: string, control: HTMLElement, ...extra: (HTMLElement | null)[]): HTMLElement => {
      control.id = `${id}-${name}`;
      control.setAttribute('aria-describedby', `${id}-err-${name}`);
      return h('div', { class: 'jp-cma-field', dataset: { field: name } }, h('label', { for: control.id }, label), control, ...extra, errorFor(name));
    };

    this.nameInput = h('input', { type: 'text', class: 'jp-cma-agent-name', maxLength: 256, autocomplete: 'off', placeholder: 'e.g. analyst' });
    this.tierSelect = h('select', { class: 'jp-cma-agent-tier', onchange: () => this.tierChanged() });
    this.tierNote = h('div', { class: 'jp-cma-agent-tier-note jp-cma-muted' });
    this.sizeSelect = h('select', { class: 'jp-cma-agent-size' });
    this.modelInput = h('input', { type: 'text', class: 'jp-cma-agent-model', maxLength: 256, autocomplete: 'off', placeholder: DEFAULT_MODEL });
    this.systemInput = h('textarea', { class: 'jp-cma-agent-system', rows: 3, placeholder: 'You are a careful data analyst…' });
    this.pickerBody = h('div', { class: 'jp-cma-tool-picker-body' });
    this.pickerProblems = h('div', { class: 'jp-cma-tool-problems', 'aria-live': 'polite' });
    this.picker = h(
      'fieldset',
      { class: 'jp-cma-tool-picker', 'aria-describedby': `${id}-err-notebook_tools` },
      h('legend', null, 'Tools'),
      this.pickerBody,
      this.pickerProblems,
      errorFor('notebook_tools')
    );
    this.builtinsBody = h('div', { class: 'jp-cma-builtins-body' });
    this.builtinsProblems = h('div', { class: 'jp-cma-builtins-problems', 'aria-live': 'polite' });
    const builtins = h(
      'fieldset',
      { class: 'jp-cma-builtins jp-cma-field', dataset: { field: 'builtins' }, 'aria-describedby': `${id}-err-builtins` },
      h('legend', null, 'Built-in tools'),
      h('p', { class: 'jp-cma-muted jp-cma-builtins-intro' }, "They run in the Jupyter server; what they send out goes through the session's egress policy."),
      this.builtinsBody,
      this.builtinsProblems,
      errorFor('builtins')
    );
    this.formTitle = h('h3', { class: 'jp-cma-agent-form-title' }, 'New agent');
    this.submitButton = h('button', { type: 'submit', class: 'jp-cma-button jp-cma-primary jp-cma-agent-submit' }, 'Create agent');
    this.form = h(
      'form',
      { class: 'jp-cma-agent-form', hidden: true, dataset: { mode: 'create' }, 'aria-labelledby': `${id}-title`, onsubmit: (ev: Event) => this.submit(ev) },
      this.formTitle,
      field('name', 'Name', this.nameInput),
      field('tier', 'Tier', this.tierSelect, this.tierNote),
      field('size', 'Instance size', this.sizeSelect),
      field('model', 'Model', this.modelInput),
      field('system', 'System prompt', this.systemInput),
      this.picker,
      builtins,
      errorFor(''),
      h('div', { class: 'jp-cma-toolbar' }, this.submitButton, button('Cancel', () => this.closeForm(), { class: 'jp-cma-agent-cancel' }))
    );
    this.formTitle.id = `${id}-title`;
    this.startArea = h('div', { class: 'jp-cma-agent-start-area' });

    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-agents' },
      h(
        'div',
        { class: 'jp-cma-toolbar' },
        button('New agent', () => this.openCreate(), { class: ['jp-cma-primary', 'jp-cma-agent-new'] }),
        button('Refresh', () => this.refreshAll(), { class: 'jp-cma-agents-refresh', title: 'Reload agents, tiers and tools' })
      ),
      this.notice,
      this.form,
      this.startArea,
      table,
      this.empty
    );

    this.loadAgents = coalesce(() => this.fetchAgents(), e => this.say(`The agents could not be loaded: ${errorMessage(e)}`, 'error'));
    this.loadTools = coalesce(() => this.fetchTools(), e => this.say(`The tool catalog could not be loaded: ${errorMessage(e)}`, 'error'));
    this.loadStatus = coalesce(() => this.fetchStatus(), e => this.say(`The tiers could not be loaded: ${errorMessage(e)}`, 'error'));

    this.subscriptions.push(
      ctx.live.listen(
        { kinds: ['tools.changed', 'status.changed'] },
        {
          message: m => {
            if (m.kind === 'tools.changed') {
              void this.loadTools();
            } else if (m.kind === 'status.changed') {
              void this.loadStatus();
            }
          },
          resync: () => this.refreshAll()
        }
      )
    );
    this.refreshAll();
  }

  dispose(): void {
    this.disposed = true;
    this.subscriptions.forEach(s => s.dispose());
    this.subscriptions.length = 0;
    this.node.remove();
  }

  /** Reloads the agents, the tiers and the tool catalog. */
  refreshAll(): void {
    void this.loadAgents();
    void this.loadTools();
    void this.loadStatus();
  }

  // ------------------------------------------------------------------ data

  private async fetchAgents(): Promise<void> {
    const page = await this.ctx.api.agents(100);
    if (this.disposed) {
      return;
    }
    this.agents = (page.data ?? []).map(agentRow);
    this.drawAgents();
  }

  private async fetchTools(): Promise<void> {
    const catalog = await this.ctx.api.tools();
    if (this.disposed) {
      return;
    }
    this.catalog = groupToolCatalog(catalog);
    this.families = builtinFamilies(catalog);
    // A family new in the catalog starts unticked; what the form holds for the others stays.
    const fresh = initialChoices(this.families, this.editing && !this.form.hidden ? this.editing.builtins : null);
    this.builtinChoices = { ...fresh, ...this.builtinChoices };
    this.drawPicker();
    this.drawBuiltins();
  }

  private async fetchStatus(): Promise<void> {
    const status = await this.ctx.api.status();
    if (this.disposed) {
      return;
    }
    this.tiers = tierOptions(status);
    this.drawTiers();
  }

  // ------------------------------------------------------------------ the list

  private drawAgents(): void {
    const rows = this.agents.map(agent => {
      const names = agent.tools.join(', ');
      const nb = agent.notebookTools;
      return h(
        'tr',
        { class: 'jp-cma-agent-row', dataset: { agentId: agent.id } },
        h(
          'td',
          { class: 'jp-cma-agent-cell-name' },
          h('div', { class: 'jp-cma-agent-name-text', title: agent.id }, agent.name),
          h('div', { class: 'jp-cma-agent-model-text jp-cma-muted jp-cma-mono' }, agent.model || '–'),
          h(
            'div',
            { class: 'jp-cma-agent-actions' },
            button('Edit', () => this.openEdit(agent), { class: 'jp-cma-agent-edit', 'aria-label': `Edit agent ${agent.name}` }),
            button('Start session', () => this.showStart(agent), { class: 'jp-cma-agent-start-session', 'aria-label': `Start a session with ${agent.name}` })
          )
        ),
        h(
          'td',
          { class: 'jp-cma-agent-cell-tier' },
          h('div', { class: 'jp-cma-agent-tier-text' }, agent.tier ?? '–'),
          h('div', { class: 'jp-cma-muted' }, agent.size ?? 'default size'),
          h(
            'div',
            {
              class: 'jp-cma-agent-cell-tools',
              title: names + (nb.length ? `; from notebooks: ${nb.map(t => `${t.name} (${t.notebook ?? t.kernel_id})`).join(', ')}` : '')
            },
            h('span', { class: 'jp-cma-agent-tool-count' }, plural(agent.tools.length, 'tool')),
            nb.length ? h('div', { class: 'jp-cma-muted' }, `${nb.length} from notebooks`) : null
          ),
          this.builtinsCell(agent)
        )
      );
    });
    replaceChildren(this.tbody, rows);
    this.empty.hidden = this.agents.length > 0;
  }

  // ------------------------------------------------------------------ the form

  private openCreate(): void {
    this.editing = null;
    this.form.dataset.mode = 'create';
    delete this.form.dataset.agentId;
    this.formTitle.textContent = 'New agent';
    this.submitButton.textContent = 'Create agent';
    this.nameInput.value = '';
    this.modelInput.value = '';
    this.systemInput.value = '';
    for (const el of [this.nameInput, this.modelInput, this.systemInput]) {
      el.disabled = false;
    }
    this.selection = new Set();
    this.builtinChoices = initialChoices(this.families, null);
    this.clearErrors();
    this.tierSelect.value = '';
    this.sizeSelect.value = '';
    this.drawTiers();
    this.drawPicker();
    this.drawBuiltins();
    this.form.hidden = false;
    this.nameInput.focus();
  }

  private openEdit(agent: AgentRow): void {
    this.editing = agent;
    this.form.dataset.mode = 'edit';
    this.form.dataset.agentId = agent.id;
    this.formTitle.textContent = `Edit ${agent.name}`;
    this.submitButton.textContent = 'Save';
    this.nameInput.value = agent.name;
    this.modelInput.value = agent.model;
    this.systemInput.value = agent.system ?? '';
    // The API changes an agent's tier, size and notebook tools here; its name, model and prompt stay as created.
    for (const el of [this.nameInput, this.modelInput, this.systemInput]) {
      el.disabled = true;
    }
    this.selection = selectedKeys(agent);
    this.builtinChoices = initialChoices(this.families, agent.builtins);
    this.clearErrors();
    this.tierSelect.value = '';
    this.sizeSelect.value = '';
    this.drawTiers();
    this.drawPicker();
    this.drawBuiltins();
    this.form.hidden = false;
    this.tierSelect.focus();
  }

  private closeForm(): void {
    this.form.hidden = true;
    this.editing = null;
    this.clearErrors();
  }

  private values(): AgentFormValues {
    return {
      name: this.nameInput.value,
      tier: this.tierSelect.value,
      size: this.sizeSelect.value,
      model: this.editing ? '' : this.modelInput.value,
      system: this.editing ? '' : this.systemInput.value
    };
  }

  private drawTiers(): void {
    const current = this.tierSelect.value;
    const wanted =
      current || this.editing?.tier || this.tiers.find(t => t.isDefault && t.available)?.name || this.tiers.find(t => t.available)?.name || '';
    const options = this.tiers.map(t =>
      h(
        'option',
        // The agent's own tier stays choosable when editing, even while it cannot serve.
        { value: t.name, disabled: !t.available && t.name !== this.editing?.tier },
        `${t.name}${t.isDefault ? ' (default)' : ''}${t.available ? '' : ' – unavailable'}`
      )
    );
    if (!this.tiers.length) {
      options.push(h('option', { value: '' }, 'the server default'));
    }
    replaceChildren(this.tierSelect, options);
    this.tierSelect.value = wanted;
    if (this.tierSelect.value !== wanted) {
      this.tierSelect.value = this.tierSelect.options[0]?.value ?? '';
    }
    const unavailable = this.tiers.filter(t => !t.available);
    replaceChildren(
      this.tierNote,
      unavailable.map(t => h('div', { class: 'jp-cma-tier-reason', dataset: { tier: t.name } }, `${t.name}: ${t.reason ?? 'cannot serve sessions now'}`))
    );
    this.tierChanged();
  }

  private tierChanged(): void {
    const tier = this.tiers.find(t => t.name === this.tierSelect.value);
    const keep = this.sizeSelect.value || (this.editing?.size ?? '');
    const sizes = tier?.sizes ?? [];
    replaceChildren(this.sizeSelect, h('option', { value: '' }, 'default'), sizes.map(s => h('option', { value: s }, s)));
    this.sizeSelect.value = sizes.includes(keep) ? keep : '';
    this.drawPicker();
  }

  private drawPicker(): void {
    const tier = this.tiers.find(t => t.name === this.tierSelect.value);
    const standard = tier?.standardTools ?? [];
    const known = new Set<string>();
    const groups = this.catalog.groups.map(g =>
      h(
        'div',
        { class: 'jp-cma-tool-group', dataset: { kernelId: g.kernel_id }, role: 'group', 'aria-label': `Tools of ${g.label}` },
        h('div', { class: 'jp-cma-tool-group-label' }, g.label, h('span', { class: 'jp-cma-muted' }, ` · kernel ${g.kernel_id.slice(0, 8)}`)),
        g.tools.map(t => {
          known.add(t.key);
          return this.toolItem(t.key, t.name, t.description);
        })
      )
    );
    const gone = [...this.selection].filter(k => !known.has(k));
    replaceChildren(
      this.pickerBody,
      h(
        'p',
        { class: 'jp-cma-tool-standard' },
        tier ? `Every agent on the ${tier.name} tier gets: ${standard.join(', ')}.` : 'Every agent gets its tier\'s standard tools.'
      ),
      this.catalog.server.length
        ? h('p', { class: 'jp-cma-muted jp-cma-tool-server' }, `And this server's own tools: ${this.catalog.server.map(t => t.name).join(', ')}.`)
        : null,
      h('div', { class: 'jp-cma-tool-picker-title' }, 'Notebook tools'),
      groups.length
        ? groups
        : h(
            'p',
            { class: 'jp-cma-muted jp-cma-tool-none' },
            'No notebook has registered a tool. In a notebook, decorate a function with @cma.tool and run the cell: it appears here.'
          ),
      gone.length
        ? h(
            'div',
            { class: 'jp-cma-tool-group jp-cma-tool-gone', role: 'group', 'aria-label': 'No longer registered' },
            h('div', { class: 'jp-cma-tool-group-label' }, 'No longer registered'),
            gone.map(key => this.toolItem(key, key.slice(key.indexOf('/') + 1), 'its kernel no longer offers it: untick it, or run its cell again'))
          )
        : null
    );
    this.drawProblems();
  }

  private toolItem(key: string, name: string, description: string): HTMLElement {
    const box = h('input', {
      type: 'checkbox',
      class: 'jp-cma-tool-checkbox',
      value: key,
      checked: this.selection.has(key),
      dataset: { toolKey: key, toolName: name },
      onchange: () => {
        if (box.checked) {
          this.selection.add(key);
        } else {
          this.selection.delete(key);
        }
        this.drawProblems();
      }
    });
    return h(
      'label',
      { class: 'jp-cma-tool', dataset: { toolKey: key } },
      box,
      h('span', { class: 'jp-cma-tool-name jp-cma-mono' }, name),
      description ? h('span', { class: 'jp-cma-tool-desc jp-cma-muted' }, description) : null
    );
  }

  private drawProblems(): string[] {
    const problems = selectionProblems(this.selection, this.catalog, this.tierSelect.value || null);
    replaceChildren(this.pickerProblems, problems.map(p => message(p, 'warn')));
    return problems;
  }

  private clearErrors(): void {
    for (const el of this.errors.values()) {
      el.hidden = true;
      el.textContent = '';
    }
    for (const name of FORM_FIELDS) {
      this.form.querySelector(`[data-field="${name}"]`)?.classList.remove('jp-cma-invalid');
    }
  }

  private showErrors(errors: Record<string, string>): void {
    this.clearErrors();
    for (const [field, text] of Object.entries(errors)) {
      const el = this.errors.get(FORM_FIELDS.includes(field) ? field : '') ?? this.errors.get('')!;
      el.textContent = el.textContent ? `${el.textContent}; ${text}` : text;
      el.hidden = false;
      this.form.querySelector(`.jp-cma-field[data-field="${field}"]`)?.classList.add('jp-cma-invalid');
    }
  }

  private async submit(ev: Event): Promise<void> {
    ev.preventDefault();
    const values = this.values();
    const editing = this.editing;
    const errors = checkAgentForm(values, this.tiers, !editing);
    const problems = this.drawProblems();
    if (problems.length) {
      errors.notebook_tools = 'fix the tool selection first (see above)';
    }
    const built = this.builtinsForSubmit();
    if (built.problems.length) {
      errors.builtins = built.problems.join('; ');
    }
    if (Object.keys(errors).length) {
      this.showErrors(errors);
      return;
    }
    this.clearErrors();
    this.submitButton.disabled = true;
    try {
      if (editing) {
        const body = patchAgentBody(editing, values, this.selection, built.builtins);
        if (!body) {
          this.closeForm();
          this.say(`Nothing to change on ${editing.name}.`, 'info');
          return;
        }
        const agent = agentRow(await this.ctx.api.patchAgent(editing.id, body));
        if (this.disposed) {
          return;
        }
        this.agents = this.agents.map(a => (a.id === agent.id ? agent : a));
        this.drawAgents();
        this.closeForm();
        this.say(`Saved ${agent.name}.`, 'info');
      } else {
        // POST agents takes `notebook_tools` (web/schemas.py AgentCreate) beside the fields AgentCreate names.
        const created = await this.ctx.api.createAgent(createAgentBody(values, this.selection, built.builtins) as unknown as AgentCreate);
        if (this.disposed) {
          return;
        }
        const agent = agentRow(created);
        this.agents = [agent, ...this.agents.filter(a => a.id !== agent.id)];
        this.drawAgents();
        this.closeForm();
        this.say(`Created ${agent.name} (${agent.id}).`, 'info');
        this.showStart(agent);
        void this.loadAgents();
      }
    } catch (error) {
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        this.showErrors(errorsByField(error.message, this.families.map(f => f.key)));
      } else {
        this.showErrors({ '': `The server did not take it: ${errorMessage(error)}` });
      }
    } finally {
      this.submitButton.disabled = false;
    }
  }

  // ------------------------------------------------------------------ built-in tools

  /** The agents table's line of an agent's built-ins (none: nothing). */
  private builtinsCell(agent: AgentRow): HTMLElement | null {
    const labels = builtinLabels(agent.builtins);
    if (!labels.length) {
      return null;
    }
    return h(
      'div',
      { class: 'jp-cma-agent-builtins', dataset: { builtins: Object.keys(agent.builtins).sort().join(' ') }, title: 'Built-in tools (run in the Jupyter server)' },
      'built-in: ',
      labels.map((label, i) => [i ? ', ' : '', h('span', { class: 'jp-cma-mono jp-cma-agent-builtin' }, label)])
    );
  }

  /** The `builtins` to send (null: the catalog lists no family, so the agent's stay as they are) and their problems. */
  private builtinsForSubmit(): { builtins: Record<string, Record<string, any>> | null; problems: string[] } {
    if (!this.families.length) {
      return { builtins: null, problems: [] };
    }
    const { builtins, problems } = builtinsBody(this.builtinChoices, this.families, Object.keys(this.editing?.builtins ?? {}));
    return { builtins, problems };
  }

  private drawBuiltins(): void {
    const had = new Set(Object.keys(this.editing?.builtins ?? {}));
    const rows = this.families.map(family => {
      const choice = (this.builtinChoices[family.key] ??= { enabled: false, values: choiceValues(family, null) });
      // A family this server cannot run is not offered, except to leave it off an agent that has it.
      const offered = family.available || had.has(family.key);
      const boxId = `${this.form.getAttribute('aria-labelledby')}-builtin-${family.key}`;
      const box = h('input', {
        type: 'checkbox',
        id: boxId,
        class: 'jp-cma-builtin-checkbox',
        checked: choice.enabled,
        disabled: !offered,
        dataset: { family: family.key },
        title: family.available ? '' : family.reason ?? '',
        onchange: () => {
          choice.enabled = box.checked;
          this.drawBuiltins();
        }
      });
      return h(
        'div',
        { class: ['jp-cma-builtin', !family.available && 'jp-cma-builtin-unavailable'], dataset: { family: family.key, available: String(family.available) } },
        h(
          'label',
          { class: 'jp-cma-tool', for: boxId, title: family.available ? family.summary : family.reason ?? '' },
          box,
          h('span', null, h('span', { class: 'jp-cma-builtin-title' }, family.title), ' ', h('span', { class: 'jp-cma-mono jp-cma-muted' }, family.key)),
          h('span', { class: 'jp-cma-tool-desc jp-cma-muted' }, family.tools.map(t => t.name).join(', '))
        ),
        family.available ? null : h('div', { class: 'jp-cma-builtin-reason', role: 'note' }, `Unavailable: ${family.reason}`),
        choice.enabled && family.settings.length
          ? h(
              'div',
              { class: 'jp-cma-builtin-settings' },
              family.settings.map(field => this.settingControl(family, field, choice.values))
            )
          : null
      );
    });
    replaceChildren(
      this.builtinsBody,
      rows.length ? rows : h('p', { class: 'jp-cma-muted jp-cma-builtins-none' }, 'This server offers no built-in tools.')
    );
    const { problems } = this.builtinsForSubmit();
    replaceChildren(this.builtinsProblems, problems.map(p => message(p, 'warn')));
  }

  private settingControl(family: Family, field: SettingField, values: Record<string, string | boolean>): HTMLElement {
    const id = `${this.form.getAttribute('aria-labelledby')}-builtin-${family.key}-${field.name}`;
    const common = { id, class: 'jp-cma-builtin-setting', dataset: { family: family.key, setting: field.name } };
    let control: HTMLInputElement | HTMLSelectElement;
    if (field.kind === 'enum') {
      control = h(
        'select',
        { ...common, onchange: () => (values[field.name] = control.value) },
        field.options.map(o => h('option', { value: o }, o))
      );
      control.value = String(values[field.name] ?? '');
    } else if (field.kind === 'boolean') {
      control = h('input', { ...common, type: 'checkbox', checked: values[field.name] === true, onchange: () => (values[field.name] = (control as HTMLInputElement).checked) });
    } else {
      control = h('input', {
        ...common,
        type: 'text',
        autocomplete: 'off',
        value: String(values[field.name] ?? ''),
        placeholder: field.kind === 'list' ? 'comma-separated' : '',
        // The problems line follows the text without redrawing (a redraw would take the focus away).
        oninput: () => {
          values[field.name] = control.value;
          replaceChildren(this.builtinsProblems, this.builtinsForSubmit().problems.map(p => message(p, 'warn')));
        }
      });
    }
    const label = field.name === 'paths' ? 'paths (globs of notebooks)' : field.name;
    return h(
      'div',
      { class: ['jp-cma-field', 'jp-cma-field-inline', 'jp-cma-builtin-setting-row'] },
      h('label', { for: id, title: field.description }, label),
      control
    );
  }

  // ------------------------------------------------------------------ start a session

  private showStart(agent: AgentRow): void {
    const input = h('textarea', { class: 'jp-cma-session-message', rows: 2, placeholder: 'What should the agent do?' });
    const inputId = `jp-cma-session-message-${agent.id}`;
    input.id = inputId;
    const result = h('div', { class: 'jp-cma-session-result', 'aria-live': 'polite' });
    const start = h('button', { type: 'submit', class: 'jp-cma-button jp-cma-primary jp-cma-session-start' }, 'Start session');
    const form = h(
      'form',
      {
        class: 'jp-cma-agent-start',
        dataset: { agentId: agent.id },
        onsubmit: async (ev: Event) => {
          ev.preventDefault();
          start.disabled = true;
          try {
            const text = input.value.trim();
            const session = await this.ctx.api.createSession(text ? { agent_id: agent.id, message: text } : { agent_id: agent.id });
            input.value = '';
            replaceChildren(
              result,
              h(
                'div',
                { class: 'jp-cma-message jp-cma-message-info jp-cma-session-started', role: 'status', dataset: { sessionId: session.id } },
                'Session ',
                h('span', { class: 'jp-cma-mono', title: session.id }, shortId(session.id, 12)),
                ' started: it shows in the Sessions tab.',
                this.options.showSession
                  ? button('Show it', () => this.options.showSession?.(session.id), { class: 'jp-cma-session-show', 'aria-label': `Show session ${session.id}` })
                  : null
              )
            );
          } catch (error) {
            replaceChildren(result, message(`The session did not start: ${errorMessage(error)}`, 'error'));
          } finally {
            start.disabled = false;
          }
        }
      },
      h('h3', null, `Start a session with ${agent.name}`),
      h('label', { for: inputId }, 'First message (optional)'),
      input,
      h('div', { class: 'jp-cma-toolbar' }, start, button('Close', () => replaceChildren(this.startArea), { class: 'jp-cma-agent-start-close' })),
      result
    );
    replaceChildren(this.startArea, form);
    input.focus();
  }

  // ------------------------------------------------------------------ notices

  private say(text: string, kind: 'error' | 'warn' | 'info'): void {
    if (this.disposed) {
      return;
    }
    replaceChildren(this.notice, message(text, kind));
    if (kind === 'info') {
      const shown = this.notice.firstChild;
      setTimeout(() => {
        if (this.notice.firstChild === shown) {
          replaceChildren(this.notice);
        }
      }, 8000);
    }
  }
}
