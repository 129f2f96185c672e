/** Placeholder of the cma.dashboard() widget's ES module (anywidget): the sessions view on the page's server. */
import { pageContext } from '../core/view.js';
import { SessionsView } from '../views/sessions.js';

export default {
  render({ el }: { model: any; el: HTMLElement }): () => void {
    const view = new SessionsView(pageContext());
    el.appendChild(view.node);
    return () => view.dispose();
  }
};
