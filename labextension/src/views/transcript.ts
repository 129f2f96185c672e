/**
 * A session's transcript as DOM: user and agent messages, tool calls with their input and result (text, images,
 * documents), errors and turns that ended otherwise. Every text goes in as text (never as HTML): an event's
 * content is the model's or a tool's.
 *
 * Drawn incrementally: each item keeps its node while what it shows is unchanged (`itemSignature`), so a stream
 * of events appends nodes and a call that gets its result redraws that call only; at most MAX_ITEMS items are in
 * the DOM (the latest), with a line saying how many earlier ones are left out.
 */
import { h, replaceChildren } from '../core/dom.js';
import { plural } from '../core/format.js';
import type { View } from '../core/view.js';
import { Block, blocksText, cut, imageSource, itemSignature, prettyJson, TranscriptItem } from './transcript-model.js';

/** Items kept in the DOM: the latest ones. */
export const MAX_ITEMS = 500;
/** A tool input longer than this (characters of JSON) starts folded. */
const FOLD_INPUT = 600;

/** One content block of a result: text in a <pre>, an image, a document (folded), anything else as JSON. */
export function renderBlock(block: Block | unknown, error = false): HTMLElement {
  const pre = (text: string) => h('pre', { class: ['jp-cma-block-text', error && 'jp-cma-block-error'] }, cut(text));
  if (!block || typeof block !== 'object') {
    return pre(String(block));
  }
  const b = block as Block;
  if (b.type === 'text') {
    return pre(String(b.text ?? ''));
  }
  if (b.type === 'image') {
    const src = imageSource(b);
    if (src) {
      return h('img', { class: 'jp-cma-block-image', src, alt: 'an image the tool returned', loading: 'lazy' });
    }
    const media = b.source?.media_type || b.source?.type || '?';
    return h('div', { class: 'jp-cma-muted' }, `[an image (${media}) that cannot be shown]`);
  }
  if (b.type === 'document') {
    const source = b.source || {};
    const body = source.type === 'text' ? String(source.data ?? '') : prettyJson(source);
    return h('details', { class: 'jp-cma-block-document' }, h('summary', null, String(b.title || 'document')), pre(body));
  }
  if (b.type === 'search_result') {
    return h(
      'div',
      { class: 'jp-cma-block-search' },
      h('div', null, String(b.title || ''), ' ', h('code', null, String(b.source || ''))),
      pre(blocksText(b.content))
    );
  }
  return pre(prettyJson(b));
}

function label(text: string, extra?: string): HTMLElement {
  return h('span', { class: ['jp-cma-transcript-label', extra] }, text);
}

/** One transcript item as a node (`jp-cma-transcript-item jp-cma-item-<kind>`, `data-event-id`). */
export function renderItem(item: TranscriptItem): HTMLElement {
  const attrs = (kind: string, more: (string | false | undefined)[] = []) => ({
    class: ['jp-cma-transcript-item', `jp-cma-item-${kind}`, ...more],
    dataset: { eventId: item.key }
  });
  switch (item.kind) {
    case 'user':
      return h('div', attrs('user'), label('user'), h('div', { class: 'jp-cma-message-text' }, cut(item.text)));
    case 'agent':
      return h('div', attrs('agent'), label('agent'), h('div', { class: 'jp-cma-message-text' }, cut(item.text)));
    case 'thinking':
      return h('div', attrs('thinking', ['jp-cma-muted']), 'the agent is thinking');
    case 'tool':
      return renderTool(item, attrs);
    case 'error':
      return h(
        'div',
        attrs('error'),
        label('session error', 'jp-cma-transcript-label-error'),
        ' ',
        item.text,
        item.retryStatus ? h('span', { class: 'jp-cma-muted' }, ` (${item.retryStatus})`) : null
      );
    case 'stop':
      return h(
        'div',
        attrs('stop'),
        label('the turn ended', 'jp-cma-transcript-label-error'),
        ' ',
        item.text,
        item.explanation ? ` — ${item.explanation}` : null
      );
    default:
      return h('div', attrs('terminated'), label('the session was terminated', 'jp-cma-transcript-label-error'));
  }
}

