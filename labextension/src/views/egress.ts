/**
 * The Egress views.
 *
 * - `EgressLogView`: the egress log, live. A REST snapshot (GET egress/log, newest first, filtered on the server)
 *   kept current by the live channel's `egress.row` messages (merged by id, so a row seen twice is shown once);
 *   on a resync it catches up with `after=` the newest row it has. Filterable by host, decision and session;
 *   denied rows are highlighted with the rule that decided; "Export JSON lines" downloads GET
 *   egress/log?format=jsonl with the same filter. At most `ctx.maxRows` rows stay in the DOM.
 * - `PoliciesView`: the policies, and an editor of a policy's JSON document that the server validates
 *   (POST egress/policies/validate: errors and warnings) before it is saved (POST, or PUT for an existing one).
 * - `ExplainView`: "explain this request" through POST egress/decide: the decision, the deciding rule, and the
 *   policies that applied.
 * - `SecretsView`: secret names, fingerprints and times (never a value); set or rotate one with a password field
 *   that is cleared as soon as the request is sent; delete with a confirmation.
 * - `EgressView`: the sidebar's Egress tab, with the four as sub-tabs Log | Policies | Explain | Secrets.
 *
 * The logic is in egress-model.ts.
 */
import { button, clear, download, h, message, replaceChildren } from '../core/dom.js';
import { bytes, clock, errorMessage, ms, plural, shortId } from '../core/format.js';
import { coalesce } from '../core/live.js';
import { DEFAULT_MAX_ROWS, View, ViewContext } from '../core/view.js';
import {
  canSave,
  countByDecision,
  decideBody,
  DECISIONS,
  EgressFilter,
  EgressRow,
  explanation,
  isEgressRow,
  logQuery,
  mergeRows,
  newestId,
  NEW_POLICY_TEXT,
  parsePolicyText,
  PolicyMessage,
  PolicyRow,
  policyRows,
  policyText,
  rowMatches,
  rowTarget,
  SecretRow,
  secretNameProblem,
  secretRows,
  secretValueProblem,
  shortFingerprint,
  validationMessages
} from './egress-model.js';

/** Rows one catch-up request asks for; a fuller gap reloads the snapshot instead. */
const CATCH_UP_LIMIT = 1000;

let uid = 0;
function nextId(prefix: string): string {
  return `${prefix}-${++uid}`;
}

/** A labelled control: `<label for>` + the control, in a div with class `jp-cma-field`. */
function field(label: string, control: HTMLElement, cls?: string): HTMLElement {
  if (!control.id) {
    control.id = nextId('jp-cma-egress-field');
  }
  return h('div', { class: ['jp-cma-field', cls] }, h('label', { for: control.id }, label), control);
}

/**
 * A button that asks before it acts: pressed, it turns into "question [yes] [Cancel]" in place (no modal dialog,
 * nothing blocks the page), and runs `action` on yes.
 */
function confirmButton(label: string, question: string, yes: string, action: () => Promise<void> | void, cls: string): HTMLElement {
  const holder = h('span', { class: 'jp-cma-confirm-holder' });
  const ask = (): void => {
    const no = button('Cancel', () => restore(true), { class: 'jp-cma-confirm-no' });
    replaceChildren(
      holder,
      h(
        'span',
        { class: 'jp-cma-confirm', role: 'group', 'aria-label': question },
        h('span', { class: 'jp-cma-confirm-question' }, question),
        button(yes, () => void Promise.resolve(action()).finally(() => restore(false)), { class: ['jp-cma-danger', 'jp-cma-confirm-yes'] }),
        no
      )
    );
    no.focus();
  };
  const first = button(label, ask, { class: ['jp-cma-danger', cls] });
  const restore = (focus: boolean): void => {
    if (holder.isConnected) {
      replaceChildren(holder, first);
      if (focus) {
        first.focus();
      }
    }
  };
  holder.appendChild(first);
  return holder;
}

function say(area: HTMLElement, text: string | Node, kind: 'error' | 'warn' | 'info'): void {
  replaceChildren(area, message(text, kind));
}

// ---------------------------------------------------------------------- the log

export interface EgressLogViewOptions {
  /** only this session's rows */
  sessionId?: string;
}

/** The live egress log alone (also the notebook's cma.egress_log() and a session's detail). */
export class EgressLogView implements View {
  readonly node: HTMLElement;

  private rows: EgressRow[] = [];
  private filter: EgressFilter;
  private readonly cap: number;
  private readonly rowEls = new Map<number, { row: EgressRow; el: HTMLTableRowElement }>();
  /** bumped when the filter changes: answers to older requests are dropped */
  private generation = 0;
  private loaded = false;
  private drawPending = false;
  private disposed = false;
  private readonly subscriptions: Array<{ dispose(): void }> = [];

  private readonly hostInput: HTMLInputElement;
  private readonly decisionSelect: HTMLSelectElement;
  private readonly sessionInput: HTMLInputElement;
  private readonly table: HTMLTableElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly count: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly liveState: HTMLElement;
  private readonly exportButton: HTMLButtonElement;
  private hostTimer: any = null;

