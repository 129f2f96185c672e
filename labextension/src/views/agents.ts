/** Placeholder of the agents view (list; create/edit with tier and a tool picker). */
import { h } from '../core/dom.js';
import type { View, ViewContext } from '../core/view.js';

export class AgentsView implements View {
  readonly node: HTMLElement;

  constructor(readonly ctx: ViewContext) {
    this.node = h('div', { class: 'jp-cma-view jp-cma-agents' }, h('p', { class: 'jp-cma-muted' }, 'Agents'));
  }

  dispose(): void {
    this.node.remove();
  }
}
