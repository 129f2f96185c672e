/** Placeholder of the webhooks view (received deliveries, paged). */
import { h } from '../core/dom.js';
import type { View, ViewContext } from '../core/view.js';

export class WebhooksView implements View {
  readonly node: HTMLElement;

  constructor(readonly ctx: ViewContext) {
    this.node = h('div', { class: 'jp-cma-view jp-cma-webhooks' }, h('p', { class: 'jp-cma-muted' }, 'Webhooks'));
  }

  dispose(): void {
    this.node.remove();
  }
}