  private readonly loadSnapshot: () => Promise<void>;
  private readonly catchUp: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly options: EgressLogViewOptions = {}) {
    this.cap = Math.max(1, ctx.maxRows ?? DEFAULT_MAX_ROWS);
    const fixed = options.sessionId ?? '';
    this.filter = fixed ? { session: fixed } : {};

    this.hostInput = h('input', {
      type: 'search',
      class: 'jp-cma-egress-filter-host',
      placeholder: 'any host',
      autocomplete: 'off',
      oninput: () => this.hostTyped(),
      onchange: () => this.filterChanged()
    });
    this.decisionSelect = h(
      'select',
      { class: 'jp-cma-egress-filter-decision', onchange: () => this.filterChanged() },
      h('option', { value: '' }, 'any'),
      DECISIONS.map(d => h('option', { value: d }, d))
    );
    this.sessionInput = h('input', {
      type: 'search',
      class: 'jp-cma-egress-filter-session',
      placeholder: 'any session',
      autocomplete: 'off',
      value: fixed,
      disabled: !!fixed,
      onchange: () => this.filterChanged()
    });
    this.exportButton = button('Export JSON lines', () => void this.exportJsonl(), {
      class: 'jp-cma-egress-export',
      title: 'Download every row that matches the filter as JSON lines (for a SIEM)'
    });
    this.liveState = h('span', { class: 'jp-cma-egress-live jp-cma-muted', role: 'status' });
    this.count = h('span', { class: 'jp-cma-egress-count jp-cma-muted' });
    this.notice = h('div', { class: 'jp-cma-egress-notice', 'aria-live': 'polite' });
    this.tbody = h('tbody');
    // The rule is under the request, so a narrow sidebar still shows what decided; the columns after Status
    // give way first when there is no room (egress.css).
    const headers: Array<[string, string] | null> = [
      ['when', 'Time · decision'],
      ['target', 'Request · rule'],
      ['status', 'Status'],
      fixed ? null : ['session', 'Session'],
      ['bytes', 'Bytes ↑/↓'],
      ['duration', 'Duration']
    ];
    this.table = h(
      'table',
      { class: 'jp-cma-table jp-cma-egress-table', dataset: { sessionId: fixed } },
      h('thead', null, h('tr', null, headers.map(c => c && h('th', { scope: 'col', class: `jp-cma-egress-col-${c[0]}` }, c[1])))),
      this.tbody
    );

    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-egress-log', dataset: fixed ? { sessionId: fixed } : {} },
      h(
        'div',
        { class: 'jp-cma-toolbar jp-cma-egress-filters', role: 'search', 'aria-label': 'Filter the egress log' },
        field('Host', this.hostInput),
        field('Decision', this.decisionSelect),
        fixed ? null : field('Session', this.sessionInput),
        button('Clear', () => this.clearFilter(), { class: 'jp-cma-egress-filter-clear', title: 'Show every row' })
      ),
      h('div', { class: 'jp-cma-toolbar' }, this.exportButton, this.count, this.liveState),
      this.notice,
      h('div', { class: 'jp-cma-table-scroll' }, this.table)
    );

    this.loadSnapshot = coalesce(() => this.fetchSnapshot(), e => this.failed(e));
    this.catchUp = coalesce(() => this.fetchAfter(), e => this.failed(e));
    this.subscriptions.push(
      ctx.live.listen(
        { kinds: ['egress.row'], egress: fixed ? { session_id: fixed } : null },
        { message: m => this.live(m.data), resync: () => void this.resync() }
      ),
      ctx.live.onConnectionChange(connected => this.showLive(connected))
    );
    this.showLive(ctx.live.connected);
    void this.loadSnapshot();
  }

  dispose(): void {
    this.disposed = true;
    clearTimeout(this.hostTimer);
    this.subscriptions.forEach(s => s.dispose());
    this.subscriptions.length = 0;
    this.node.remove();
  }

  /** The rows shown now, newest first. */
  get shownRows(): readonly EgressRow[] {
    return this.rows;
  }

  // ------------------------------------------------------------------ data

  private resync(): Promise<void> {
    // With rows, fetch only what came after the newest; without, the snapshot.
    return this.loaded && this.rows.length ? this.catchUp() : this.loadSnapshot();
  }

  private async fetchSnapshot(): Promise<void> {
    const generation = this.generation;
    const page = await this.ctx.api.egressLog(logQuery(this.filter, { limit: this.cap }));
    if (this.disposed || generation !== this.generation) {
      return;
    }
    // Live rows that arrived while the request ran are kept (the rows held match the filter): merged by id.
    this.rows = mergeRows(this.rows, (page.data ?? []).filter(r => rowMatches(r, this.filter)), this.cap);
    this.loaded = true;
    replaceChildren(this.notice);
    this.scheduleDraw();
  }

  private async fetchAfter(): Promise<void> {
    const generation = this.generation;
    const after = newestId(this.rows);
    if (after === null) {
      return this.fetchSnapshot();
    }
    const page = await this.ctx.api.egressLog(logQuery(this.filter, { after, limit: CATCH_UP_LIMIT }));
    if (this.disposed || generation !== this.generation) {
      return;
    }
    const data = page.data ?? [];
    if (data.length >= CATCH_UP_LIMIT) {
      // More came than a page: start again from the newest rows.
      this.rows = [];
      this.loaded = false;
      return this.fetchSnapshot();
    }
    this.rows = mergeRows(this.rows, data.filter(r => rowMatches(r, this.filter)), this.cap);
    replaceChildren(this.notice);
    this.scheduleDraw();
  }

  private live(data: unknown): void {
    if (this.disposed || !isEgressRow(data) || !rowMatches(data, this.filter)) {
      return;
    }
    this.rows = mergeRows(this.rows, [data], this.cap);
    this.scheduleDraw();
  }

  private failed(error: unknown): void {
    if (!this.disposed) {
      say(this.notice, `The egress log could not be loaded: ${errorMessage(error)}`, 'error');
    }
  }

  // ------------------------------------------------------------------ filter and export

  private currentFilter(): EgressFilter {
    return {
      host: this.hostInput.value,
      decision: this.decisionSelect.value,
      session: this.options.sessionId ?? this.sessionInput.value
    };
  }

  private hostTyped(): void {
    clearTimeout(this.hostTimer);
    this.hostTimer = setTimeout(() => this.filterChanged(), 400);
  }

  private filterChanged(): void {
    clearTimeout(this.hostTimer);
    const next = this.currentFilter();
    if (JSON.stringify(logQuery(next)) === JSON.stringify(logQuery(this.filter))) {
      return;
    }
    this.filter = next;
    this.generation++;
    this.rows = this.rows.filter(r => rowMatches(r, next));
    this.loaded = false;
    this.scheduleDraw();
    void this.loadSnapshot();
  }

  private clearFilter(): void {
    this.hostInput.value = '';
    this.decisionSelect.value = '';
    if (!this.options.sessionId) {
      this.sessionInput.value = '';
    }
    this.filterChanged();
  }

  private async exportJsonl(): Promise<void> {
    this.exportButton.disabled = true;
    try {
      const response = await this.ctx.api.egressLogJsonl(logQuery(this.filter));
      const blob = await response.blob();
      const suffix = this.options.sessionId ? `-${this.options.sessionId}` : '';
      download(`egress-log${suffix}.jsonl`, blob, 'application/x-ndjson');
    } catch (error) {
      say(this.notice, `The export failed: ${errorMessage(error)}`, 'error');
    } finally {
      this.exportButton.disabled = false;
    }
  }

  // ------------------------------------------------------------------ drawing

  private showLive(connected: boolean): void {
    this.liveState.textContent = connected ? '● live' : '○ not live (reconnecting)';
    this.liveState.classList.toggle('jp-cma-on', connected);
  }

  private scheduleDraw(): void {
    if (this.drawPending || this.disposed) {
      return;
    }
    this.drawPending = true;
    // One draw per frame however many rows arrive in it (nothing long on the UI thread).
    const raf: (cb: () => void) => void = typeof requestAnimationFrame === 'function' ? requestAnimationFrame : cb => setTimeout(cb, 16);
    raf(() => {
      this.drawPending = false;
      if (!this.disposed) {
        this.draw();
      }
    });
  }

  private draw(): void {
    const keep = new Set<number>();
    const els = this.rows.map(row => {
      keep.add(row.id);
      const cached = this.rowEls.get(row.id);
      if (cached && cached.row === row) {
        return cached.el;
      }
      const el = this.rowElement(row);
      this.rowEls.set(row.id, { row, el });
      return el;
    });
    for (const id of [...this.rowEls.keys()]) {
      if (!keep.has(id)) {
        this.rowEls.delete(id);
      }
    }
    replaceChildren(this.tbody, els);
    if (!this.rows.length) {
      const cols = this.table.tHead?.rows[0]?.cells.length ?? 7;
      this.tbody.appendChild(
        h('tr', { class: 'jp-cma-egress-empty' }, h('td', { colSpan: cols, class: 'jp-cma-muted' }, this.loaded ? 'No egress requests match.' : 'Loading…'))
      );
    }
    const counts = countByDecision(this.rows);
    const parts = DECISIONS.filter(d => counts[d]).map(d => `${counts[d]} ${d}`);
    this.count.textContent =
      `${plural(this.rows.length, 'row')}${this.rows.length >= this.cap ? ` (the newest ${this.cap})` : ''}` + (parts.length ? `: ${parts.join(', ')}` : '');
  }

  private rowElement(row: EgressRow): HTMLTableRowElement {
    const denied = row.decision === 'denied';
    const target = rowTarget(row);
    return h(
      'tr',
      {
        class: ['jp-cma-egress-row', denied && 'jp-cma-egress-denied', denied && 'jp-cma-denied'],
        dataset: { id: String(row.id), decision: row.decision }
      },
      h(
        'td',
        { class: 'jp-cma-egress-col-when' },
        h('div', { class: 'jp-cma-egress-time', title: new Date(row.at * 1000).toISOString() }, clock(row.at)),
        h('span', { class: ['jp-cma-egress-decision', `jp-cma-egress-decision-${row.decision}`] }, row.decision)
      ),
      h(
        'td',
        { class: 'jp-cma-egress-col-target' },
        h('div', { class: 'jp-cma-egress-request jp-cma-mono', title: target }, target),
        h('div', { class: 'jp-cma-egress-rule jp-cma-mono', title: `decided by ${row.rule ?? 'no rule recorded'}` }, row.rule ?? '–')
      ),
      h('td', { class: 'jp-cma-egress-col-status jp-cma-egress-status' }, row.status == null ? '–' : String(row.status)),
      this.options.sessionId
        ? null
        : h('td', { class: 'jp-cma-egress-col-session jp-cma-egress-session jp-cma-mono', title: row.session_id ?? '' }, shortId(row.session_id)),
      h('td', { class: 'jp-cma-egress-col-bytes' }, `${bytes(row.bytes_up)} / ${bytes(row.bytes_down)}`),
      h('td', { class: 'jp-cma-egress-col-duration' }, ms(row.duration_ms))
    );
  }
}

