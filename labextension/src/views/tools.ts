/**
 * The Tools view: what agents can be given, from GET tools — the built-in families (run in the Jupyter server,
 * enabled per agent) with whether this server can run each and, when not, why and the fix; their tools and
 * settings; each tier's standard tools (run in the session's sandbox); the notebook tools kernels registered
 * (run in their notebook's kernel) and the server's own tools — and the agents' most recent notebook edits, with
 * Undo. The catalog is refetched on the live channel's `tools.changed` and `status.changed` and on a resync; the
 * edits on `session.tool` and a resync. The logic is in tools-model.ts.
 */
import { button, h, message, replaceChildren } from '../core/dom.js';
import { errorMessage, plural } from '../core/format.js';
import { coalesce } from '../core/live.js';
import type { View, ViewContext } from '../core/view.js';
import { groupToolCatalog, ToolCatalog as NotebookCatalog } from './agents-model.js';
import { NotebookEditsView } from './tools-edits.js';
import { builtinFamilies, Family, familyFacts, runsLabel, standardTiers, TierTools } from './tools-model.js';

/** Recent edits the Tools tab lists. */
const RECENT_EDITS = 20;

export class ToolsView implements View {
  readonly node: HTMLElement;

  private families: Family[] = [];
  private tiers: TierTools[] = [];
  private notebook: NotebookCatalog = { groups: [], server: [] };
  private loaded = false;
  private disposed = false;
  private readonly subscriptions: Array<{ dispose(): void }> = [];

  private readonly summary: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly builtinSection: HTMLElement;
  private readonly standardSection: HTMLElement;
  private readonly notebookSection: HTMLElement;
  readonly edits: NotebookEditsView;

  private readonly loadCatalog: () => Promise<void>;

