/** What the palette commands decide, as pure functions (unit-tested without a browser). */
import { isActiveSession, SessionRow } from '../core/api.js';
import { shortId } from '../core/format.js';

/** The notebook "open dashboard notebook" creates. */
export const DASHBOARD_PATH = 'claude-agents-dashboard.ipynb';

/** The notebook's cells: the widget dashboard of this server's sessions. */
export function dashboardNotebook(kernel?: { name: string; display_name: string; language?: string }): any {
  return {
    nbformat: 4,
    nbformat_minor: 5,
    metadata: kernel ? { kernelspec: { name: kernel.name, display_name: kernel.display_name, language: kernel.language ?? 'python' } } : {},
    cells: [
      {
        cell_type: 'markdown',
        id: 'cma-intro',
        metadata: {},
        source: 'Claude agents on this server: sessions, their transcripts and egress, live. Run the cell below.'
      },
      {
        cell_type: 'code',
        id: 'cma-dashboard',
        metadata: {},
        execution_count: null,
        outputs: [],
        source: 'import jupyter_cma as cma\n\ncma.dashboard()'
      }
    ]
  };
}

/** A session's label in pickers: title or id, state, tier. */
export function sessionLabel(s: SessionRow): string {
  const name = s.title ? `${s.title} (${shortId(s.id)})` : s.id;
  return `${name} · ${s.status}${s.tier ? ` · ${s.tier}` : ''}`;
}

/** Sessions that a sandbox of this server serves now (what "stop" acts on). */
export function stoppable(rows: SessionRow[]): SessionRow[] {
  return rows.filter(r => isActiveSession(r) && r.sandbox !== null && r.sandbox !== undefined);
}

/** Container sessions a container serves now (what "open terminal" acts on). */
export function withTerminal(rows: SessionRow[]): SessionRow[] {
  return stoppable(rows).filter(r => r.tier === 'container' || r.sandbox?.isolation === 'container');
}
