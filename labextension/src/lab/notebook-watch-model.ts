/**
 * What the page does when an agent edits a notebook (the `notebook` built-in's `notebook_edit`) or an edit is undone,
 * as pure functions (unit-tested without a browser): which edits of `GET notebook-edits` are new to this page, what
 * a `notebook.undone` message names, and, for each notebook, what to do with a tab that shows it — reload a tab
 * without unsaved changes from disk, ask before discarding a tab's unsaved changes, leave a collaborative document
 * to the server (it loads changes on disk itself).
 */
import { EditRow, editRows } from '../views/tools-model.js';

/** What the page has taken in of the edit log: the newest edit id it saw (null: none read yet). */
export interface EditWatchState {
  newest: number | null;
}

/** The new edits of one notebook, oldest first. */
export interface NotebookNews {
  path: string;
  edits: EditRow[];
}

/** The state before the first read: the page's first answer only sets where it starts. */
export const INITIAL_WATCH: EditWatchState = { newest: null };

/**
 * The edits of `answer` (GET notebook-edits, any order) that are new to the page, by notebook (in the order their
 * first new edit was made), and the state after them. The first answer only records the newest id: what agents
 * edited before the page was opened is on disk already, and loading it is the tab's own business — no burst of
 * reloads when JupyterLab opens. An edit undone before the page saw it is skipped (the notebook is back as it
 * was); ids at or below the newest seen are never handled twice.
 */
export function takeNewEdits(state: EditWatchState, answer: unknown): { state: EditWatchState; news: NotebookNews[] } {
  const rows = editRows(answer);
  const top = rows.reduce((max, r) => Math.max(max, r.id), 0);
  if (state.newest === null) {
    return { state: { newest: top }, news: [] };
  }
  const seen = state.newest;
  const fresh = rows.filter(r => r.id > seen && r.undoneAt === null).sort((a, b) => a.id - b.id);
  const byPath = new Map<string, EditRow[]>();
  for (const row of fresh) {
    if (!row.path) {
      continue;
    }
    const list = byPath.get(row.path);
    if (list) {
      list.push(row);
    } else {
      byPath.set(row.path, [row]);
    }
  }
  return {
    state: { newest: Math.max(seen, top) },
    news: [...byPath.entries()].map(([path, edits]) => ({ path, edits }))
  };
}

/** A `notebook.undone` message's data: which notebook is back as it was, and the edits undone. */
export interface UndoNews {
  path: string;
  editIds: number[];
}

/** The data of a `notebook.undone` live message, or null when it is not one (never trusted blindly). */
export function undoNews(data: unknown): UndoNews | null {
  const d = data as { path?: unknown; edit_ids?: unknown } | null;
  if (!d || typeof d !== 'object' || typeof d.path !== 'string' || !d.path) {
    return null;
  }
  const ids = Array.isArray(d.edit_ids) ? d.edit_ids.filter((id): id is number => Number.isInteger(id)) : [];
  return { path: d.path, editIds: ids };
}

/** How a notebook is shown in JupyterLab now. */
export type OpenState = 'not open' | 'clean' | 'unsaved' | 'collaborative';

/** What to do for a notebook an agent edited. */
export type EditAction = 'reload' | 'ask' | 'none';

/**
 * A tab without unsaved changes is reloaded from disk (nothing of the user's is lost); a tab with unsaved changes
 * is never overwritten: the user is asked. A collaborative document (jupyter-collaboration) is left alone: the
 * server watches its file and loads the edit into it; a notebook not open needs nothing.
 */
export function editAction(open: OpenState): EditAction {
  switch (open) {
    case 'clean':
      return 'reload';
    case 'unsaved':
      return 'ask';
    default:
      return 'none';
  }
}

/** JupyterLab cuts a notification's message at 140 characters. */
export const NOTICE_MAX = 140;

/** A path shortened to `max` characters, keeping its end (the notebook's name): "…/q3/sales.ipynb". */
export function shortPath(path: string, max = 40): string {
  if (path.length <= max) {
    return path;
  }
  const name = path.slice(path.lastIndexOf('/') + 1);
  if (name.length + 2 > max) {
    return `…${name.slice(name.length - (max - 1))}`;
  }
  return `…/${name}`;
}

/** "an agent edited it" or "an agent edited it 3 times". */
function times(edits: readonly EditRow[]): string {
  return edits.length > 1 ? ` ${edits.length} times` : '';
}

/** What the page says after it reloaded a tab from disk: which notebook, and what the agent changed. */
export function reloadedNotice(news: NotebookNews): string {
  const summary = news.edits.length === 1 ? news.edits[0].summary : '';
  const head = `Reloaded ${shortPath(news.path)}: an agent edited it${times(news.edits)}`;
  const text = summary ? `${head} (${summary}).` : `${head}.`;
  return text.length <= NOTICE_MAX ? text : `${head}.`;
}

/** What the page says when a tab with unsaved changes shows a notebook an agent edited: it did not reload it, and why. */
export function unsavedNotice(news: NotebookNews): string {
  return `An agent edited ${shortPath(news.path, 30)}${times(news.edits)}. Your unsaved changes here kept it from reloading; Reload from disk discards them.`;
}

/** What the page says after it reloaded a tab because an agent's edit of it was undone (from any page or notebook). */
export function undoneNotice(news: UndoNews): string {
  const what = news.editIds.length > 1 ? `${news.editIds.length} agent edits of it were undone` : "an agent's edit of it was undone";
  return `Reloaded ${shortPath(news.path)}: ${what}.`;
}

/** What the page says when a tab with unsaved changes shows a notebook whose agent edits were undone on disk. */
export function unsavedUndoNotice(news: UndoNews): string {
  return `An agent's edit of ${shortPath(news.path, 30)} was undone. Your unsaved changes kept it from reloading; Reload from disk discards them.`;
}

/** The tooltip of the notice's "Reload from disk". */
export const RELOAD_CAPTION = "Load the agent's edit from disk into this tab; the tab's unsaved changes are discarded";

/** The tooltip of "Reload from disk" after an undo. */
export const UNDO_RELOAD_CAPTION = "Load the notebook as it is on disk (the agent's edit undone) into this tab; the tab's unsaved changes are discarded";

/** The tooltip of the notice's "Keep my changes". */
export const KEEP_CAPTION = 'Keep this tab as it is; saving it then asks whether to overwrite the file on disk or revert to it';