  constructor(readonly ctx: ViewContext) {
    this.summary = h('span', { class: 'jp-cma-tools-summary jp-cma-muted', 'aria-live': 'polite' });
    this.notice = h('div', { class: 'jp-cma-tools-notice', 'aria-live': 'polite' });
    this.builtinSection = h('div', { class: 'jp-cma-families' });
    this.standardSection = h('div', { class: 'jp-cma-standard-tools' });
    this.notebookSection = h('div', { class: 'jp-cma-notebook-tools' });
    this.edits = new NotebookEditsView(ctx, { limit: RECENT_EDITS });
    const section = (cls: string, title: string, intro: string, body: HTMLElement) =>
      h('section', { class: ['jp-cma-tools-section', cls] }, h('h3', null, title), h('p', { class: 'jp-cma-muted jp-cma-tools-intro' }, intro), body);
    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-tools' },
      h(
        'div',
        { class: 'jp-cma-toolbar' },
        button('Refresh', () => this.refresh(), { class: 'jp-cma-tools-refresh', title: 'Read the tool catalog and the notebook edits again' }),
        this.summary
      ),
      this.notice,
      section(
        'jp-cma-tools-builtin',
        'Built-in tools',
        'Run in the Jupyter server, never in a sandbox; given to an agent per family (Agents → New agent or Edit). ' +
          "What they send out goes through the session's egress policy.",
        this.builtinSection
      ),
      section('jp-cma-tools-standard', 'Standard tools', "What each tier gives every agent; they run in the session's sandbox.", this.standardSection),
      section(
        'jp-cma-tools-notebook',
        'Notebook tools',
        "Functions a notebook registered with @cma.tool; each runs in its notebook's kernel, for the agents given it.",
        this.notebookSection
      ),
      h(
        'section',
        { class: ['jp-cma-tools-section', 'jp-cma-tools-edits'] },
        h('h3', null, 'Recent notebook edits'),
        h('p', { class: 'jp-cma-muted jp-cma-tools-intro' }, 'Edits agents made with notebook_edit, newest first; Undo restores the notebook as it was before one.'),
        this.edits.node
      )
    );
    this.loadCatalog = coalesce(() => this.fetchCatalog(), e => this.say(`The tool catalog could not be loaded: ${errorMessage(e)}`, 'error'));
    this.subscriptions.push(
      ctx.live.listen(
        { kinds: ['tools.changed', 'status.changed', 'session.tool'] },
        {
          message: m => {
            if (m.kind === 'session.tool') {
              void this.edits.refresh();
            } else {
              void this.loadCatalog();
            }
          },
          resync: () => this.refresh()
        }
      )
    );
    this.draw();
    void this.loadCatalog();
  }

  dispose(): void {
    this.disposed = true;
    this.subscriptions.forEach(s => s.dispose());
    this.subscriptions.length = 0;
    this.edits.dispose();
    this.node.remove();
  }

  /** Reads the catalog and the edits again. */
  refresh(): void {
    void this.loadCatalog();
    void this.edits.refresh();
  }

  private async fetchCatalog(): Promise<void> {
    const catalog = await this.ctx.api.tools();
    if (this.disposed) {
      return;
    }
    this.families = builtinFamilies(catalog);
    this.tiers = standardTiers(catalog);
    this.notebook = groupToolCatalog(catalog);
    this.loaded = true;
    replaceChildren(this.notice);
    this.draw();
  }

  private say(text: string, kind: 'error' | 'warn' | 'info'): void {
    if (!this.disposed) {
      replaceChildren(this.notice, message(text, kind));
    }
  }

  // ------------------------------------------------------------------ drawing

  private draw(): void {
    const available = this.families.filter(f => f.available).length;
    this.summary.textContent = this.loaded
      ? `${plural(this.families.length, 'built-in family', 'built-in families')} · ${available} available here`
      : 'Loading…';
    replaceChildren(
      this.builtinSection,
      this.families.length
        ? this.families.map(f => this.family(f))
        : h('p', { class: 'jp-cma-muted' }, this.loaded ? 'This server offers no built-in tools.' : 'Loading…')
    );
    replaceChildren(this.standardSection, this.tiers.map(t => this.tier(t)));
    this.drawNotebookTools();
  }

  private family(f: Family): HTMLElement {
    const id = `jp-cma-family-${f.key}`;
    return h(
      'article',
      {
        class: ['jp-cma-family', f.available ? 'jp-cma-family-available' : 'jp-cma-family-unavailable'],
        dataset: { family: f.key, available: String(f.available) },
        'aria-labelledby': id
      },
      h(
        'div',
        { class: 'jp-cma-family-head' },
        h('span', { class: 'jp-cma-family-title', id }, f.title),
        h('span', { class: 'jp-cma-mono jp-cma-muted jp-cma-family-key' }, f.key),
        h(
          'span',
          { class: ['jp-cma-family-state', f.available ? 'jp-cma-ok' : 'jp-cma-bad'] },
          f.available ? 'available' : 'unavailable'
        )
      ),
      f.summary ? h('div', { class: 'jp-cma-family-summary' }, f.summary) : null,
      f.available ? null : h('div', { class: 'jp-cma-family-reason', role: 'note' }, f.reason),
      f.requires ? h('div', { class: 'jp-cma-muted jp-cma-family-requires' }, `Needs: ${f.requires}`) : null,
      h(
        'div',
        { class: 'jp-cma-family-tools' },
        'Tools: ',
        f.tools.map((t, i) => [
          i ? ', ' : '',
          h(
            'span',
            { class: 'jp-cma-mono jp-cma-family-tool', dataset: { tool: t.name }, title: `${t.description}${t.description ? '\n' : ''}Runs ${runsLabel(t.runs)}.` },
            t.name
          )
        ]),
        h('span', { class: 'jp-cma-muted jp-cma-family-facts' }, ` · ${familyFacts(f)}`)
      ),
      f.settings.length
        ? h(
            'div',
            { class: 'jp-cma-muted jp-cma-family-settings' },
            'Settings per agent: ',
            f.settings.map((s, i) => [
              i ? ', ' : '',
              h('span', { class: 'jp-cma-mono', title: s.description }, s.name),
              s.options.length ? ` (${s.options.join(' | ')})` : ''
            ])
          )
        : null
    );
  }

  private tier(t: TierTools): HTMLElement {
    const own = t.tools.filter(tool => tool.reason);
    return h(
      'div',
      { class: ['jp-cma-tier-tools', !t.available && 'jp-cma-tier-tools-unavailable'], dataset: { tier: t.tier, available: String(t.available) } },
      h('span', { class: 'jp-cma-tier-tools-name' }, `${t.tier}: `),
      t.tools.map((tool, i) => [
        i ? ', ' : '',
        h(
          'span',
          {
            class: ['jp-cma-mono', 'jp-cma-standard-tool', tool.reason !== null && 'jp-cma-standard-tool-off'],
            dataset: { tool: tool.name, runs: tool.runs },
            title: [`runs ${runsLabel(tool.runs)}`, tool.note, tool.reason && `not available: ${tool.reason}`].filter(Boolean).join('; ')
          },
          tool.name,
          tool.runs !== 'sandbox' ? h('sup', { class: 'jp-cma-muted' }, tool.runs === 'anthropic' ? ' upstream' : ` ${tool.runs}`) : null
        )
      ]),
      t.available ? null : h('div', { class: 'jp-cma-tier-tools-reason', role: 'note' }, `This tier cannot serve sessions now: ${t.reason}`),
      own.length ? h('div', { class: 'jp-cma-muted jp-cma-tier-tools-off' }, own.map(tool => `${tool.name}: ${tool.reason}`).join('; ')) : null,
      t.off.length ? h('div', { class: 'jp-cma-muted jp-cma-tier-tools-off' }, `Not given on this tier: ${t.off.join(', ')}`) : null
    );
  }

  private drawNotebookTools(): void {
    const groups = this.notebook.groups.map(g =>
      h(
        'div',
        { class: 'jp-cma-tool-group', dataset: { kernelId: g.kernel_id } },
        h(
          'div',
          { class: 'jp-cma-tool-group-label' },
          g.notebook && this.ctx.openNotebook
            ? h(
                'button',
                { type: 'button', class: 'jp-cma-linklike', title: `Open ${g.notebook}`, onclick: () => void this.ctx.openNotebook?.(g.notebook!) },
                g.label
              )
            : g.label,
          h('span', { class: 'jp-cma-muted' }, ` · kernel ${g.kernel_id.slice(0, 8)}`)
        ),
        h(
          'ul',
          { class: 'jp-cma-notebook-tool-list' },
          g.tools.map(t =>
            h(
              'li',
              { class: 'jp-cma-notebook-tool', dataset: { tool: t.name } },
              h('span', { class: 'jp-cma-mono jp-cma-tool-name' }, t.name),
              t.description ? h('span', { class: 'jp-cma-muted jp-cma-tool-desc' }, ` — ${firstSentence(t.description)}`) : null
            )
          )
        )
      )
    );
    replaceChildren(
      this.notebookSection,
      groups.length
        ? groups
        : h(
            'p',
            { class: 'jp-cma-muted' },
            this.loaded ? 'No notebook has registered a tool. In a notebook, decorate a function with @cma.tool and run the cell: it appears here.' : 'Loading…'
          ),
      this.notebook.server.length
        ? h(
            'p',
            { class: 'jp-cma-muted jp-cma-tools-server' },
            "This server's own tools (every session has them): ",
            this.notebook.server.map((t, i) => [i ? ', ' : '', h('span', { class: 'jp-cma-mono', title: t.description }, t.name)])
          )
        : null
    );
  }
}

/** A description's first sentence (the rest is in the agent's definition). */
function firstSentence(text: string): string {
  const m = /^(.+?[.!?])(\s|$)/s.exec(text.trim());
  const first = (m ? m[1] : text.trim()).replace(/\s+/g, ' ');
  return first.length > 160 ? `${first.slice(0, 157)}…` : first;
}
