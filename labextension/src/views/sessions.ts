/** Placeholder of the sessions views (list with filters, detail with transcript, egress rows and actions). */
import { h } from '../core/dom.js';
import type { View, ViewContext } from '../core/view.js';

export interface SessionsViewOptions {
  /** show this session's detail first */
  sessionId?: string;
}

export class SessionsView implements View {
  readonly node: HTMLElement;

  constructor(readonly ctx: ViewContext, readonly options: SessionsViewOptions = {}) {
    this.node = h('div', { class: 'jp-cma-view jp-cma-sessions' }, h('p', { class: 'jp-cma-muted' }, 'Sessions'));
  }

  /** Show one session's detail (the sidebar calls this after "new session"). */
  showSession(sessionId: string): void {
    this.node.dataset.sessionId = sessionId;
  }

  dispose(): void {
    this.node.remove();
  }
}
