/**
 * The left sidebar panel "Claude agents": the setup view on top while the server is not ready, and a tab bar
 * Agents | Sessions | Tools | Egress | Webhooks. Each tab's view is created the first time the tab is shown (so a
 * closed tab costs no requests), and lives as long as the panel.
 */
import { Widget } from '@lumino/widgets';

import { button, h } from '../core/dom.js';
import type { View, ViewContext } from '../core/view.js';
import { AgentsView } from '../views/agents.js';
import { EgressView } from '../views/egress.js';
import { SessionsView } from '../views/sessions.js';
import { SetupView } from '../views/setup.js';
import { ToolsView } from '../views/tools.js';
import { WebhooksView } from '../views/webhooks.js';

export const PANEL_ID = 'jupyter-cma-panel';

export type TabName = 'agents' | 'sessions' | 'tools' | 'egress' | 'webhooks';

interface Tab {
  name: TabName;
  label: string;
  create(ctx: ViewContext): View;
}

export const TABS: Tab[] = [
  { name: 'agents', label: 'Agents', create: ctx => new AgentsView(ctx) },
  { name: 'sessions', label: 'Sessions', create: ctx => new SessionsView(ctx) },
  { name: 'tools', label: 'Tools', create: ctx => new ToolsView(ctx) },
  { name: 'egress', label: 'Egress', create: ctx => new EgressView(ctx) },
  { name: 'webhooks', label: 'Webhooks', create: ctx => new WebhooksView(ctx) }
];

/** The index of the tab a key press moves to (arrow keys wrap, Home/End), or null for other keys. */
export function tabIndexForKey(key: string, current: number, count: number): number | null {
  switch (key) {
    case 'ArrowRight':
    case 'ArrowDown':
      return (current + 1) % count;
    case 'ArrowLeft':
    case 'ArrowUp':
      return (current - 1 + count) % count;
    case 'Home':
      return 0;
    case 'End':
      return count - 1;
    default:
      return null;
  }
}

export class CmaPanel extends Widget {
  readonly setup: SetupView;
  private readonly views = new Map<TabName, View>();
  private readonly tabButtons = new Map<TabName, HTMLButtonElement>();
  private readonly tabPanels = new Map<TabName, HTMLElement>();
  private readonly setupArea: HTMLElement;
  private readonly setupToggle: HTMLButtonElement;
  private readonly liveDot: HTMLElement;
  private readonly liveListener: { dispose(): void };
  private current: TabName = 'sessions';
  private setupShown = true;
  private setupPinned = false;

  constructor(readonly ctx: ViewContext) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-cma-panel');
    this.title.caption = 'Claude agents';

    this.liveDot = h('span', { class: 'jp-cma-live-dot', role: 'img', 'aria-label': 'Live updates: connecting' });
    this.setupToggle = button('Setup', () => this.toggleSetup(), {
      class: 'jp-cma-setup-toggle',
      'aria-expanded': 'true',
      title: 'Show or hide what this server lacks and how to fix it'
    });
    const header = h('div', { class: 'jp-cma-panel-header' }, h('h2', { class: 'jp-cma-panel-title' }, 'Claude agents'), this.liveDot, this.setupToggle);

    this.setupArea = h('div', { class: 'jp-cma-panel-setup' });
    this.setup = new SetupView(ctx, {
      onReadyChange: ready => {
        if (!this.setupPinned) {
          this.setSetupShown(!ready);
        }
      }
    });
    this.setupArea.appendChild(this.setup.node);

    const tablist = h('div', { class: 'jp-cma-tabs', role: 'tablist', 'aria-label': 'Claude agents' });
    const panels: HTMLElement[] = [];
    TABS.forEach((tab, index) => {
      const tabId = `${PANEL_ID}-tab-${tab.name}`;
      const panelId = `${PANEL_ID}-tabpanel-${tab.name}`;
      const b = h(
        'button',
        {
          type: 'button',
          class: 'jp-cma-tab',
          role: 'tab',
          id: tabId,
          'aria-controls': panelId,
          'aria-selected': 'false',
          tabIndex: -1,
          dataset: { tab: tab.name },
          onclick: () => this.showTab(tab.name),
          onkeydown: (ev: KeyboardEvent) => {
            const next = tabIndexForKey(ev.key, index, TABS.length);
            if (next !== null) {
              ev.preventDefault();
              this.showTab(TABS[next].name);
              this.tabButtons.get(TABS[next].name)?.focus();
            }
          }
        },
        tab.label
      );
      this.tabButtons.set(tab.name, b);
      tablist.appendChild(b);
      const p = h('div', { class: 'jp-cma-tabpanel', role: 'tabpanel', id: panelId, 'aria-labelledby': tabId, hidden: true, dataset: { tab: tab.name } });
      this.tabPanels.set(tab.name, p);
      panels.push(p);
    });
    this.node.append(header, this.setupArea, tablist, ...panels);

    this.liveListener = ctx.live.onConnectionChange(connected => this.showLive(connected));
    this.showLive(ctx.live.connected);
    this.showTab(this.current);
  }

  /** The tab shown now. */
  get currentTab(): TabName {
    return this.current;
  }

  /** Shows a tab, creating its view the first time. */
  showTab(name: TabName): View {
    this.current = name;
    for (const tab of TABS) {
      const selected = tab.name === name;
      const b = this.tabButtons.get(tab.name)!;
      b.setAttribute('aria-selected', String(selected));
      b.tabIndex = selected ? 0 : -1;
      this.tabPanels.get(tab.name)!.hidden = !selected;
    }
    let view = this.views.get(name);
    if (!view) {
      view = TABS.find(t => t.name === name)!.create(this.ctx);
      this.views.set(name, view);
      this.tabPanels.get(name)!.appendChild(view.node);
    }
    return view;
  }

  /** Shows one session's detail in the Sessions tab. */
  showSession(sessionId: string): void {
    const view = this.showTab('sessions') as View & { showSession?(id: string): void };
    view.showSession?.(sessionId);
  }

  /** Shows the setup view (e.g. from the status bar when something is wrong). */
  showSetup(): void {
    this.setupPinned = true;
    this.setSetupShown(true);
    void this.setup.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.liveListener.dispose();
    this.setup.dispose();
    for (const view of this.views.values()) {
      view.dispose();
    }
    this.views.clear();
    super.dispose();
  }

  private toggleSetup(): void {
    this.setupPinned = true;
    this.setSetupShown(!this.setupShown);
  }

  private setSetupShown(shown: boolean): void {
    this.setupShown = shown;
    this.setupArea.hidden = !shown;
    this.setupToggle.setAttribute('aria-expanded', String(shown));
  }

  private showLive(connected: boolean): void {
    this.liveDot.classList.toggle('jp-cma-on', connected);
    const label = connected ? 'Live updates: connected' : 'Live updates: reconnecting';
    this.liveDot.setAttribute('aria-label', label);
    this.liveDot.title = label;
  }
}
