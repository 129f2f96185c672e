/**
 * SetupView: what this server lacks to serve sessions, each with the problem, the fix and the command to run
 * (`GET setup`), and "Try it with the local emulator" (`POST setup/emulator`). It refreshes when the live channel
 * says the setup changed (`status.changed`) and on every resync.
 */
import type { SetupCheck, SetupState } from '../core/api.js';
import { button, copyText, h, message, replaceChildren } from '../core/dom.js';
import { errorMessage, plural } from '../core/format.js';
import { coalesce } from '../core/live.js';
import type { View, ViewContext } from '../core/view.js';

export interface SetupViewOptions {
  /** Called after each load with the server's `ready`. */
  onReadyChange?(ready: boolean, state: SetupState): void;
}

/** Failing checks first (errors before warnings), then the passing ones; the server's order otherwise. */
export function sortChecks(checks: SetupCheck[]): SetupCheck[] {
  const rank = (c: SetupCheck) => (c.ok ? 2 : c.severity === 'error' ? 0 : 1);
  return checks.map((c, i) => ({ c, i })).sort((a, b) => rank(a.c) - rank(b.c) || a.i - b.i).map(x => x.c);
}

/** One line that says where the setup stands. */
export function setupSummary(state: SetupState): { kind: 'ok' | 'warn' | 'error'; text: string } {
  const errors = state.checks.filter(c => !c.ok && c.severity === 'error').length;
  const warnings = state.checks.filter(c => !c.ok && c.severity === 'warning').length;
  const mode = `${state.mode} mode`;
  const emulator = state.emulator?.running ? `, on the local emulator${state.emulator.url ? ` (${state.emulator.url})` : ''}` : '';
  if (!state.ready || errors) {
    const what = errors ? plural(errors, 'problem') : 'a problem';
    return { kind: 'error', text: `Not ready to serve sessions: ${what} to fix${warnings ? ` and ${plural(warnings, 'warning')}` : ''}.` };
  }
  if (warnings) {
    return { kind: 'warn', text: `Ready (${mode}${emulator}), with ${plural(warnings, 'warning')}.` };
  }
  return { kind: 'ok', text: `Ready (${mode}${emulator}).` };
}

export class SetupView implements View {
  readonly node: HTMLElement;
  private readonly body: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly listener: { dispose(): void };
  private state: SetupState | null = null;
  private starting = false;
  private disposed = false;
  /** GET setup, at most one in flight plus one trailing. */
  readonly refresh: () => Promise<void>;

  constructor(readonly ctx: ViewContext, readonly options: SetupViewOptions = {}) {
    this.notice = h('div', { class: 'jp-cma-setup-notice', 'aria-live': 'polite' });
    this.body = h('div', { class: 'jp-cma-setup-body' }, h('p', { class: 'jp-cma-muted' }, 'Checking the setup…'));
    this.node = h('section', { class: 'jp-cma-view jp-cma-setup', 'aria-label': 'Setup' }, this.notice, this.body);
    this.refresh = coalesce(
      async () => {
        const state = await this.ctx.api.setup();
        if (!this.disposed) {
          this.show(state);
        }
      },
      error => {
        if (!this.disposed) {
          replaceChildren(this.body, message(`Could not read the setup: ${errorMessage(error)}`, 'error'));
        }
      }
    );
    this.listener = ctx.live.listen({ kinds: ['status.changed'] }, { message: () => void this.refresh(), resync: () => void this.refresh() });
  }

  /** The last setup document read (null before the first answer). */
  get current(): SetupState | null {
    return this.state;
  }

  dispose(): void {
    this.disposed = true;
    this.listener.dispose();
    this.node.remove();
  }

  private show(state: SetupState): void {
    this.state = state;
    const summary = setupSummary(state);
    const failing = sortChecks(state.checks.filter(c => !c.ok));
    const passing = state.checks.filter(c => c.ok);
    replaceChildren(
      this.body,
      h('p', { class: ['jp-cma-setup-summary', `jp-cma-setup-${summary.kind}`] }, summary.text),
      this.emulatorBox(state),
      failing.length ? h('ul', { class: 'jp-cma-setup-checks', 'aria-label': 'What to fix' }, failing.map(c => this.check(c))) : null,
      passing.length
        ? h(
            'details',
            { class: 'jp-cma-setup-ok' },
            h('summary', null, `${plural(passing.length, 'check')} passed`),
            h('ul', { class: 'jp-cma-setup-checks' }, passing.map(c => h('li', { class: 'jp-cma-check jp-cma-check-ok' }, '✓ ', c.title)))
          )
        : null
    );
    this.options.onReadyChange?.(state.ready, state);
  }

  private emulatorBox(state: SetupState): HTMLElement | null {
    if (state.emulator?.running) {
      return h(
        'div',
        { class: 'jp-cma-emulator' },
        state.emulator.owned
          ? `This server runs the local emulator${state.emulator.url ? ` at ${state.emulator.url}` : ''} and serves it; it stops with the server.`
          : `This server is configured for a local API${state.emulator.url ? ` at ${state.emulator.url}` : ''}.`
      );
    }
    if (state.ready || !state.can_start_emulator) {
      return null;
    }
    const start = button(
      this.starting ? 'Starting the emulator…' : 'Try it with the local emulator',
      () => void this.startEmulator(),
      { class: 'jp-cma-primary', disabled: this.starting }
    );
    return h(
      'div',
      { class: 'jp-cma-emulator' },
      h('p', null, 'No Anthropic account at hand? Start the built-in emulator: this server then serves it, offline, until it stops.'),
      start
    );
  }

  private async startEmulator(): Promise<void> {
    if (this.starting) {
      return;
    }
    this.starting = true;
    replaceChildren(this.notice);
    if (this.state) {
      this.show(this.state);
    }
    try {
      const state = await this.ctx.api.startEmulator();
      this.starting = false;
      if (!this.disposed) {
        this.show(state);
      }
    } catch (error) {
      this.starting = false;
      if (!this.disposed) {
        replaceChildren(this.notice, message(`The emulator did not start: ${errorMessage(error)}`, 'error'));
        if (this.state) {
          this.show(this.state);
        }
      }
    }
  }

  private check(c: SetupCheck): HTMLElement {
    const command = c.command;
    let copy: HTMLButtonElement | null = null;
    if (command) {
      copy = button('Copy', async () => {
        const ok = await copyText(command);
        copy!.textContent = ok ? 'Copied' : 'Select and copy';
        setTimeout(() => {
          if (copy) {
            copy.textContent = 'Copy';
          }
        }, 1500);
      }, { title: 'Copy the command', 'aria-label': `Copy the command for ${c.title}` });
    }
    return h(
      'li',
      { class: ['jp-cma-check', `jp-cma-check-${c.severity}`], dataset: { check: c.id } },
      h('div', null, h('span', { class: 'jp-cma-check-title' }, c.title), h('span', { class: 'jp-cma-check-severity' }, c.severity)),
      c.problem ? h('p', { class: 'jp-cma-check-problem' }, c.problem) : null,
      c.fix ? h('p', { class: 'jp-cma-check-fix' }, c.fix) : null,
      command ? h('div', { class: 'jp-cma-command' }, h('code', null, command), copy) : null,
      c.docs ? h('p', { class: 'jp-cma-muted' }, 'See ', h('code', null, c.docs), ' in the jupyter-cma documentation.') : null
    );
  }
}