// ---------------------------------------------------------------------- policies

/** Egress policies: list, create, edit as JSON (validated by the server before saving), delete. */
export class PoliciesView implements View {
  readonly node: HTMLElement;

  private policies: PolicyRow[] = [];
  /** the policy being edited; null for a new one */
  private editingId: string | null = null;
  private disposed = false;
  private readonly subscriptions: Array<{ dispose(): void }> = [];

  private readonly notice: HTMLElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly editor: HTMLFormElement;
  private readonly editorTitle: HTMLElement;
  private readonly text: HTMLTextAreaElement;
  private readonly messages: HTMLElement;
  private readonly saveButton: HTMLButtonElement;
  private readonly validateButton: HTMLButtonElement;
  private readonly load: () => Promise<void>;

  constructor(readonly ctx: ViewContext) {
    this.notice = h('div', { class: 'jp-cma-policy-notice', 'aria-live': 'polite' });
    this.tbody = h('tbody');
    this.text = h('textarea', { class: 'jp-cma-policy-text jp-cma-mono', rows: 14, oninput: () => replaceChildren(this.messages) });
    this.text.spellcheck = false;
    this.messages = h('ul', { class: 'jp-cma-policy-messages', 'aria-live': 'polite' });
    this.editorTitle = h('h3', { class: 'jp-cma-policy-editor-title' }, 'New policy');
    this.validateButton = button('Validate', () => void this.validate(), { class: 'jp-cma-policy-validate', title: 'Ask the server whether the policy is valid, without saving it' });
    this.saveButton = h('button', { type: 'submit', class: 'jp-cma-button jp-cma-primary jp-cma-policy-save' }, 'Save');
    this.editor = h(
      'form',
      { class: 'jp-cma-policy-editor', hidden: true, onsubmit: (ev: Event) => void this.save(ev) },
      this.editorTitle,
      field('Policy document (JSON)', this.text),
      h(
        'p',
        { class: 'jp-cma-muted jp-cma-policy-help' },
        'Fields: name, description, scope ({"environment": true}, {"agent_id"}, {"session_id"} or {"metadata": [...]}), presets (pypi, npm, github, huggingface), allow, deny, inject, private_services, websocket, allow_all.'
      ),
      this.messages,
      h('div', { class: 'jp-cma-toolbar' }, this.validateButton, this.saveButton, button('Cancel', () => this.closeEditor(), { class: 'jp-cma-policy-cancel' }))
    );
    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-policies' },
      h(
        'div',
        { class: 'jp-cma-toolbar' },
        button('New policy', () => this.openEditor(null, NEW_POLICY_TEXT), { class: ['jp-cma-primary', 'jp-cma-policy-new'] }),
        button('Refresh', () => void this.load(), { class: 'jp-cma-policy-refresh' })
      ),
      this.notice,
      this.editor,
      h(
        'div',
        { class: 'jp-cma-table-scroll' },
        h(
          'table',
          { class: 'jp-cma-table jp-cma-policy-table' },
          h('thead', null, h('tr', null, ['Policy', 'Actions'].map(t => h('th', { scope: 'col' }, t)))),
          this.tbody
        )
      )
    );
    this.load = coalesce(() => this.fetch(), e => this.disposed || say(this.notice, `The policies could not be loaded: ${errorMessage(e)}`, 'error'));
    this.subscriptions.push(ctx.live.listen({ kinds: ['status.changed'] }, { message: () => void this.load(), resync: () => void this.load() }));
    void this.load();
  }

  dispose(): void {
    this.disposed = true;
    this.subscriptions.forEach(s => s.dispose());
    this.subscriptions.length = 0;
    this.node.remove();
  }

  private async fetch(): Promise<void> {
    const page = await this.ctx.api.policies();
    if (this.disposed) {
      return;
    }
    this.policies = policyRows(page.data);
    this.draw();
  }

  private draw(): void {
    const rows = this.policies.map(p =>
      h(
        'tr',
        { class: ['jp-cma-policy-row', p.error && 'jp-cma-policy-corrupt'], dataset: { policyId: p.id } },
        // Two columns, so the sidebar's width shows everything.
        h(
          'td',
          { class: 'jp-cma-policy-cell' },
          h('div', { class: 'jp-cma-policy-name', title: p.id }, p.name),
          p.error
            ? h('div', { class: 'jp-cma-policy-error' }, `Invalid: it denies every request it might concern. ${p.error}`)
            : [h('div', { class: 'jp-cma-policy-scope' }, p.scope), h('div', { class: 'jp-cma-policy-summary jp-cma-muted' }, p.summary)],
          h('div', { class: 'jp-cma-muted jp-cma-policy-updated' }, `updated ${clock(p.updated_at)}`)
        ),
        h(
          'td',
          { class: 'jp-cma-policy-actions' },
          button('Edit', () => void this.edit(p), { class: 'jp-cma-policy-edit', 'aria-label': `Edit policy ${p.name}` }),
          confirmButton('Delete', `Delete ${p.name}?`, 'Delete', () => this.remove(p), 'jp-cma-policy-delete')
        )
      )
    );
    replaceChildren(
      this.tbody,
      rows.length ? rows : h('tr', null, h('td', { colSpan: 2, class: 'jp-cma-muted' }, 'No policies: every request of every sandbox is denied. Add one with "New policy".'))
    );
  }

  private async edit(p: PolicyRow): Promise<void> {
    if (p.error) {
      // A corrupt policy has no document to show: start from its name, to be replaced as a whole.
      this.openEditor(p.id, JSON.stringify({ name: p.name, scope: { environment: true } }, null, 2), p.name);
      say(this.messages, 'Its stored document no longer validates; write the whole policy again.', 'warn');
      return;
    }
    try {
      const record = await this.ctx.api.policy(p.id);
      if (!this.disposed) {
        this.openEditor(p.id, policyText(record), p.name);
      }
    } catch (error) {
      say(this.notice, `The policy could not be read: ${errorMessage(error)}`, 'error');
    }
  }

  private openEditor(id: string | null, text: string, name?: string): void {
    this.editingId = id;
    this.editor.dataset.mode = id ? 'edit' : 'create';
    if (id) {
      this.editor.dataset.policyId = id;
    } else {
      delete this.editor.dataset.policyId;
    }
    this.editorTitle.textContent = id ? `Edit ${name ?? id}` : 'New policy';
    this.text.value = text;
    clear(this.messages);
    this.editor.hidden = false;
    this.text.focus();
  }

  private closeEditor(): void {
    this.editor.hidden = true;
    this.editingId = null;
    clear(this.messages);
  }

  private showMessages(list: PolicyMessage[]): void {
    replaceChildren(
      this.messages,
      list.map(m => h('li', { class: ['jp-cma-policy-message', `jp-cma-msg-${m.level}`], dataset: { level: m.level } }, m.text))
    );
  }

  /** Validates the editor's document on the server; its messages, or null when the text is not a JSON object. */
  private async validate(): Promise<PolicyMessage[] | null> {
    const parsed = parsePolicyText(this.text.value);
    if ('error' in parsed) {
      this.showMessages([{ level: 'error', text: parsed.error }]);
      return null;
    }
    this.validateButton.disabled = true;
    try {
      const list = validationMessages(await this.ctx.api.validatePolicy(parsed.doc));
      this.showMessages(list);
      return list;
    } catch (error) {
      this.showMessages([{ level: 'error', text: `The server could not validate it: ${errorMessage(error)}` }]);
      return null;
    } finally {
      this.validateButton.disabled = false;
    }
  }

  private async save(ev: Event): Promise<void> {
    ev.preventDefault();
    this.saveButton.disabled = true;
    try {
      // The server's validation runs first, so its errors and warnings show before anything is stored.
      const list = await this.validate();
      if (!list || !canSave(list)) {
        return;
      }
      const parsed = parsePolicyText(this.text.value);
      if ('error' in parsed) {
        return;
      }
      const id = this.editingId;
      const saved = id ? await this.ctx.api.putPolicy(id, parsed.doc) : await this.ctx.api.createPolicy(parsed.doc);
      if (this.disposed) {
        return;
      }
      const warnings = Array.isArray(saved.warnings) ? saved.warnings.map(String) : [];
      this.closeEditor();
      say(
        this.notice,
        h(
          'div',
          { class: 'jp-cma-policy-saved', dataset: { policyId: String(saved.id) } },
          `Saved ${String(saved.name ?? saved.id)}.`,
          warnings.length ? h('ul', null, warnings.map(w => h('li', { class: 'jp-cma-msg-warning' }, w))) : null
        ),
        warnings.length ? 'warn' : 'info'
      );
      void this.load();
    } catch (error) {
      // 400: the document (the server's message names the field); 409: another policy has its name or scope.
      this.showMessages([{ level: 'error', text: `Not saved: ${errorMessage(error)}` }]);
    } finally {
      this.saveButton.disabled = false;
    }
  }

  private async remove(p: PolicyRow): Promise<void> {
    try {
      await this.ctx.api.deletePolicy(p.id);
      if (this.editingId === p.id) {
        this.closeEditor();
      }
      say(this.notice, `Deleted ${p.name}.`, 'info');
      void this.load();
    } catch (error) {
      say(this.notice, `${p.name} was not deleted: ${errorMessage(error)}`, 'error');
    }
  }
}