function renderTool(item: TranscriptItem, attrs: (kind: string, more?: (string | false | undefined)[]) => any): HTMLElement {
  const pending = item.result === null || item.result === undefined;
  const where = item.toolType === 'mcp' ? ` (MCP ${item.server || ''})` : '';
  const status = pending ? 'running…' : item.isError ? 'error' : 'done';
  const input = prettyJson(item.input ?? {});
  const head = h(
    'div',
    { class: 'jp-cma-call-head' },
    label('tool'),
    ' ',
    h('code', { class: 'jp-cma-call-name' }, item.name || '?'),
    where,
    ' ',
    h('span', { class: ['jp-cma-call-status', `jp-cma-call-status-${pending ? 'pending' : item.isError ? 'error' : 'done'}`] }, status)
  );
  const inputNode = h(
    'details',
    { class: 'jp-cma-call-input', open: input.length <= FOLD_INPUT },
    h('summary', null, 'input'),
    h('pre', { class: 'jp-cma-block-text' }, cut(input))
  );
  let result: HTMLElement;
  if (pending) {
    result = h('div', { class: 'jp-cma-call-result jp-cma-muted' }, 'waiting for the result…');
  } else {
    const blocks = (item.result || []).map(b => renderBlock(b, item.isError));
    result = h(
      'div',
      { class: 'jp-cma-call-result' },
      h('div', { class: 'jp-cma-call-result-label' }, item.isError ? 'error' : 'result'),
      blocks.length ? blocks : h('div', { class: 'jp-cma-muted' }, '(empty)')
    );
  }
  return h('div', attrs('tool', ['jp-cma-call', pending && 'jp-cma-call-pending', item.isError && 'jp-cma-call-error']), head, inputNode, result);
}

interface Shown {
  node: HTMLElement;
  signature: string;
}

/** The transcript of one session, drawn incrementally (see the module's comment). */
export class TranscriptView implements View {
  readonly node: HTMLElement;
  private readonly list: HTMLElement;
  private readonly earlier: HTMLElement;
  private readonly empty: HTMLElement;
  private shown = new Map<string, Shown>();

  constructor() {
    this.earlier = h('div', { class: 'jp-cma-transcript-earlier jp-cma-muted', hidden: true });
    this.empty = h('div', { class: 'jp-cma-transcript-empty jp-cma-muted' }, 'no messages yet');
    this.list = h('div', { class: 'jp-cma-transcript-items' });
    this.node = h(
      'div',
      { class: 'jp-cma-transcript', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation', tabindex: 0 },
      this.earlier,
      this.empty,
      this.list
    );
  }

  /** Show these items (the whole transcript so far); only what changed is drawn again. */
  update(items: readonly TranscriptItem[]): void {
    const stick = this.atBottom();
    const visible = items.length > MAX_ITEMS ? items.slice(items.length - MAX_ITEMS) : items;
    const left = items.length - visible.length;
    this.earlier.hidden = left === 0;
    replaceChildren(this.earlier, left ? `${plural(left, 'earlier item')} not shown` : '');
    this.empty.hidden = items.length > 0;

    const next = new Map<string, Shown>();
    for (const item of visible) {
      const signature = itemSignature(item);
      const known = this.shown.get(item.key);
      if (known && known.signature === signature) {
        next.set(item.key, known);
        continue;
      }
      const node = renderItem(item);
      if (known) {
        keepFolding(known.node, node);
        known.node.replaceWith(node);
      }
      next.set(item.key, { node, signature });
    }
    for (const [key, old] of this.shown) {
      if (!next.has(key)) {
        old.node.remove();
      }
    }
    // Put the nodes in order, moving only those out of place (new ones are appended, usually at the end).
    let cursor: ChildNode | null = this.list.firstChild;
    for (const { node } of next.values()) {
      if (node === cursor) {
        cursor = cursor.nextSibling;
      } else {
        this.list.insertBefore(node, cursor);
      }
    }
    this.shown = next;
    if (stick) {
      this.node.scrollTop = this.node.scrollHeight;
    }
  }

  private atBottom(): boolean {
    const n = this.node;
    return n.scrollHeight - n.scrollTop - n.clientHeight < 24;
  }

  dispose(): void {
    this.shown.clear();
    this.node.remove();
  }
}

/** A redrawn call keeps the user's unfolding of its input. */
function keepFolding(from: HTMLElement, to: HTMLElement): void {
  const before = from.querySelector('details.jp-cma-call-input') as HTMLDetailsElement | null;
  const after = to.querySelector('details.jp-cma-call-input') as HTMLDetailsElement | null;
  if (before && after) {
    after.open = before.open;
  }
}
