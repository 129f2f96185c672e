/**
 * The sessions views: `SessionsView` (a live table of the sessions this server serves, with filters) and
 * `SessionDetailView` (one session: its conversation as it streams, its egress rows, its notebook edits, and actions).
 *
 * Data: `GET sessions` (a snapshot, refetched on every resync the live channel asks for, coalesced) kept current by
 * `session.state` / `session.tool` messages; a detail reads `GET sessions/{id}/events` once, then only what is new
 * (`after=` the latest processed_at) whenever a `session.event` message says so. The logic lives in
 * sessions-model.ts and transcript-model.ts (pure, unit-tested); this file is DOM and wiring.
 */
import type { Agent, SessionDetail, SessionRow } from '../core/api.js';
import { ApiError } from '../core/transport.js';
import { button, download, h, message, replaceChildren } from '../core/dom.js';
import { age, errorMessage, ms, nowSeconds, plural, shortId } from '../core/format.js';
import { coalesce, LiveMessage } from '../core/live.js';
import { DEFAULT_MAX_ROWS, View, ViewContext } from '../core/view.js';
import { EgressLogView } from './egress.js';
import {
  AgentNames,
  agentLabel,
  applyLive,
  cleanFilter,
  createdAt,
  DEFAULT_SORT,
  isolationOf,
  isServing,
  lastActivity,
  mergeSnapshot,
  SESSION_STATES,
  SessionFilter,
  snapshotQuery,
  Sort,
  SortKey,
  toolCalls,
  unknownAgents,
  visibleSessions
} from './sessions-model.js';
import { describeTurn, eventsCursor, mergeEvents, SessionEvent, transcriptItems, turnState } from './transcript-model.js';
import { TranscriptView } from './transcript.js';
import { NotebookEditsView } from './tools-edits.js';
import { notebookEditProgress } from './tools-model.js';

/** Events read per request. */
const EVENTS_PAGE = 1000;
/** How often the ages in the table are redrawn (ms). */
const TICK_MS = 5000;
/** A `session.state` message is followed by one refetch of the list after this long (ms), for the sandbox facts. */
const STATE_REFETCH_MS = 1000;

export interface SessionsViewOptions {
  /** show this session's detail first */
  sessionId?: string;
  /** the filters to start with */
  filter?: SessionFilter;
  /** false: only the selected session's detail, no table (a displayed `cma.Session`) */
  showTable?: boolean;
  /** how many recent sessions to load (1-500; default 200) */
  limit?: number;
  /** the user selected a session (or closed its detail: null) */
  onSelect?(sessionId: string | null): void;
  /** the user changed a filter */
  onFilterChange?(filter: SessionFilter): void;
}

interface Column {
  key: SortKey | 'session';
  title: string;
  help: string;
}

const COLUMNS: Column[] = [
  { key: 'session', title: 'Session', help: 'the session id and title' },
  { key: 'agent', title: 'Agent', help: 'the agent the session runs' },
  { key: 'tier', title: 'Tier', help: 'where its tool calls run: kernel or container' },
  { key: 'isolation', title: 'Isolation', help: 'how its sandbox is isolated' },
  { key: 'state', title: 'State', help: 'its state on this server' },
  { key: 'start', title: 'Start', help: 'how its sandbox was started: from the warm pool, new, or standby' },
  { key: 'cold_start', title: 'Cold start', help: 'from the work item to a ready sandbox' },
  { key: 'age', title: 'Age', help: 'since the session was first served here' },
  { key: 'tool_calls', title: 'Tool calls', help: 'tool calls of the sandbox serving it now' },
  { key: 'last_activity', title: 'Last activity', help: 'its latest tool result or state change' }
];

function stateBadge(state: string): HTMLElement {
  return h('span', { class: ['jp-cma-state', `jp-cma-state-${state.replace(/[^a-z_]/gi, '')}`] }, state);
}

/** The cells of one row, as text or nodes, by column. */
function rowCells(row: SessionRow, names: AgentNames, now: number): Record<Column['key'], HTMLElement | string> {
  const calls = toolCalls(row);
  return {
    session: h(
      'span',
      { title: row.id },
      h('span', { class: 'jp-cma-mono' }, shortId(row.id)),
      row.title ? h('span', { class: 'jp-cma-session-title' }, row.title) : null
    ),
    agent: agentLabel(row, names) || '–',
    tier: row.tier || '–',
    isolation: isolationOf(row) || '–',
    state: stateBadge(row.status),
    start: row.sandbox?.start || '–',
    cold_start: ms(row.cold_start_ms),
    age: createdAt(row) ? age(createdAt(row), now).replace(/ ago$/, '') : '–',
    tool_calls: calls === null ? '–' : String(calls),
    last_activity: age(lastActivity(row) || null, now)
  };
}