// ---------------------------------------------------------------------- explain

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT'];

/** "Explain this request": what the egress proxy would do with a request, and why (POST egress/decide). */
export class ExplainView implements View {
  readonly node: HTMLElement;
  private disposed = false;
  private readonly url: HTMLInputElement;
  private readonly method: HTMLSelectElement;
  private readonly session: HTMLInputElement;
  private readonly websocket: HTMLInputElement;
  private readonly submitButton: HTMLButtonElement;
  private readonly result: HTMLElement;

  constructor(readonly ctx: ViewContext, options: { sessionId?: string } = {}) {
    this.url = h('input', { type: 'text', class: 'jp-cma-explain-url', required: true, placeholder: 'https://pypi.org/simple/', autocomplete: 'off' });
    this.method = h('select', { class: 'jp-cma-explain-method' }, METHODS.map(m => h('option', { value: m }, m)));
    this.session = h('input', { type: 'text', class: 'jp-cma-explain-session', placeholder: 'sesn_… (optional)', autocomplete: 'off', value: options.sessionId ?? '' });
    this.websocket = h('input', { type: 'checkbox', class: 'jp-cma-explain-websocket' });
    this.websocket.id = nextId('jp-cma-explain-ws');
    this.submitButton = h('button', { type: 'submit', class: 'jp-cma-button jp-cma-primary jp-cma-explain-submit' }, 'Explain');
    this.result = h('div', { class: 'jp-cma-explain-result', 'aria-live': 'polite' });
    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-explain' },
      h(
        'form',
        { class: 'jp-cma-explain-form', onsubmit: (ev: Event) => void this.explain(ev) },
        h('p', { class: 'jp-cma-muted' }, 'What would the egress proxy do with this request from a sandbox, and which rule decides it?'),
        field('URL', this.url),
        h('div', { class: 'jp-cma-explain-row' }, field('Method', this.method), field('Session', this.session)),
        h('div', { class: 'jp-cma-field jp-cma-field-inline' }, this.websocket, h('label', { for: this.websocket.id }, 'WebSocket upgrade')),
        h('div', { class: 'jp-cma-toolbar' }, this.submitButton)
      ),
      this.result
    );
  }

  dispose(): void {
    this.disposed = true;
    this.node.remove();
  }

  private async explain(ev: Event): Promise<void> {
    ev.preventDefault();
    if (!this.url.value.trim()) {
      say(this.result, 'Give the URL of the request, such as https://pypi.org/simple/.', 'error');
      return;
    }
    this.submitButton.disabled = true;
    try {
      const answer = await this.ctx.api.decide(decideBody(this.url.value, this.method.value, this.session.value, this.websocket.checked));
      if (!this.disposed) {
        this.show(answer);
      }
    } catch (error) {
      say(this.result, errorMessage(error), 'error');
    } finally {
      this.submitButton.disabled = false;
    }
  }

  private show(answer: unknown): void {
    const e = explanation(answer);
    const dl = (pairs: Array<[string, Node | string | null]>): HTMLElement =>
      h('dl', { class: 'jp-cma-explain-facts' }, pairs.filter(([, v]) => v !== null && v !== '').map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
    replaceChildren(
      this.result,
      h(
        'div',
        { class: ['jp-cma-explain-answer', e.allowed ? 'jp-cma-explain-allowed' : 'jp-cma-explain-denied'], dataset: { action: e.action } },
        h('div', { class: 'jp-cma-explain-decision' }, e.allowed ? (e.injections.length ? 'Allowed, with a secret injected' : 'Allowed') : 'Denied'),
        dl([
          ['Request', e.request ? h('code', { class: 'jp-cma-mono' }, e.request) : null],
          ['Rule', h('code', { class: 'jp-cma-explain-rule jp-cma-mono' }, e.rule || '–')],
          ['Why', e.reason],
          ['The sandbox gets', e.status !== null ? `HTTP ${e.status}` : null],
          ['Private service', e.privateService],
          ['System allowance', e.systemAllowance],
          ['Fail-closed error', e.error],
          ['Middleware', e.middleware.length ? e.middleware.join(', ') : null]
        ]),
        e.injections.length
          ? h(
              'ul',
              { class: 'jp-cma-explain-injections' },
              e.injections.map(i =>
                h('li', null, `${i.header} ← secret ${i.secret}`, i.set === false ? h('span', { class: 'jp-cma-explain-unset' }, ' (not set: the request would fail with 503)') : null)
              )
            )
          : null,
        h('h4', null, 'Policies applied'),
        e.policies.length
          ? h(
              'table',
              { class: 'jp-cma-table jp-cma-explain-policies' },
              h('thead', null, h('tr', null, ['Policy', 'Scope', 'Role'].map(t => h('th', { scope: 'col' }, t)))),
              h('tbody', null, e.policies.map(p => h('tr', { dataset: { policyId: p.id } }, h('td', { title: p.id }, p.name), h('td', null, p.scope), h('td', null, p.role))))
            )
          : h('p', { class: 'jp-cma-muted' }, 'None applies to this request: with no policy, everything is denied.')
      )
    );
  }
}

