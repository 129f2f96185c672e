/**
 * What the status-bar item says, as a pure function of `GET status`, the last error and the live channel's
 * state (unit-tested without a browser).
 */
import type { Status } from '../core/api.js';
import { plural } from '../core/format.js';

export interface StatusSummary {
  /** the item's text, e.g. "Claude: poll · 2 active" */
  text: string;
  level: 'ok' | 'warning' | 'error';
  /** lines of the tooltip: the mode and counts, then each thing that is wrong */
  lines: string[];
}

/** The status bar's summary. `connected`: whether the live channel is up (null: not known yet). */
export function statusSummary(status: Status | null, error: string | null, connected: boolean | null): StatusSummary {
  if (error && !status) {
    return {
      text: 'Claude: unavailable',
      level: 'error',
      lines: [`The jupyter-cma server extension does not answer: ${error}`, 'Click to open the Claude agents panel.']
    };
  }
  if (!status) {
    return { text: 'Claude: …', level: 'ok', lines: ['Reading the status of jupyter-cma…'] };
  }
  const active = Number(status.sessions?.live ?? 0);
  const problems: string[] = [];
  let level: StatusSummary['level'] = 'ok';
  if (!status.ready) {
    level = 'error';
    const missing = (status.missing ?? []).join(', ');
    problems.push(`Not ready to serve sessions${missing ? `: missing ${missing}` : ''}. The panel's setup view says how to fix it.`);
  }
  for (const e of status.errors ?? []) {
    level = 'error';
    problems.push(`Setting error: ${typeof e === 'string' ? e : JSON.stringify(e)}`);
  }
  const tiers = Object.entries(status.tiers ?? {});
  if (tiers.length && tiers.every(([, t]) => t?.available === false)) {
    level = 'error';
    problems.push('No sandbox tier is available: neither containers nor kernels can serve a session.');
  }
  const proxyError = status.egress?.proxy?.error;
  if (proxyError) {
    if (level === 'ok') {
      level = 'warning';
    }
    problems.push(`Egress proxy: ${proxyError}`);
  }
  if (error) {
    if (level === 'ok') {
      level = 'warning';
    }
    problems.push(`The last refresh failed: ${error}`);
  }
  if (connected === false) {
    if (level === 'ok') {
      level = 'warning';
    }
    problems.push('Live updates are disconnected (reconnecting); the status refreshes on a timer meanwhile.');
  }
  const mode = status.mode || '?';
  const text = `Claude: ${mode} · ${active} active`;
  const lines = [
    `jupyter-cma ${status.version ?? ''}`.trim() + ` in ${mode} mode, ${plural(active, 'active session')}.`,
    ...problems,
    'Click to open the Claude agents panel.'
  ];
  return { text, level, lines };
}
