/**
 * `cma.egress_log()`'s ES module (anywidget): the live egress log, talking to the page's Jupyter server directly
 * (REST and the live channel), never through the kernel. The model's traits (`session`, `decision`, `host`) are
 * its filters; a change draws the view again with the new ones.
 */
import { EgressLogView, EgressLogViewOptions } from '../views/egress.js';
import { onTraits, text, WidgetModel, widgetContext } from './_host.js';

const TRAITS = ['session', 'decision', 'host'];

function optionsOf(model: WidgetModel): EgressLogViewOptions {
  const filter = { session: text(model, 'session'), decision: text(model, 'decision'), host: text(model, 'host') };
  // sessionId is the view's documented option; the filter carries the others for a view that takes them.
  return { sessionId: filter.session || undefined, filter } as EgressLogViewOptions;
}

export default {
  render({ model, el }: { model: WidgetModel; el: HTMLElement }): () => void {
    const ctx = widgetContext();
    let view = new EgressLogView(ctx, optionsOf(model));
    el.classList.add('jp-cma-widget');
    el.appendChild(view.node);
    const stop = onTraits(model, TRAITS, () => {
      const next = new EgressLogView(ctx, optionsOf(model));
      view.node.replaceWith(next.node);
      view.dispose();
      view = next;
    });
    return () => {
      stop();
      view.dispose();
    };
  }
};