// ---------------------------------------------------------------------- secrets

/** Egress secrets: names, fingerprints and times; set, rotate, delete. A value is never shown. */
export class SecretsView implements View {
  readonly node: HTMLElement;
  private secrets: SecretRow[] = [];
  private disposed = false;
  private readonly notice: HTMLElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly name: HTMLInputElement;
  private readonly value: HTMLInputElement;
  private readonly saveButton: HTMLButtonElement;
  private readonly formError: HTMLElement;
  private readonly load: () => Promise<void>;

  constructor(readonly ctx: ViewContext) {
    this.notice = h('div', { class: 'jp-cma-secret-notice', 'aria-live': 'polite' });
    this.tbody = h('tbody');
    this.name = h('input', { type: 'text', class: 'jp-cma-secret-name', placeholder: 'GITHUB_TOKEN', autocomplete: 'off', maxLength: 128 });
    // A password field: the value is never shown, never kept by the browser's autofill, and cleared once sent.
    this.value = h('input', { type: 'password', class: 'jp-cma-secret-value', autocomplete: 'new-password' });
    this.saveButton = h('button', { type: 'submit', class: 'jp-cma-button jp-cma-primary jp-cma-secret-save' }, 'Save secret');
    this.formError = h('div', { class: 'jp-cma-secret-error', 'aria-live': 'polite' });
    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-secrets' },
      h('p', { class: 'jp-cma-muted' }, 'Secrets the egress proxy injects into requests (policies name them). Only names, times and fingerprints are shown: a fingerprint changes when the secret is rotated.'),
      this.notice,
      h(
        'div',
        { class: 'jp-cma-table-scroll' },
        h(
          'table',
          { class: 'jp-cma-table jp-cma-secret-table' },
          h('thead', null, h('tr', null, ['Secret', 'Actions'].map(t => h('th', { scope: 'col' }, t)))),
          this.tbody
        )
      ),
      h(
        'form',
        { class: 'jp-cma-secret-form', onsubmit: (ev: Event) => void this.save(ev) },
        h('h3', null, 'Set or rotate a secret'),
        field('Name', this.name),
        field('Value', this.value),
        this.formError,
        h('div', { class: 'jp-cma-toolbar' }, this.saveButton)
      )
    );
    this.load = coalesce(() => this.fetch(), e => this.disposed || say(this.notice, `The secrets could not be listed: ${errorMessage(e)}`, 'error'));
    void this.load();
  }

  dispose(): void {
    this.disposed = true;
    this.value.value = '';
    this.node.remove();
  }

  private async fetch(): Promise<void> {
    const page = await this.ctx.api.secrets();
    if (this.disposed) {
      return;
    }
    this.secrets = secretRows(page.data);
    this.draw();
  }

  private draw(): void {
    const rows = this.secrets.map(s =>
      h(
        'tr',
        { class: 'jp-cma-secret-row', dataset: { secretName: s.name } },
        h(
          'td',
          { class: 'jp-cma-secret-cell' },
          h('div', { class: 'jp-cma-secret-cell-name jp-cma-mono' }, s.name),
          h('div', { class: 'jp-cma-secret-fingerprint jp-cma-mono jp-cma-muted', title: s.fingerprint }, shortFingerprint(s.fingerprint)),
          h('div', { class: 'jp-cma-muted', title: `created ${clock(s.created_at)}` }, `updated ${clock(s.updated_at)}`)
        ),
        h(
          'td',
          { class: 'jp-cma-secret-actions' },
          button('Rotate', () => this.rotate(s.name), { class: 'jp-cma-secret-rotate', 'aria-label': `Rotate secret ${s.name}` }),
          confirmButton('Delete', `Delete ${s.name}?`, 'Delete', () => this.remove(s.name), 'jp-cma-secret-delete')
        )
      )
    );
    replaceChildren(this.tbody, rows.length ? rows : h('tr', null, h('td', { colSpan: 2, class: 'jp-cma-muted' }, 'No secrets.')));
  }

  private rotate(name: string): void {
    this.name.value = name;
    this.value.value = '';
    replaceChildren(this.formError);
    this.value.focus();
  }

  private async save(ev: Event): Promise<void> {
    ev.preventDefault();
    const name = this.name.value.trim();
    // The value is read once and the field cleared before anything is awaited: it is not kept in the page.
    const value = this.value.value;
    this.value.value = '';
    const problem = secretNameProblem(name) ?? secretValueProblem(value);
    if (problem) {
      say(this.formError, problem, 'error');
      (secretNameProblem(name) ? this.name : this.value).focus();
      return;
    }
    replaceChildren(this.formError);
    const existed = this.secrets.some(s => s.name === name);
    this.saveButton.disabled = true;
    try {
      const info = await this.ctx.api.putSecret(name, value);
      if (this.disposed) {
        return;
      }
      say(this.notice, `${existed ? 'Rotated' : 'Set'} ${info.name} (fingerprint ${shortFingerprint(String(info.fingerprint))}).`, 'info');
      this.name.value = '';
      void this.load();
    } catch (error) {
      say(this.formError, `Not saved: ${errorMessage(error)}`, 'error');
    } finally {
      this.saveButton.disabled = false;
    }
  }

  private async remove(name: string): Promise<void> {
    try {
      await this.ctx.api.deleteSecret(name);
      say(this.notice, `Deleted ${name}.`, 'info');
      void this.load();
    } catch (error) {
      say(this.notice, `${name} was not deleted: ${errorMessage(error)}`, 'error');
    }
  }
}

