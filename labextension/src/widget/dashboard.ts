/**
 * `cma.dashboard()`'s ES module (anywidget): the sessions view, talking to the page's Jupyter server directly
 * (REST and the live channel), never through the kernel: it updates while a cell runs, and a page reload renders
 * it again from the REST API. The model's traits are the filters and the selected session, synced both ways.
 */
import type { SessionFilter } from '../views/sessions-model.js';
import { SessionsView } from '../views/sessions.js';
import { onTraits, text, WidgetModel, widgetContext } from './_host.js';

const FILTERS = ['state', 'tier', 'agent', 'text'] as const;

function filterOf(model: WidgetModel): SessionFilter {
  return { state: text(model, 'state'), tier: text(model, 'tier'), agent: text(model, 'agent'), text: text(model, 'text') };
}

export default {
  render({ model, el }: { model: WidgetModel; el: HTMLElement }): () => void {
    const limit = Number(model.get('limit'));
    const view = new SessionsView(widgetContext(), {
      filter: filterOf(model),
      sessionId: text(model, 'session') || undefined,
      showTable: model.get('show_table') !== false,
      limit: Number.isFinite(limit) && limit > 0 ? limit : 200,
      onSelect: sessionId => {
        model.set('session', sessionId ?? '');
        model.save_changes();
      },
      onFilterChange: filter => {
        for (const key of FILTERS) {
          model.set(key, filter[key] ?? '');
        }
        model.save_changes();
      }
    });
    el.classList.add('jp-cma-widget');
    el.appendChild(view.node);
    const stops = [
      onTraits(model, [...FILTERS], () => view.setFilter(filterOf(model))),
      onTraits(model, ['session'], () => view.showSession(text(model, 'session') || null)),
      onTraits(model, ['show_table'], () => view.setShowTable(model.get('show_table') !== false)),
      onTraits(model, ['limit'], () => view.setLimit(Number(model.get('limit'))))
    ];
    return () => {
      stops.forEach(stop => stop());
      view.dispose();
    };
  }
};