/** The live table of sessions, with filters; selecting a row shows its `SessionDetailView` below. */
export class SessionsView implements View {
  readonly node: HTMLElement;
  private rows = new Map<string, SessionRow>();
  private names = new Map<string, string>();
  private filterState: SessionFilter;
  private sort: Sort = DEFAULT_SORT;
  private selected: string | null;
  private showTable: boolean;
  private limit: number;
  private detail: SessionDetailView | null = null;
  private disposed = false;
  private lastQuery = '';
  private touched = new Set<string>();
  private loadedOnce = false;
  /** agents whose names were asked for once already: an agent the API does not list is not asked about again */
  private readonly agentsAskedAbout = new Set<string>();
  private renderScheduled = false;
  private stateRefetch: any = null;
  private readonly trs = new Map<string, { tr: HTMLTableRowElement; row: SessionRow; cells: Record<string, HTMLElement> }>();
  private readonly subscriptions: Array<{ dispose(): void }> = [];
  private readonly tick: any;

  // parts of the DOM
  private readonly toolbar: HTMLElement;
  private readonly stateSelect: HTMLSelectElement;
  private readonly tierSelect: HTMLSelectElement;
  private readonly agentSelect: HTMLSelectElement;
  private readonly textInput: HTMLInputElement;
  private readonly liveIndicator: HTMLElement;
  private readonly summary: HTMLElement;
  private readonly errorSlot: HTMLElement;
  private readonly tableWrap: HTMLElement;
  private readonly headRow: HTMLTableRowElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly emptySlot: HTMLElement;
  private readonly detailSlot: HTMLElement;

