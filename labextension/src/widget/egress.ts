/** Placeholder of the cma.egress_log() widget's ES module (anywidget): the live egress log. */
import { pageContext } from '../core/view.js';
import { EgressLogView } from '../views/egress.js';

export default {
  render({ model, el }: { model: any; el: HTMLElement }): () => void {
    const view = new EgressLogView(pageContext(), { sessionId: model.get('session_id') || undefined });
    el.appendChild(view.node);
    return () => view.dispose();
  }
};
