/**
 * Shows agents' notebook edits, and their undoing, in the notebooks open in JupyterLab, without jupyter-collaboration
 * (JupyterLab does not watch files on its own). One watcher per page reads `GET notebook-edits` again on the live
 * channel's `session.tool` (a tool call finished; an edit is stored before its call's result) and on every resync,
 * and for each notebook an agent edited since: a tab without unsaved changes is reloaded from disk (with a short
 * notice); a tab with unsaved changes is left as it is, and a notification offers "Reload from disk" (which discards
 * them). A `notebook.undone` message (an undo from the sidebar, a notebook or REST) is handled the same way for the
 * notebook it names. The first read after the page loads only notes where the log stands. The decisions are in
 * notebook-watch-model.ts.
 */
import { Notification } from '@jupyterlab/apputils';

import { errorMessage } from '../core/format.js';
import { coalesce } from '../core/live.js';
import { ApiError } from '../core/transport.js';
import type { ViewContext } from '../core/view.js';
import type { EditRow } from '../views/tools-model.js';
import {
  EditWatchState,
  INITIAL_WATCH,
  KEEP_CAPTION,
  NotebookNews,
  OpenState,
  RELOAD_CAPTION,
  UNDO_RELOAD_CAPTION,
  UndoNews,
  editAction,
  reloadedNotice,
  shortPath,
  takeNewEdits,
  undoNews,
  undoneNotice,
  unsavedNotice,
  unsavedUndoNotice
} from './notebook-watch-model.js';

/** What the watcher needs of JupyterLab's tabs. */
export interface NotebookTabs {
  /** how the notebook at `path` (relative to the server's root) is shown now */
  state(path: string): OpenState;
  /** loads the file on disk into every tab showing it, discarding their unsaved changes */
  revert(path: string): Promise<void>;
}

/** Edits read per check: more than this many between two tool results would be more than a page shows anyway. */
const LIMIT = 50;

/** Milliseconds the "reloaded" notice stays. */
const RELOADED_NOTICE_MS = 6000;

export class NotebookEditWatcher {
  private state: EditWatchState = INITIAL_WATCH;
  /** the server has no notebook-edits route (404): nothing to watch */
  private absent = false;
  private disposed = false;
  /** notices asking about a notebook with unsaved changes, still shown: updated rather than stacked */
  private readonly asking = new Map<string, { id: string; edits: EditRow[] }>();
  private readonly subscription: { dispose(): void };
  /** Reads the edit log again (coalesced: one read in flight, one more after it). */
  readonly check: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly tabs: NotebookTabs) {
    this.check = coalesce(
      () => this.read(),
      e => console.warn(`jupyter-cma: agents' notebook edits could not be read (${errorMessage(e)}); open notebooks are not reloaded until the next tool call.`)
    );
    this.subscription = ctx.live.listen(
      { kinds: ['session.tool', 'notebook.undone'] },
      {
        message: m => (m.kind === 'notebook.undone' ? void this.undone(m.data) : void this.check()),
        resync: () => void this.check()
      }
    );
  }

  /** The newest edit id the page has taken in (null before its first read). */
  get newest(): number | null {
    return this.state.newest;
  }

  dispose(): void {
    this.disposed = true;
    this.subscription.dispose();
  }

  private async read(): Promise<void> {
    if (this.absent || this.disposed) {
      return;
    }
    let answer: unknown;
    try {
      answer = await this.ctx.api.notebookEdits({ limit: LIMIT });
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.absent = true; // a server without the notebook built-in's routes
        return;
      }
      throw error;
    }
    const { state, news } = takeNewEdits(this.state, answer);
    this.state = state;
    // Where the page stands, on the page (what a test waits for before it has an agent edit a notebook).
    document.body.dataset.jpCmaEditsSeen = String(state.newest);
    for (const item of news) {
      await this.show(item);
    }
  }

  private async show(news: NotebookNews): Promise<void> {
    const action = editAction(this.tabs.state(news.path));
    if (action === 'reload') {
      await this.reload(news.path, reloadedNotice(news));
    } else if (action === 'ask') {
      const shown = this.asking.get(news.path);
      const edits = shown ? [...shown.edits, ...news.edits] : news.edits;
      this.ask(news.path, edits, unsavedNotice({ path: news.path, edits }), RELOAD_CAPTION);
    }
  }

  /** Agents' edits of a notebook were undone (here or anywhere else): its tabs show the notebook as it is now. */
  private async undone(data: unknown): Promise<void> {
    const news: UndoNews | null = undoNews(data);
    if (!news || this.disposed) {
      return;
    }
    const action = editAction(this.tabs.state(news.path));
    if (action === 'reload') {
      await this.reload(news.path, undoneNotice(news));
    } else if (action === 'ask') {
      // replaces a notice about the edits themselves: what is on disk now is the notebook before them
      this.ask(news.path, [], unsavedUndoNotice(news), UNDO_RELOAD_CAPTION);
    }
  }

  /** Reloads a tab without unsaved changes from disk, then says so. */
  private async reload(path: string, notice: string): Promise<void> {
    // state() and revert() run in the same task: nothing typed in between can be lost
    try {
      await this.tabs.revert(path);
      Notification.info(notice, { autoClose: RELOADED_NOTICE_MS });
    } catch (error) {
      this.failed(path, error);
    }
  }

  /**
   * A notice for a tab with unsaved changes: never overwritten without the user's word. One notice per notebook,
   * updated rather than stacked; `edits` are the agent edits it tells of (more are added to them).
   */
  private ask(path: string, edits: EditRow[], message: string, reloadCaption: string): void {
    const shown = this.asking.get(path);
    const options = {
      autoClose: false as const,
      actions: [
        {
          label: 'Reload from disk',
          caption: reloadCaption,
          displayType: 'warn' as const,
          callback: () => {
            this.asking.delete(path);
            void this.tabs.revert(path).then(
              () => Notification.info(`Reloaded ${shortPath(path)} from disk; your unsaved changes were discarded.`, { autoClose: RELOADED_NOTICE_MS }),
              error => this.failed(path, error)
            );
          }
        },
        { label: 'Keep my changes', caption: KEEP_CAPTION, callback: () => void this.asking.delete(path) }
      ]
    };
    if (shown && Notification.update({ id: shown.id, message, type: 'warning', ...options })) {
      this.asking.set(path, { id: shown.id, edits });
      return;
    }
    this.asking.set(path, { id: Notification.warning(message, options), edits });
  }

  private failed(path: string, error: unknown): void {
    Notification.error(`${shortPath(path)} could not be reloaded (${errorMessage(error)}); File → Reload Notebook from Disk shows it as it is on disk.`, {
      autoClose: false
    });
  }
}