  /** Loads the list (at most one request in flight, plus one trailing). */
  readonly refresh: () => Promise<void>;
  private readonly loadAgents: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly options: SessionsViewOptions = {}) {
    this.filterState = cleanFilter(options.filter ?? {});
    this.selected = options.sessionId || null;
    this.showTable = options.showTable !== false;
    this.limit = options.limit ?? 200;

    const onFilter = () => this.filterChanged();
    this.stateSelect = h(
      'select',
      { class: 'jp-cma-filter-state', 'aria-label': 'State', onchange: onFilter },
      h('option', { value: '' }, 'any state'),
      h('option', { value: 'active' }, 'active'),
      SESSION_STATES.map(s => h('option', { value: s }, s))
    );
    this.tierSelect = h(
      'select',
      { class: 'jp-cma-filter-tier', 'aria-label': 'Tier', onchange: onFilter },
      h('option', { value: '' }, 'any tier'),
      h('option', { value: 'kernel' }, 'kernel'),
      h('option', { value: 'container' }, 'container')
    );
    this.agentSelect = h('select', { class: 'jp-cma-filter-agent', 'aria-label': 'Agent', onchange: onFilter });
    this.textInput = h('input', {
      class: 'jp-cma-filter-text',
      type: 'search',
      placeholder: 'Filter: id, title, agent, metadata…',
      'aria-label': 'Filter sessions by text',
      oninput: onFilter
    });
    this.liveIndicator = h('span', { class: 'jp-cma-live-indicator', role: 'status' });
    this.toolbar = h(
      'div',
      { class: 'jp-cma-toolbar jp-cma-sessions-toolbar' },
      this.stateSelect,
      this.tierSelect,
      this.agentSelect,
      this.textInput,
      button('Refresh', () => void this.refresh(), { class: 'jp-cma-sessions-refresh', title: 'Read the sessions again' }),
      this.liveIndicator
    );
    this.summary = h('div', { class: 'jp-cma-sessions-summary', 'aria-live': 'polite' });
    this.errorSlot = h('div', { class: 'jp-cma-sessions-error' });
    this.headRow = h('tr');
    this.tbody = h('tbody');
    this.tableWrap = h(
      'div',
      { class: 'jp-cma-sessions-table-wrap' },
      h('table', { class: 'jp-cma-table jp-cma-sessions-table', 'aria-label': 'Sessions' }, h('thead', null, this.headRow), this.tbody)
    );
    this.emptySlot = h('div', { class: 'jp-cma-sessions-empty' });
    this.detailSlot = h('div', { class: 'jp-cma-sessions-detail-slot' });
    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-sessions' },
      this.toolbar,
      this.summary,
      this.errorSlot,
      this.tableWrap,
      this.emptySlot,
      this.detailSlot
    );
    this.drawHead();
    this.syncControls();
    this.applyShowTable();

    this.refresh = coalesce(() => this.load());
    this.loadAgents = coalesce(() => this.fetchAgents());

    this.subscriptions.push(
      ctx.live.listen(
        { kinds: ['session.state', 'session.tool'] },
        {
          message: m => this.onLive(m),
          resync: () => {
            if (this.showTable) {
              void this.refresh();
              void this.loadAgents();
            }
          }
        }
      ),
      ctx.live.onConnectionChange(() => this.drawLive())
    );
    this.drawLive();
    this.tick = setInterval(() => this.drawTimes(), TICK_MS);
    // The first snapshot now, not after the socket's handshake (the resync that follows is coalesced with it).
    if (this.showTable) {
      void this.refresh();
      void this.loadAgents();
    }
    if (this.selected) {
      this.openDetail(this.selected);
    }
  }

  /** The filters in effect. */
  get filter(): SessionFilter {
    return { ...this.filterState };
  }

  /** The session whose detail is shown (null: none). */
  get selectedSession(): string | null {
    return this.selected;
  }

  /** Change filters (those given; the others stay). Does not call onFilterChange. */
  setFilter(filter: Partial<SessionFilter>): void {
    this.filterState = cleanFilter({ ...this.filterState, ...filter });
    this.syncControls();
    this.draw();
    this.refetchIfQueryChanged();
  }

  /** Show the table or only the detail. */
  setShowTable(show: boolean): void {
    const was = this.showTable;
    this.showTable = show;
    this.applyShowTable();
    if (show && !was) {
      void this.refresh();
      void this.loadAgents();
    }
  }

  /** How many recent sessions the table loads (1-500). */
  setLimit(limit: number): void {
    this.limit = Math.max(1, Math.min(500, Math.floor(limit) || 200));
    this.refetchIfQueryChanged();
  }

  /** Show one session's detail (null: close it). Does not call onSelect. */
  showSession(sessionId: string | null): void {
    if ((sessionId || null) === this.selected && (this.detail || !sessionId)) {
      return;
    }
    this.selected = sessionId || null;
    if (this.selected) {
      this.openDetail(this.selected);
    } else {
      this.closeDetail();
    }
    this.drawSelection();
  }

  dispose(): void {
    if (this.disposed) {
      return;
    }
    this.disposed = true;
    clearInterval(this.tick);
    if (this.stateRefetch !== null) {
      clearTimeout(this.stateRefetch);
    }
    this.subscriptions.forEach(s => s.dispose());
    this.closeDetail();
    this.node.remove();
  }

  // ------------------------------------------------------------------ data

  private query(): Record<string, string | number | undefined> {
    return snapshotQuery(this.filterState, this.limit);
  }

  private async load(): Promise<void> {
    if (this.disposed || !this.showTable) {
      return; // a detail shown alone reads its own session; the list waits until the table shows
    }
    const query = this.query();
    this.lastQuery = JSON.stringify(query);
    this.touched = new Set();
    try {
      const page = await this.ctx.api.sessions({
        status: typeof query.status === 'string' ? query.status.split(',') : undefined,
        tier: query.tier as string | undefined,
        agent_id: query.agent_id as string | undefined,
        limit: query.limit as number
      });
      if (this.disposed) {
        return;
      }
      this.rows = mergeSnapshot(this.rows, page.data || [], this.touched);
      this.loadedOnce = true;
      replaceChildren(this.errorSlot);
      // A session of an agent made since the names were read: read them again, once per such agent.
      const unknown = unknownAgents(this.rows.values(), this.names).filter(id => !this.agentsAskedAbout.has(id));
      if (unknown.length) {
        unknown.forEach(id => this.agentsAskedAbout.add(id));
        void this.loadAgents();
      }
    } catch (error) {
      this.showError(error);
    }
    this.draw();
  }

  private async fetchAgents(): Promise<void> {
    try {
      // Agents come from Anthropic's API: a server without its key or environment has none to list (asking would
      // only fail), so the table shows agent ids until setup is done (status.changed brings a resync).
      const status = await this.ctx.api.status();
      if ((status.missing || []).some((name: string) => name === 'api_key' || name === 'environment_id')) {
        return;
      }
      const page = await this.ctx.api.agents(100);
      const names = new Map<string, string>();
      for (const agent of (page.data || []) as Agent[]) {
        names.set(agent.id, agent.name || agent.id);
      }
      this.names = names;
    } catch {
      // Agents come from Anthropic's API; without them the table shows agent ids (the list itself still works).
      return;
    }
    if (!this.disposed) {
      this.syncAgentOptions();
      this.redrawAll();
      const row = this.selected ? this.rows.get(this.selected) : undefined;
      if (row?.agent_id && this.detail && this.names.has(row.agent_id)) {
        this.detail.setRow(row, this.names.get(row.agent_id));
      }
    }
  }

  private onLive(m: LiveMessage): void {
    const id = String(m.data?.id || m.data?.session_id || m.session_id || '');
    if (id) {
      this.touched.add(id);
    }
    const result = applyLive(this.rows, m);
    if (!this.showTable) {
      // no table: nothing to draw or refetch
    } else if (result === 'unknown') {
      void this.refresh();
    } else if (result === 'changed') {
      this.scheduleDraw();
      if (m.kind === 'session.state') {
        // How the new sandbox started and its isolation come with the list only: one refetch for a burst of changes.
        if (this.stateRefetch === null) {
          this.stateRefetch = setTimeout(() => {
            this.stateRefetch = null;
            void this.refresh();
          }, STATE_REFETCH_MS);
        }
      }
    }
    if (id && id === this.selected && this.detail) {
      const row = this.rows.get(id);
      if (row) {
        this.detail.setRow(row, row.agent_id ? this.names.get(row.agent_id) : undefined);
      }
    }
  }

  private refetchIfQueryChanged(): void {
    if (JSON.stringify(this.query()) !== this.lastQuery) {
      void this.refresh();
    }
  }

  private showError(error: unknown): void {
    const status = error instanceof ApiError ? error.status : -1;
    const what = status === 403 ? ' (this page is not allowed to read jupyter-cma: log in again?)' : '';
    replaceChildren(this.errorSlot, message(`The sessions could not be read: ${errorMessage(error)}${what}`, 'error'));
  }

  // ------------------------------------------------------------------ filters

  private filterChanged(): void {
    this.filterState = cleanFilter({
      state: this.stateSelect.value,
      tier: this.tierSelect.value,
      agent: this.agentSelect.value,
      text: this.textInput.value
    });
    this.draw();
    this.refetchIfQueryChanged();
    this.options.onFilterChange?.(this.filter);
  }

  private syncControls(): void {
    this.stateSelect.value = this.filterState.state || '';
    this.tierSelect.value = this.filterState.tier || '';
    if (this.textInput.value.trim() !== (this.filterState.text || '')) {
      this.textInput.value = this.filterState.text || '';
    }
    this.syncAgentOptions();
  }

  private syncAgentOptions(): void {
    const wanted = this.filterState.agent || '';
    const agents = [...this.names.entries()].sort((a, b) => a[1].localeCompare(b[1]));
    const options = [h('option', { value: '' }, 'any agent')];
    let found = !wanted;
    for (const [id, name] of agents) {
      const same = id === wanted || name.toLowerCase() === wanted.toLowerCase();
      options.push(h('option', { value: same ? wanted : id, title: id }, name === id ? id : `${name}`));
      found = found || same;
    }
    if (!found) {
      options.push(h('option', { value: wanted }, wanted));
    }
    replaceChildren(this.agentSelect, options);
    this.agentSelect.value = wanted;
  }

  private applyShowTable(): void {
    this.toolbar.hidden = !this.showTable;
    this.summary.hidden = !this.showTable;
    this.tableWrap.hidden = !this.showTable;
    this.emptySlot.hidden = !this.showTable;
    this.detail?.setClosable(this.showTable);
  }

  // ------------------------------------------------------------------ drawing

  private drawLive(): void {
    const live = this.ctx.live.connected;
    replaceChildren(
      this.liveIndicator,
      h('span', { class: ['jp-cma-live-dot', live && 'jp-cma-on'] }),
      live ? 'live' : 'reconnecting…'
    );
    this.liveIndicator.title = live
      ? 'Updates arrive as they happen'
      : 'The live channel is down; the table shows the last snapshot and reconnects by itself';
    this.liveIndicator.classList.toggle('jp-cma-mod-live', live);
  }

  private drawHead(): void {
    replaceChildren(
      this.headRow,
      COLUMNS.map(col => {
        const sortable = col.key !== 'session';
        const current = sortable && this.sort.key === col.key;
        return h(
          'th',
          {
            scope: 'col',
            class: `jp-cma-col-${col.key}`,
            title: col.help,
            'aria-sort': current ? (this.sort.descending ? 'descending' : 'ascending') : 'none'
          },
          sortable
            ? h(
                'button',
                {
                  type: 'button',
                  class: 'jp-cma-sort',
                  'aria-label': `Sort by ${col.title.toLowerCase()}`,
                  onclick: () => this.sortBy(col.key as SortKey)
                },
                col.title
              )
            : col.title
        );
      })
    );
  }

  private sortBy(key: SortKey): void {
    this.sort = this.sort.key === key ? { key, descending: !this.sort.descending } : { key, descending: true };
    this.drawHead();
    this.draw();
  }

  private scheduleDraw(): void {
    if (this.renderScheduled) {
      return;
    }
    this.renderScheduled = true;
    const run = () => {
      this.renderScheduled = false;
      if (!this.disposed) {
        this.draw();
      }
    };
    if (typeof requestAnimationFrame === 'function') {
      requestAnimationFrame(run);
    } else {
      setTimeout(run, 16);
    }
  }

  private redrawAll(): void {
    this.trs.clear();
    replaceChildren(this.tbody);
    this.draw();
  }

  private draw(): void {
    const { rows, total } = visibleSessions(this.rows.values(), this.filterState, {
      sort: this.sort,
      names: this.names,
      max: this.ctx.maxRows ?? DEFAULT_MAX_ROWS
    });
    const now = nowSeconds();
    // A live update redraws and moves rows: the row the keyboard was on keeps the focus.
    const active = document.activeElement;
    const focusedId = active instanceof HTMLElement && this.tbody.contains(active) ? active.closest('tr')?.dataset.sessionId : undefined;
    const keep = new Set(rows.map(r => r.id));
    for (const [id, shown] of this.trs) {
      if (!keep.has(id)) {
        shown.tr.remove();
        this.trs.delete(id);
      }
    }
    let cursor: ChildNode | null = this.tbody.firstChild;
    for (const row of rows) {
      let shown = this.trs.get(row.id);
      if (!shown || shown.row !== row) {
        const fresh = this.drawRow(row, now);
        if (shown) {
          if (cursor === shown.tr) {
            cursor = fresh.tr;
          }
          shown.tr.replaceWith(fresh.tr);
        }
        shown = fresh;
        this.trs.set(row.id, shown);
      }
      if (shown.tr === cursor) {
        cursor = cursor.nextSibling;
      } else {
        this.tbody.insertBefore(shown.tr, cursor);
      }
    }
    if (focusedId) {
      const tr = this.trs.get(focusedId)?.tr;
      if (tr && document.activeElement !== tr) {
        tr.focus();
      }
    }
    const all = this.rows.size;
    const serving = [...this.rows.values()].filter(isServing).length;
    const filtered = total !== all ? ` · ${total} match the filters` : '';
    const capped = rows.length < total ? ` · showing the ${rows.length} most recent` : '';
    replaceChildren(this.summary, `${plural(all, 'session')} · ${serving} active${filtered}${capped}`);
    if (!this.loadedOnce) {
      replaceChildren(this.emptySlot, message('Loading sessions…', 'info'));
    } else if (all === 0) {
      replaceChildren(
        this.emptySlot,
        message('No sessions yet. Start one from the Agents tab, or in a notebook: cma.Agent.create(...).start("…").', 'info')
      );
    } else if (total === 0) {
      replaceChildren(this.emptySlot, message('No session matches these filters.', 'info'));
    } else {
      replaceChildren(this.emptySlot);
    }
  }

  private drawRow(row: SessionRow, now: number): { tr: HTMLTableRowElement; row: SessionRow; cells: Record<string, HTMLElement> } {
    const values = rowCells(row, this.names, now);
    const cells: Record<string, HTMLElement> = {};
    const tds = COLUMNS.map(col => {
      const td = h('td', { class: `jp-cma-col-${col.key}` }, values[col.key]);
      cells[col.key] = td;
      return td;
    });
    const selected = row.id === this.selected;
    const tr = h(
      'tr',
      {
        class: ['jp-cma-session-row', selected && 'jp-cma-selected'],
        dataset: { sessionId: row.id, state: row.status },
        tabindex: 0,
        'aria-selected': selected ? 'true' : 'false',
        onclick: () => this.select(row.id),
        onkeydown: (ev: KeyboardEvent) => this.rowKey(ev, row.id)
      },
      tds
    );
    return { tr, row, cells };
  }

  private drawTimes(): void {
    const now = nowSeconds();
    for (const { row, cells } of this.trs.values()) {
      const values = rowCells(row, this.names, now);
      for (const key of ['age', 'last_activity'] as const) {
        const text = values[key] as string;
        if (cells[key].textContent !== text) {
          cells[key].textContent = text;
        }
      }
    }
  }

  private drawSelection(): void {
    for (const [id, { tr }] of this.trs) {
      const selected = id === this.selected;
      tr.classList.toggle('jp-cma-selected', selected);
      tr.setAttribute('aria-selected', selected ? 'true' : 'false');
    }
  }

  private rowKey(ev: KeyboardEvent, id: string): void {
    const tr = ev.currentTarget as HTMLTableRowElement;
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      this.select(id);
    } else if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      const next = (ev.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling) as HTMLElement | null;
      next?.focus();
    }
  }

  private select(id: string): void {
    const next = this.selected === id ? null : id;
    this.showSession(next);
    this.options.onSelect?.(next);
  }

  private openDetail(id: string): void {
    this.closeDetail();
    const row = this.rows.get(id);
    this.detail = new SessionDetailView(this.ctx, {
      sessionId: id,
      row,
      agentName: row?.agent_id ? this.names.get(row.agent_id) : undefined,
      onClose: () => {
        this.showSession(null);
        this.options.onSelect?.(null);
        this.trs.get(id)?.tr.focus();
      }
    });
    this.detail.setClosable(this.showTable);
    this.detailSlot.appendChild(this.detail.node);
  }

  private closeDetail(): void {
    this.detail?.dispose();
    this.detail = null;
    replaceChildren(this.detailSlot);
  }
}

