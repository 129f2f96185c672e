/**
 * Tiny DOM helpers for the views: plain DOM, no framework, so one view runs in a Lumino widget (the sidebar)
 * and in an anywidget (a notebook output) alike.
 */

/** What `h()` takes as attributes: `class`, `dataset`, `style`, `on<event>` handlers, DOM properties, attributes. */
export type Attrs = {
  class?: string | (string | false | null | undefined)[];
  dataset?: Record<string, string>;
  style?: Partial<CSSStyleDeclaration> | string;
  [key: string]: any;
};

/** A child: a node, text (numbers too), or nothing (null/undefined/false are skipped); arrays are flattened. */
export type Child = Node | string | number | null | undefined | false | Child[];

/**
 * Creates an element: `h('button', {class: 'jp-cma-button', onclick: () => …, title: 'Stop'}, 'Stop')`.
 * `on…` keys add listeners; `class` takes a string or a list (falsy entries dropped); keys that are properties
 * of the element are set as properties (`value`, `checked`, `disabled`, `hidden`), others as attributes
 * (`aria-label`, `role`, `type`); null/undefined/false values are skipped.
 */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K];
export function h(tag: string, attrs?: Attrs | null, ...children: Child[]): HTMLElement;
export function h(tag: string, attrs?: Attrs | null, ...children: Child[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (key === 'class') {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : String(value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'style') {
      if (typeof value === 'string') {
        el.setAttribute('style', value);
      } else {
        Object.assign(el.style, value);
      }
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key in el && !key.includes('-')) {
      (el as any)[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, ...children);
  return el;
}

/** Appends children (see `Child`) to a node. */
export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    if (Array.isArray(child)) {
      append(parent, ...child);
    } else if (child instanceof Node) {
      parent.appendChild(child);
    } else {
      parent.appendChild(document.createTextNode(String(child)));
    }
  }
}

/** Removes every child of a node; returns the node. */
export function clear<T extends Node>(node: T): T {
  while (node.firstChild) {
    node.removeChild(node.firstChild);
  }
  return node;
}

/** Replaces a node's children. */
export function replaceChildren(node: Node, ...children: Child[]): void {
  clear(node);
  append(node, ...children);
}

/** A `<button>` (type=button, so it never submits) with the jp-cma classes. */
export function button(label: Child, onclick: (ev: MouseEvent) => void, attrs: Attrs = {}): HTMLButtonElement {
  const { class: cls, ...rest } = attrs;
  const classes = ['jp-cma-button', ...(Array.isArray(cls) ? cls : cls ? [cls] : [])];
  return h('button', { type: 'button', class: classes, onclick, ...rest }, label);
}

/** Copies text to the clipboard; false when the page may not (the caller can select the text instead). */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/** Offers a Blob or text as a file download. */
export function download(filename: string, content: Blob | string, type = 'application/octet-stream'): void {
  const blob = typeof content === 'string' ? new Blob([content], { type }) : content;
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, style: 'display: none' });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A message line for errors, notices and empty states: `message(text, 'error' | 'warn' | 'info')`. */
export function message(text: Child, kind: 'error' | 'warn' | 'info' = 'info'): HTMLElement {
  return h('div', { class: ['jp-cma-message', `jp-cma-message-${kind}`], role: kind === 'error' ? 'alert' : 'status' }, text);
}
