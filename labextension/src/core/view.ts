/**
 * What a view is and what it is given. A view is plain DOM (no React or Lumino inside), so a Lumino widget (the
 * sidebar) and an anywidget (a notebook output) both host it.
 */
import { CmaApi } from './api.js';
import { LiveClient } from './live.js';
import { pageTransport, Transport } from './transport.js';

export interface View {
  readonly node: HTMLElement;
  dispose(): void;
}

export interface ViewContext {
  api: CmaApi;
  live: LiveClient;
  transport: Transport;
  /** host actions the view may offer when present (the sidebar opens things in Lab; a widget may not) */
  openTerminal?(sessionId: string): Promise<void>; // POST sessions/{id}/terminal then open it
  openNotebook?(path: string): Promise<void>;
  /** rows a live table keeps in the DOM (the sidebar's setting "Rows kept in tables"); 500 when absent */
  maxRows?: number;
}

/** Rows a live table keeps in the DOM when the context does not say. */
export const DEFAULT_MAX_ROWS = 500;

/** A context over a transport: its CmaApi and the page's shared LiveClient. */
export function createContext(transport: Transport, host: Pick<ViewContext, 'openTerminal' | 'openNotebook' | 'maxRows'> = {}): ViewContext {
  return { api: new CmaApi(transport), live: LiveClient.shared(transport), transport, ...host };
}

/** The context of a page without JupyterLab's app object (notebook widgets): pageTransport(). */
export function pageContext(): ViewContext {
  return createContext(pageTransport());
}
