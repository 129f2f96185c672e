/**
 * The status-bar item: the mode, the active sessions and a warning state with a tooltip when something is wrong.
 * It refetches `GET status` (coalesced) on `session.state` and `status.changed`, on every resync of the live
 * channel, and on a slow timer only while the channel is down.
 */
import { Widget } from '@lumino/widgets';

import type { Status } from '../core/api.js';
import { h } from '../core/dom.js';
import { errorMessage } from '../core/format.js';
import { coalesce } from '../core/live.js';
import type { ViewContext } from '../core/view.js';
import { statusSummary } from './status-model.js';

export class CmaStatusItem extends Widget {
  private status: Status | null = null;
  private error: string | null = null;
  private connected: boolean | null = null;
  private timer: any = null;
  private fallbackSeconds = 30;
  private readonly icon: HTMLElement;
  private readonly label: HTMLElement;
  private readonly listeners: Array<{ dispose(): void }>;
  readonly refresh: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly onOpen: () => void) {
    super();
    this.addClass('jp-cma-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.icon = h('span', { class: 'jp-cma-status-icon', 'aria-hidden': 'true' });
    this.label = h('span', { class: 'jp-cma-status-text' });
    this.node.append(this.icon, this.label);
    this.node.addEventListener('click', () => this.onOpen());
    this.node.addEventListener('keydown', (ev: KeyboardEvent) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        this.onOpen();
      }
    });
    this.refresh = coalesce(async () => {
      try {
        this.status = await this.ctx.api.status();
        this.error = null;
      } catch (error) {
        this.error = errorMessage(error);
      }
      this.render();
    });
    this.listeners = [
      ctx.live.listen(
        { kinds: ['session.state', 'status.changed'] },
        { message: () => void this.refresh(), resync: () => void this.refresh() }
      ),
      ctx.live.onConnectionChange(connected => {
        this.connected = connected;
        this.schedule();
        this.render();
      })
    ];
    this.connected = ctx.live.connected ? true : null;
    this.render();
    this.schedule();
  }

  /** Seconds between refreshes while the live channel is down. */
  setFallbackSeconds(seconds: number): void {
    this.fallbackSeconds = Math.max(5, seconds || 30);
    this.schedule();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.listeners.forEach(l => l.dispose());
    if (this.timer !== null) {
      clearInterval(this.timer);
    }
    super.dispose();
  }

  private schedule(): void {
    if (this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    if (!this.ctx.live.connected) {
      this.timer = setInterval(() => void this.refresh(), this.fallbackSeconds * 1000);
    }
  }

  private render(): void {
    const summary = statusSummary(this.status, this.error, this.connected);
    this.label.textContent = summary.text;
    this.icon.textContent = summary.level === 'ok' ? '' : '⚠ ';
    this.node.classList.toggle('jp-cma-warning', summary.level === 'warning');
    this.node.classList.toggle('jp-cma-error', summary.level === 'error');
    this.node.title = summary.lines.join('\n');
    this.node.setAttribute('aria-label', summary.lines.join(' '));
    this.node.dataset.level = summary.level;
  }
}
