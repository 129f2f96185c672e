/** Placeholder of the egress views: the live log, policies, "explain this request" and secrets. */
import { h } from '../core/dom.js';
import type { View, ViewContext } from '../core/view.js';

/** The Egress tab: log, policies, explain, secrets. */
export class EgressView implements View {
  readonly node: HTMLElement;

  constructor(readonly ctx: ViewContext) {
    this.node = h('div', { class: 'jp-cma-view jp-cma-egress' }, h('p', { class: 'jp-cma-muted' }, 'Egress'));
  }

  dispose(): void {
    this.node.remove();
  }
}

export interface EgressLogViewOptions {
  /** only this session's rows */
  sessionId?: string;
}

/** The live egress log alone (also the notebook's cma.egress_log() and a session's detail). */
export class EgressLogView implements View {
  readonly node: HTMLElement;

  constructor(readonly ctx: ViewContext, readonly options: EgressLogViewOptions = {}) {
    this.node = h('div', { class: 'jp-cma-view jp-cma-egress-log' }, h('p', { class: 'jp-cma-muted' }, 'Egress log'));
  }

  dispose(): void {
    this.node.remove();
  }
}