// ====================================================================== one session

export interface SessionDetailOptions {
  sessionId: string;
  /** the row the list has (shown at once; the detail reads its own too) */
  row?: SessionRow;
  agentName?: string;
  /** a close button calls this (absent: no close button) */
  onClose?(): void;
}

/** Where the page runs: JupyterLab (links under lab/) or Notebook 7. */
function inLab(): boolean {
  const path: string = (globalThis as any).location?.pathname ?? '';
  return /\/lab(\/|$)/.test(path) || !/\/(notebooks|tree|edit|terminals|consoles)(\/|$)/.test(path);
}

/** One session: facts, actions, its notebook edits (with Undo), the conversation as it streams, a message box, its egress rows. */
export class SessionDetailView implements View {
  readonly node: HTMLElement;
  readonly sessionId: string;
  private row: SessionRow | SessionDetail | null;
  private agentName: string;
  private events: SessionEvent[] = [];
  private disposed = false;
  private egress: EgressLogView | null = null;
  private agentAsked = false;
  private readonly transcript = new TranscriptView();
  /** its notebook edits (shown once it has one), read again as its notebook_edit calls progress */
  private readonly edits: NotebookEditsView;
  private editProgress = 0;
  private readonly subscriptions: Array<{ dispose(): void }> = [];