// ---------------------------------------------------------------------- the tab

type SubTab = 'log' | 'policies' | 'explain' | 'secrets';

const SUBTABS: Array<{ name: SubTab; label: string; create(ctx: ViewContext): View }> = [
  { name: 'log', label: 'Log', create: ctx => new EgressLogView(ctx) },
  { name: 'policies', label: 'Policies', create: ctx => new PoliciesView(ctx) },
  { name: 'explain', label: 'Explain', create: ctx => new ExplainView(ctx) },
  { name: 'secrets', label: 'Secrets', create: ctx => new SecretsView(ctx) }
];

/** The Egress tab: Log | Policies | Explain | Secrets, each view created the first time it is shown. */
export class EgressView implements View {
  readonly node: HTMLElement;
  private current: SubTab = 'log';
  private readonly views = new Map<SubTab, View>();
  private readonly tabs = new Map<SubTab, HTMLButtonElement>();
  private readonly panels = new Map<SubTab, HTMLElement>();

  constructor(readonly ctx: ViewContext) {
    const base = nextId('jp-cma-egress');
    const tablist = h('div', { class: 'jp-cma-tabs jp-cma-egress-tabs', role: 'tablist', 'aria-label': 'Egress' });
    const panels: HTMLElement[] = [];
    SUBTABS.forEach((tab, index) => {
      const tabId = `${base}-tab-${tab.name}`;
      const panelId = `${base}-panel-${tab.name}`;
      const b = h(
        'button',
        {
          type: 'button',
          class: 'jp-cma-tab jp-cma-egress-tab',
          role: 'tab',
          id: tabId,
          'aria-controls': panelId,
          'aria-selected': 'false',
          tabIndex: -1,
          dataset: { tab: tab.name },
          onclick: () => this.show(tab.name),
          onkeydown: (ev: KeyboardEvent) => {
            const count = SUBTABS.length;
            const next =
              ev.key === 'ArrowRight' ? (index + 1) % count : ev.key === 'ArrowLeft' ? (index - 1 + count) % count : ev.key === 'Home' ? 0 : ev.key === 'End' ? count - 1 : null;
            if (next !== null) {
              ev.preventDefault();
              this.show(SUBTABS[next].name);
              this.tabs.get(SUBTABS[next].name)?.focus();
            }
          }
        },
        tab.label
      );
      this.tabs.set(tab.name, b);
      tablist.appendChild(b);
      const p = h('div', { class: 'jp-cma-egress-subpanel', role: 'tabpanel', id: panelId, 'aria-labelledby': tabId, hidden: true, dataset: { tab: tab.name } });
      this.panels.set(tab.name, p);
      panels.push(p);
    });
    this.node = h('div', { class: 'jp-cma-view jp-cma-egress' }, tablist, ...panels);
    this.show('log');
  }

  /** Shows a sub-tab, creating its view the first time. */
  show(name: SubTab): View {
    this.current = name;
    for (const tab of SUBTABS) {
      const selected = tab.name === name;
      const b = this.tabs.get(tab.name)!;
      b.setAttribute('aria-selected', String(selected));
      b.tabIndex = selected ? 0 : -1;
      this.panels.get(tab.name)!.hidden = !selected;
    }
    let view = this.views.get(name);
    if (!view) {
      view = SUBTABS.find(t => t.name === name)!.create(this.ctx);
      this.views.set(name, view);
      this.panels.get(name)!.appendChild(view.node);
    }
    return view;
  }

  /** The sub-tab shown now. */
  get currentTab(): SubTab {
    return this.current;
  }

  dispose(): void {
    this.views.forEach(v => v.dispose());
    this.views.clear();
    this.node.remove();
  }
}
