/**
 * The Webhooks view: the webhook deliveries this server received (GET webhooks), newest first, paged with
 * `next_before` ("Load older"), each with its type, object id, time and verdict, and its body when the REST API
 * returns one (the deliveries carry event data, never a secret). The status's counters say how many were
 * accepted, duplicated and rejected. Refetched on the live channel's resync and `status.changed`. The logic is
 * in webhooks-model.ts.
 */
import { button, h, message, replaceChildren } from '../core/dom.js';
import { age, clock, errorMessage, plural } from '../core/format.js';
import { coalesce } from '../core/live.js';
import type { View, ViewContext } from '../core/view.js';
import { bodyText, countersLine, DeliveryRow, deliveryPage, mergeDeliveries } from './webhooks-model.js';

/** Deliveries one page asks for. */
const PAGE = 50;

export class WebhooksView implements View {
  readonly node: HTMLElement;

  private rows: DeliveryRow[] = [];
  /** the cursor of the next older page; null when there is none (or before the first page came) */
  private next: number | null = null;
  private loaded = false;
  private disposed = false;
  private readonly open = new Set<number>();
  private readonly subscriptions: Array<{ dispose(): void }> = [];

  private readonly notice: HTMLElement;
  private readonly counters: HTMLElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly moreButton: HTMLButtonElement;
  private readonly summary: HTMLElement;

  private readonly loadFirst: () => Promise<void>;
  private readonly loadCounters: () => Promise<void>;

  constructor(readonly ctx: ViewContext) {
    this.notice = h('div', { class: 'jp-cma-webhook-notice', 'aria-live': 'polite' });
    this.counters = h('p', { class: 'jp-cma-webhook-counters jp-cma-muted' });
    this.summary = h('span', { class: 'jp-cma-webhook-summary jp-cma-muted' });
    this.tbody = h('tbody');
    this.moreButton = button('Load older', () => void this.loadOlder(), { class: 'jp-cma-webhook-more', hidden: true });
    this.node = h(
      'div',
      { class: 'jp-cma-view jp-cma-webhooks' },
      h('div', { class: 'jp-cma-toolbar' }, button('Refresh', () => this.refresh(), { class: 'jp-cma-webhook-refresh' }), this.summary),
      this.counters,
      this.notice,
      h(
        'div',
        { class: 'jp-cma-table-scroll' },
        h(
          'table',
          { class: 'jp-cma-table jp-cma-webhook-table' },
          h('thead', null, h('tr', null, ['Received', 'Delivery', 'Body'].map(t => h('th', { scope: 'col' }, t)))),
          this.tbody
        )
      ),
      h('div', { class: 'jp-cma-toolbar' }, this.moreButton)
    );
    this.loadFirst = coalesce(() => this.fetchFirst(), e => this.failed(e));
    this.loadCounters = coalesce(() => this.fetchCounters(), () => undefined);
    this.subscriptions.push(ctx.live.listen({ kinds: ['status.changed'] }, { message: () => this.refresh(), resync: () => this.refresh() }));
    this.refresh();
  }

  dispose(): void {
    this.disposed = true;
    this.subscriptions.forEach(s => s.dispose());
    this.subscriptions.length = 0;
    this.node.remove();
  }

  /** Reloads the newest page (older pages already shown stay) and the counters. */
  refresh(): void {
    void this.loadFirst();
    void this.loadCounters();
  }

  private async fetchFirst(): Promise<void> {
    const page = deliveryPage(await this.ctx.api.webhooks({ limit: PAGE }), PAGE);
    if (this.disposed) {
      return;
    }
    if (!this.loaded) {
      this.next = page.next;
    }
    this.loaded = true;
    this.rows = mergeDeliveries(this.rows, page.rows);
    replaceChildren(this.notice);
    this.draw();
  }

  private async fetchCounters(): Promise<void> {
    const status = await this.ctx.api.status();
    if (!this.disposed) {
      this.counters.textContent = countersLine(status);
    }
  }

  private async loadOlder(): Promise<void> {
    if (this.next === null) {
      return;
    }
    this.moreButton.disabled = true;
    try {
      const page = deliveryPage(await this.ctx.api.webhooks({ limit: PAGE, before: this.next }), PAGE);
      if (this.disposed) {
        return;
      }
      this.next = page.next;
      this.rows = mergeDeliveries(this.rows, page.rows);
      this.draw();
    } catch (error) {
      this.failed(error);
    } finally {
      this.moreButton.disabled = false;
    }
  }

  private failed(error: unknown): void {
    if (!this.disposed) {
      replaceChildren(this.notice, message(`The webhook deliveries could not be loaded: ${errorMessage(error)}`, 'error'));
    }
  }

  private draw(): void {
    const rows: HTMLElement[] = [];
    for (const d of this.rows) {
      const text = bodyText(d.body);
      const expanded = text !== null && this.open.has(d.seq);
      const bodyId = `jp-cma-webhook-body-${d.seq}`;
      rows.push(
        h(
          'tr',
          { class: 'jp-cma-webhook-row', dataset: { seq: String(d.seq), verdict: d.verdict, eventType: d.event_type } },
          h(
            'td',
            { class: 'jp-cma-webhook-received', title: d.received_at ? new Date(d.received_at * 1000).toISOString() : '' },
            clock(d.received_at),
            h('div', { class: 'jp-cma-muted' }, age(d.received_at)),
            h('div', { class: ['jp-cma-webhook-verdict', `jp-cma-webhook-verdict-${d.verdict}`] }, d.verdict)
          ),
          h(
            'td',
            { class: 'jp-cma-webhook-delivery' },
            h('div', { class: 'jp-cma-webhook-type jp-cma-mono' }, d.event_type),
            h('div', { class: 'jp-cma-webhook-object jp-cma-mono jp-cma-muted', title: `webhook ${d.webhook_id}` }, d.object_id ?? '–')
          ),
          h(
            'td',
            null,
            text === null
              ? h('span', { class: 'jp-cma-muted' }, 'not returned')
              : button(expanded ? 'Hide' : 'Show', () => this.toggle(d.seq), {
                  class: 'jp-cma-webhook-body-toggle',
                  'aria-expanded': String(expanded),
                  'aria-controls': bodyId
                })
          )
        )
      );
      if (expanded) {
        rows.push(h('tr', { class: 'jp-cma-webhook-body-row' }, h('td', { colSpan: 3 }, h('pre', { class: 'jp-cma-webhook-body jp-cma-mono', id: bodyId }, text))));
      }
    }
    replaceChildren(
      this.tbody,
      rows.length
        ? rows
        : h('tr', null, h('td', { colSpan: 3, class: 'jp-cma-muted jp-cma-webhook-empty' }, this.loaded ? 'No webhook deliveries received (in poll mode there are none).' : 'Loading…'))
    );
    this.moreButton.hidden = this.next === null;
    this.summary.textContent = this.loaded ? `${plural(this.rows.length, 'delivery', 'deliveries')} shown, newest first` : '';
  }

  private toggle(seq: number): void {
    if (this.open.has(seq)) {
      this.open.delete(seq);
    } else {
      this.open.add(seq);
    }
    this.draw();
    (this.tbody.querySelector(`tr[data-seq="${seq}"] .jp-cma-webhook-body-toggle`) as HTMLElement | null)?.focus();
  }
}
