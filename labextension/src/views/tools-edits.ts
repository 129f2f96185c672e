/**
 * Agents' notebook edits (the `notebook` built-in's `notebook_edit`), from GET notebook-edits, newest first: each
 * with its notebook (opened in JupyterLab by the sidebar; a link in a widget), what it did, when, and Undo (POST
 * notebook-edits/{id}/undo restores the checkpoint taken before it; later edits of that notebook are undone with
 * it). Shown in a session's detail (its own edits) and in the Tools tab (the most recent ones); every list reads the
 * edits again on the live channel's `notebook.undone`, so an undo made anywhere shows everywhere. The logic is in
 * tools-model.ts.
 */
import { button, h, message, replaceChildren } from '../core/dom.js';
import { age, clock, errorMessage, nowSeconds, shortId } from '../core/format.js';
import { coalesce } from '../core/live.js';
import { ApiError } from '../core/transport.js';
import type { View, ViewContext } from '../core/view.js';
import { EditRow, editRows, markUndone, notebookUrl, pageInLab } from './tools-model.js';

export interface NotebookEditsOptions {
  /** only this session's edits (absent: every session's) */
  sessionId?: string;
  /** how many to read (default 50) */
  limit?: number;
  /** a heading above the list (absent: none) */
  title?: string;
  /** hide the whole view while there is no edit (a session's detail) */
  hideWhenEmpty?: boolean;
}

/** A list of notebook edits with Undo. Call `refresh()` when edits may have been made; it is coalesced. */
export class NotebookEditsView implements View {
  readonly node: HTMLElement;
  private rows: EditRow[] = [];
  private loaded = false;
  /** the server has no notebook-edits route (404): nothing to show, nothing to ask again */
  private absent = false;
  private disposed = false;
  private readonly list: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly subscription: { dispose(): void };
  readonly refresh: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly options: NotebookEditsOptions = {}) {
    this.list = h('ul', { class: 'jp-cma-edits-list', 'aria-label': 'Notebook edits' });
    this.notice = h('div', { class: 'jp-cma-edits-notice', 'aria-live': 'polite' });
    this.node = h(
      'section',
      { class: 'jp-cma-edits', dataset: options.sessionId ? { sessionId: options.sessionId } : {} },
      options.title ? h('h3', { class: 'jp-cma-edits-title' }, options.title) : null,
      this.notice,
      this.list
    );
    this.node.hidden = !!options.hideWhenEmpty;
    this.refresh = coalesce(() => this.fetch(), e => this.say(`The notebook edits could not be read: ${errorMessage(e)}`, 'error'));
    void this.refresh();
    this.subscription = ctx.live.listen(
      { kinds: ['notebook.undone'] },
      { message: () => void this.refresh(), resync: () => void this.refresh() }
    );
  }

  dispose(): void {
    this.disposed = true;
    this.subscription.dispose();
    this.node.remove();
  }

  /** The edits shown now, newest first. */
  get edits(): readonly EditRow[] {
    return this.rows;
  }

  private async fetch(): Promise<void> {
    if (this.absent || this.disposed) {
      return;
    }
    try {
      const page = await this.ctx.api.notebookEdits({ session_id: this.options.sessionId, limit: this.options.limit ?? 50 });
      if (this.disposed) {
        return;
      }
      this.rows = editRows(page);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        // A server without the notebook built-in's routes: the view stays empty.
        this.absent = true;
        this.rows = [];
      } else {
        throw error;
      }
    }
    this.loaded = true;
    this.draw();
  }

  private draw(): void {
    if (this.disposed) {
      return;
    }
    this.node.hidden = !!this.options.hideWhenEmpty && this.rows.length === 0;
    if (!this.rows.length) {
      replaceChildren(
        this.list,
        h(
          'li',
          { class: 'jp-cma-muted jp-cma-edits-empty' },
          this.loaded ? 'No notebook edits by agents yet (agents with the notebook built-in in edit mode make them).' : 'Loading…'
        )
      );
      return;
    }
    const now = nowSeconds();
    replaceChildren(
      this.list,
      this.rows.map(edit =>
        h(
          'li',
          {
            class: ['jp-cma-edit', edit.undoneAt !== null && 'jp-cma-edit-undone'],
            dataset: { editId: String(edit.id), path: edit.path, undone: String(edit.undoneAt !== null) }
          },
          h(
            'div',
            { class: 'jp-cma-edit-head' },
            this.pathLink(edit.path),
            h('span', { class: 'jp-cma-muted jp-cma-edit-when', title: edit.at ? new Date(edit.at * 1000).toISOString() : '' }, `${clock(edit.at, now)} · ${age(edit.at, now)}`)
          ),
          edit.summary ? h('div', { class: 'jp-cma-edit-summary' }, edit.summary) : null,
          h(
            'div',
            { class: 'jp-cma-edit-foot' },
            this.options.sessionId
              ? null
              : h('span', { class: 'jp-cma-muted jp-cma-mono jp-cma-edit-session', title: edit.sessionId }, `session ${shortId(edit.sessionId, 12)}`),
            edit.undoneAt !== null
              ? h('span', { class: 'jp-cma-edit-state', title: new Date(edit.undoneAt * 1000).toISOString() }, `undone ${age(edit.undoneAt, now)}`)
              : button('Undo', ev => void this.undo(edit, ev.currentTarget as HTMLButtonElement), {
                  class: 'jp-cma-edit-undo',
                  'aria-label': `Undo the edit of ${edit.path} at ${clock(edit.at, now)}`,
                  title: 'Restore the notebook as it was before this edit (later edits of it are undone too)'
                })
          )
        )
      )
    );
  }

  private pathLink(path: string): HTMLElement {
    if (this.ctx.openNotebook) {
      return h(
        'button',
        {
          type: 'button',
          class: 'jp-cma-edit-path jp-cma-linklike jp-cma-mono',
          title: `Open ${path}`,
          onclick: () => void this.ctx.openNotebook?.(path).catch(e => this.say(`${path} could not be opened: ${errorMessage(e)}`, 'error'))
        },
        path
      );
    }
    const url = notebookUrl(this.ctx.transport.baseUrl, path, pageInLab((globalThis as any).location?.pathname ?? ''));
    return h('a', { class: 'jp-cma-edit-path jp-cma-mono', href: url, target: '_blank', rel: 'noopener' }, path);
  }

  private async undo(edit: EditRow, control: HTMLButtonElement | null): Promise<void> {
    if (control) {
      control.disabled = true;
    }
    try {
      await this.ctx.api.undoNotebookEdit(edit.id);
      if (this.disposed) {
        return;
      }
      this.rows = markUndone(this.rows, edit.id, nowSeconds());
      this.draw();
      // Open tabs of the notebook are JupyterLab's page's business: it reloads them on the live channel's
      // notebook.undone, for an undo made here or anywhere else.
      this.say(`Undone: ${edit.path} is back as it was before this edit.`, 'info');
    } catch (error) {
      if (error instanceof ApiError && error.status === 409) {
        // already undone, or its checkpoint is gone: the server says which, and what to do instead
        this.say(errorMessage(error), 'warn');
      } else {
        this.say(`The edit could not be undone: ${errorMessage(error)}`, 'error');
      }
      if (control) {
        control.disabled = false;
      }
      void this.refresh(); // what the server has now (an undo made elsewhere, say)
    }
  }

  private say(text: string, kind: 'error' | 'warn' | 'info'): void {
    if (this.disposed) {
      return;
    }
    this.node.hidden = false;
    replaceChildren(this.notice, message(text, kind));
  }
}
