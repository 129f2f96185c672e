/**
 * What a notebook widget's views may do on the page that shows them. A widget has no JupyterLab application
 * object of its own, but JupyterLab and Notebook 7 both expose theirs as `window.jupyterapp`: when it is there,
 * "open terminal" and "export notebook" open what they made in the app (as the sidebar does); when it is not
 * (another frontend), the views fall back to links and downloads.
 */
import type { CmaApi } from '../core/api.js';
import { createContext, ViewContext } from '../core/view.js';
import { pageTransport } from '../core/transport.js';

interface Commands {
  hasCommand(id: string): boolean;
  execute(id: string, args?: Record<string, unknown>): Promise<unknown>;
}

/** The page's JupyterLab / Notebook 7 command registry, if the page exposes its app. */
export function pageCommands(): Commands | null {
  const app = (globalThis as any).jupyterapp;
  const commands = app?.commands;
  return commands && typeof commands.execute === 'function' && typeof commands.hasCommand === 'function' ? commands : null;
}

/** The host actions a widget can offer on this page. */
export function widgetHost(api: () => CmaApi): Pick<ViewContext, 'openTerminal' | 'openNotebook'> {
  const commands = pageCommands();
  const host: Pick<ViewContext, 'openTerminal' | 'openNotebook'> = {};
  if (commands?.hasCommand('terminal:open')) {
    host.openTerminal = async (sessionId: string) => {
      const terminal = await api().openTerminal(sessionId);
      await commands.execute('terminal:open', { name: terminal.name });
    };
  }
  if (commands?.hasCommand('docmanager:open')) {
    host.openNotebook = async (path: string) => {
      await commands.execute('docmanager:open', { path });
    };
  }
  return host;
}

/** The context of a notebook widget: the page's transport and live channel, and the page's app when exposed. */
export function widgetContext(): ViewContext {
  let ctx: ViewContext | null = null;
  ctx = createContext(pageTransport(), widgetHost(() => ctx!.api));
  return ctx;
}

/** What anywidget hands `render` (the part the widgets use). */
export interface WidgetModel {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  on(event: string, cb: () => void): void;
  off(event: string, cb: () => void): void;
}

/** A string trait's value ('' when unset or not a string). */
export function text(model: WidgetModel, name: string): string {
  const value = model.get(name);
  return typeof value === 'string' ? value : '';
}

/** Listens to `change:<name>` for each name; returns the function that stops listening. */
export function onTraits(model: WidgetModel, names: string[], cb: () => void): () => void {
  for (const name of names) {
    model.on(`change:${name}`, cb);
  }
  return () => names.forEach(name => model.off(`change:${name}`, cb));
}