  private readonly title: HTMLElement;
  private readonly closeButton: HTMLButtonElement | null;
  private readonly facts: HTMLElement;
  private readonly stopButton: HTMLButtonElement;
  private readonly terminalButton: HTMLButtonElement;
  private readonly exportButton: HTMLButtonElement;
  private readonly notice: HTMLElement;
  private readonly turn: HTMLElement;
  private readonly textarea: HTMLTextAreaElement;
  private readonly sendButton: HTMLButtonElement;
  private readonly egressDetails: HTMLDetailsElement;

  /** Reads the new events (coalesced). */
  readonly refreshEvents: () => Promise<void>;
  /** Reads the session's row (coalesced). */
  readonly refreshRow: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly options: SessionDetailOptions) {
    this.sessionId = options.sessionId;
    this.row = options.row ?? null;
    this.agentName = options.agentName ?? '';

    this.title = h('h3', null);
    this.closeButton = options.onClose
      ? button('Close', () => options.onClose?.(), {
          class: 'jp-cma-session-close',
          'aria-label': 'Close the session detail',
          title: 'Back to the list'
        })
      : null;
    this.facts = h('div', { class: 'jp-cma-session-facts' });
    this.stopButton = button('Stop', () => void this.stop(), {
      class: ['jp-cma-session-stop', 'jp-cma-danger'],
      title: 'Stop the sandbox serving this session now (its running tool call is cut off)'
    });
    this.terminalButton = button('Open terminal', () => void this.terminal(), {
      class: 'jp-cma-session-terminal',
      title: "A login shell inside this session's container"
    });
    this.exportButton = button('Export notebook', () => void this.exportNotebook(), {
      class: 'jp-cma-session-export',
      title: "This session's python calls as a notebook, with their outputs"
    });
    this.notice = h('div', { class: 'jp-cma-session-notice', 'aria-live': 'polite' });
    this.turn = h('div', { class: 'jp-cma-turn-state', 'aria-live': 'polite' });
    this.textarea = h('textarea', {
      class: 'jp-cma-session-message',
      rows: 2,
      placeholder: 'Send the session a message (Ctrl+Enter)',
      'aria-label': 'Message to the session',
      onkeydown: (ev: KeyboardEvent) => {
        if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
          ev.preventDefault();
          void this.send();
        }
      }
    });
    this.sendButton = button('Send', () => void this.send(), { class: ['jp-cma-session-send-button', 'jp-cma-primary'] });
    this.egressDetails = h(
      'details',
      {
        class: 'jp-cma-session-egress',
        ontoggle: () => this.toggleEgress()
      },
      h('summary', null, 'Egress: requests this session sent out')
    );
    this.edits = new NotebookEditsView(ctx, { sessionId: this.sessionId, title: 'Notebook edits', hideWhenEmpty: true });
    this.node = h(
      'section',
      {
        class: 'jp-cma-session-detail',
        dataset: { sessionId: this.sessionId },
        'aria-label': `Session ${this.sessionId}`
      },
      h('div', { class: 'jp-cma-session-detail-head' }, this.title, this.closeButton),
      this.facts,
      h('div', { class: 'jp-cma-toolbar jp-cma-session-actions' }, this.stopButton, this.terminalButton, this.exportButton),
      this.notice,
      this.edits.node,
      this.turn,
      this.transcript.node,
      h('div', { class: 'jp-cma-session-send' }, this.textarea, this.sendButton),
      this.egressDetails
    );
    this.drawFacts();
    this.transcript.update([]);
    this.turn.textContent = 'reading the conversation…';

    this.refreshEvents = coalesce(
      () => this.fetchEvents(),
      e => this.say(`The conversation could not be read: ${errorMessage(e)}`, 'error')
    );
    this.refreshRow = coalesce(
      () => this.fetchRow(),
      () => undefined // a session this server never served has no row: the conversation still shows
    );
    this.subscriptions.push(
      ctx.live.listen(
        { kinds: ['session.event', 'session.state', 'session.tool'], sessions: [this.sessionId] },
        {
          message: m => {
            if ((m.session_id ?? m.data?.session_id ?? m.data?.id) !== this.sessionId) {
              return;
            }
            if (m.kind === 'session.event') {
              void this.refreshEvents();
            } else {
              void this.refreshRow();
            }
          },
          resync: () => {
            void this.refreshEvents();
            void this.refreshRow();
            void this.edits.refresh();
          }
        }
      )
    );
    void this.refreshEvents();
    void this.refreshRow();
  }

  /** The list's newer row for this session. */
  setRow(row: SessionRow, agentName?: string): void {
    const sandbox = row.sandbox ? { ...(this.row?.sandbox ?? {}), ...row.sandbox } : null;
    this.row = { ...(this.row ?? {}), ...row, sandbox } as SessionRow;
    if (agentName) {
      this.agentName = agentName;
    }
    this.drawFacts();
  }

  /** Show or hide the close button. */
  setClosable(closable: boolean): void {
    if (this.closeButton) {
      this.closeButton.hidden = !closable;
    }
  }

  dispose(): void {
    if (this.disposed) {
      return;
    }
    this.disposed = true;
    this.subscriptions.forEach(s => s.dispose());
    this.egress?.dispose();
    this.egress = null;
    this.edits.dispose();
    this.transcript.dispose();
    this.node.remove();
  }

  // ------------------------------------------------------------------ data

  private async fetchEvents(): Promise<void> {
    // Read from the latest processed event on (all of it the first time), page after page until a short page.
    for (let pages = 0; pages < 100 && !this.disposed; pages++) {
      const after = eventsCursor(this.events);
      const page = await this.ctx.api.events(this.sessionId, { limit: EVENTS_PAGE, after });
      const data = page.data || [];
      const merged = mergeEvents(this.events, data);
      this.events = merged.events;
      if (merged.changed) {
        this.drawTranscript();
      }
      if (data.length < EVENTS_PAGE || eventsCursor(this.events) === after) {
        break;
      }
    }
    if (!this.disposed) {
      this.drawTranscript();
    }
  }

  private async fetchRow(): Promise<void> {
    const row = await this.ctx.api.session(this.sessionId);
    if (this.disposed) {
      return;
    }
    // `GET sessions/{id}` describes the sandbox in full; the list's summary (tool calls, last activity) stays.
    const sandbox = row.sandbox ? { ...(this.row?.sandbox ?? {}), ...row.sandbox } : null;
    this.row = { ...(this.row ?? {}), ...row, sandbox } as SessionDetail;
    this.drawFacts();
    if ((!this.agentName || this.agentName === row.agent_id) && row.agent_id && !this.agentAsked) {
      this.agentAsked = true;
      // Shown alone (a displayed cma.Session), the detail has no list to name the agent: ask once.
      this.agentName = row.agent_id;
      try {
        const agent = await this.ctx.api.agent(row.agent_id);
        this.agentName = agent.name || row.agent_id;
      } catch {
        return; // the id stays
      }
      if (!this.disposed) {
        this.drawFacts();
      }
    }
  }

  // ------------------------------------------------------------------ actions

  private async stop(): Promise<void> {
    this.stopButton.disabled = true;
    try {
      await this.ctx.api.stopSession(this.sessionId);
      this.say('Stopped: its sandbox is gone. A new message starts the session again.', 'info');
      void this.refreshRow();
    } catch (error) {
      this.say(
        error instanceof ApiError && error.status === 409
          ? 'No sandbox serves this session now: there is nothing to stop.'
          : `It could not be stopped: ${errorMessage(error)}`,
        error instanceof ApiError && error.status === 409 ? 'info' : 'error'
      );
    } finally {
      this.drawFacts();
    }
  }

  private async terminal(): Promise<void> {
    this.terminalButton.disabled = true;
    try {
      if (this.ctx.openTerminal) {
        await this.ctx.openTerminal(this.sessionId);
        this.say('The terminal is open in a new tab of JupyterLab.', 'info');
      } else {
        const info = await this.ctx.api.openTerminal(this.sessionId);
        const url = this.ctx.transport.baseUrl + info.url;
        this.say(
          h(
            'span',
            null,
            `Terminal ${info.name} is ready, a login shell in the session's container: find it in the Running panel, or `,
            h('a', { href: url, target: '_blank', rel: 'noopener', class: 'jp-cma-session-terminal-link' }, 'open it in a new tab'),
            '.'
          ),
          'info'
        );
      }
    } catch (error) {
      this.say(`No terminal: ${errorMessage(error)}`, 'error');
    } finally {
      this.drawFacts();
    }
  }

  private async exportNotebook(): Promise<void> {
    this.exportButton.disabled = true;
    const path = `${this.sessionId}.ipynb`;
    try {
      const notebook = await this.ctx.api.notebook(this.sessionId);
      if (!Array.isArray(notebook?.cells) || notebook.cells.length === 0) {
        this.say('This session has no recorded python calls yet: only kernel-tier sessions record them, once they made one.', 'warn');
        return;
      }
      const saved = await this.saveToContents(path, notebook);
      if (saved && this.ctx.openNotebook) {
        await this.ctx.openNotebook(path);
        this.say(`Exported to ${path} and opened.`, 'info');
      } else if (saved) {
        const url = this.ctx.transport.baseUrl + (inLab() ? 'lab/tree/' : 'notebooks/') + encodeURI(path);
        this.say(
          h(
            'span',
            null,
            `Exported to ${path} (in the server's root folder): `,
            h('a', { href: url, target: '_blank', rel: 'noopener', class: 'jp-cma-session-notebook-link' }, 'open it'),
            '.'
          ),
          'info'
        );
      } else {
        download(path, JSON.stringify(notebook, null, 1), 'application/x-ipynb+json');
        this.say(`Downloaded as ${path}.`, 'info');
      }
    } catch (error) {
      this.say(`The notebook could not be exported: ${errorMessage(error)}`, 'error');
    } finally {
      this.drawFacts();
    }
  }

  /** Saves a notebook through Jupyter's contents API (beside cma/api/ under the base URL); false if refused. */
  private async saveToContents(path: string, notebook: unknown): Promise<boolean> {
    try {
      const response = await this.ctx.transport.fetchRaw(`../../api/contents/${encodeURI(path)}`, {
        method: 'PUT',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ type: 'notebook', format: 'json', content: notebook })
      });
      return response.ok;
    } catch {
      return false;
    }
  }

  private async send(): Promise<void> {
    const text = this.textarea.value.trim();
    if (!text) {
      this.textarea.focus();
      return;
    }
    this.sendButton.disabled = true;
    try {
      await this.ctx.api.sendMessage(this.sessionId, text);
      this.textarea.value = '';
      this.say('Sent.', 'info');
      void this.refreshEvents();
    } catch (error) {
      this.say(`The message was not sent: ${errorMessage(error)}`, 'error');
    } finally {
      this.sendButton.disabled = false;
    }
  }

  private toggleEgress(): void {
    if (this.egressDetails.open && !this.egress) {
      this.egress = new EgressLogView(this.ctx, { sessionId: this.sessionId });
      this.egressDetails.appendChild(this.egress.node);
    }
  }

  // ------------------------------------------------------------------ drawing

  private say(text: string | Node, kind: 'error' | 'warn' | 'info'): void {
    if (!this.disposed) {
      replaceChildren(this.notice, message(text, kind));
    }
  }

  private drawTranscript(): void {
    const progress = notebookEditProgress(this.events);
    if (progress > this.editProgress) {
      this.editProgress = progress;
      void this.edits.refresh();
    }
    this.transcript.update(transcriptItems(this.events));
    this.turn.textContent = describeTurn(turnState(this.events));
  }

  private drawFacts(): void {
    const row = this.row;
    const title = row?.title ? ` — ${row.title}` : '';
    replaceChildren(this.title, 'Session ', h('span', { class: 'jp-cma-mono' }, this.sessionId), title);
    const fact = (name: string, value: string | Node) =>
      h('span', { class: 'jp-cma-fact' }, h('span', { class: 'jp-cma-fact-name' }, name), ' ', h('span', { class: 'jp-cma-fact-value' }, value));
    const sandbox = row?.sandbox ?? null;
    // the list's count, else the sandbox's own (`GET sessions/{id}` of a kernel sandbox says `calls`)
    const calls = typeof sandbox?.tool_calls === 'number' ? sandbox.tool_calls : typeof sandbox?.calls === 'number' ? sandbox.calls : null;
    replaceChildren(
      this.facts,
      row
        ? [
            fact('state', stateBadge(row.status)),
            fact('agent', this.agentName || row.agent_id || '–'),
            fact('tier', row.tier || '–'),
            fact('isolation', (sandbox?.isolation as string) || (row.tier === 'container' ? 'container' : '–')),
            sandbox?.start ? fact('start', String(sandbox.start)) : null,
            fact('cold start', ms(row.cold_start_ms)),
            calls !== null ? fact('tool calls', String(calls)) : null,
            row.created_at ? fact('age', age(row.created_at).replace(/ ago$/, '')) : null
          ]
        : fact('state', 'not served by this server yet')
    );
    const serving = row ? isServing(row as SessionRow) : false;
    this.stopButton.disabled = !serving;
    this.terminalButton.hidden = row?.tier !== 'container';
    this.terminalButton.disabled = !serving;
    this.exportButton.hidden = row?.tier !== 'kernel';
    this.exportButton.disabled = false;
  }
}
