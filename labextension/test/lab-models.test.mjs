// What the setup view, the status bar and the commands decide (pure functions).
import assert from 'node:assert/strict';
import test from 'node:test';

import { dashboardNotebook, sessionLabel, stoppable, withTerminal } from '../lib/lab/commands-model.js';
import { statusSummary } from '../lib/lab/status-model.js';
import { setupSummary, sortChecks } from '../lib/views/setup.js';

const check = (id, ok, severity) => ({ id, ok, severity, title: id, problem: ok ? null : 'p', fix: null, command: null, docs: null });

test('setup: failing errors first, then warnings, then passing checks', () => {
  const sorted = sortChecks([check('a', true, 'error'), check('b', false, 'warning'), check('c', false, 'error'), check('d', false, 'warning')]);
  assert.deepEqual(sorted.map(c => c.id), ['c', 'b', 'd', 'a']);
});

test('setup summary says what is wrong', () => {
  const base = { ready: true, mode: 'poll', emulator: { running: false, owned: false, url: null }, can_start_emulator: false, checks: [] };
  assert.deepEqual(setupSummary(base), { kind: 'ok', text: 'Ready (poll mode).' });
  assert.equal(setupSummary({ ...base, checks: [check('docker', false, 'warning')] }).kind, 'warn');
  const broken = setupSummary({ ...base, ready: false, checks: [check('api_key', false, 'error'), check('environment_id', false, 'error'), check('docker', false, 'warning')] });
  assert.equal(broken.kind, 'error');
  assert.equal(broken.text, 'Not ready to serve sessions: 2 problems to fix and 1 warning.');
  const emulated = setupSummary({ ...base, emulator: { running: true, owned: true, url: 'http://127.0.0.1:5' } });
  assert.equal(emulated.text, 'Ready (poll mode, on the local emulator (http://127.0.0.1:5)).');
});

const status = (over = {}) => ({ version: '0.1.0', mode: 'poll', ready: true, missing: [], errors: [], tiers: { kernel: { available: true } }, sessions: { live: 2, sandboxes_started: 5 }, egress: { enforced: true, proxy: { error: null } }, ...over });

test('status bar: mode and active sessions; warnings and errors with their reasons', () => {
  const ok = statusSummary(status(), null, true);
  assert.equal(ok.text, 'Claude: poll · 2 active');
  assert.equal(ok.level, 'ok');
  assert.match(ok.lines[0], /poll mode, 2 active sessions/);
  const notReady = statusSummary(status({ ready: false, missing: ['environment_id', 'api_key'] }), null, true);
  assert.equal(notReady.level, 'error');
  assert.ok(notReady.lines.some(l => l.includes('missing environment_id, api_key')));
  const down = statusSummary(status(), null, false);
  assert.equal(down.level, 'warning');
  assert.ok(down.lines.some(l => l.includes('Live updates are disconnected')));
  const noTier = statusSummary(status({ tiers: { kernel: { available: false }, container: { available: false } } }), null, true);
  assert.equal(noTier.level, 'error');
  // a tier that has not probed yet (no "available" key) counts as available
  assert.equal(statusSummary(status({ tiers: { kernel: { isolation: 'none' }, container: { available: false } } }), null, true).level, 'ok');
  const unreachable = statusSummary(null, 'The Jupyter server could not be reached', null);
  assert.equal(unreachable.text, 'Claude: unavailable');
  assert.equal(unreachable.level, 'error');
  assert.equal(statusSummary(status(), 'timeout', true).level, 'warning');
});

test('commands: what can be stopped, what has a terminal, the dashboard notebook', () => {
  const rows = [
    { id: 'sesn_a', status: 'running', tier: 'container', sandbox: { state: 'running', isolation: 'container' } },
    { id: 'sesn_b', status: 'idle', tier: 'kernel', sandbox: { state: 'idle', isolation: 'bubblewrap' } },
    { id: 'sesn_c', status: 'stopped', tier: 'container', sandbox: null },
    { id: 'sesn_d', status: 'sleeping', tier: 'container', sandbox: null }
  ];
  assert.deepEqual(stoppable(rows).map(r => r.id), ['sesn_a', 'sesn_b']);
  assert.deepEqual(withTerminal(rows).map(r => r.id), ['sesn_a']);
  assert.equal(sessionLabel({ id: 'sesn_0123456789', title: 'Churn', status: 'running', tier: 'kernel' }), 'Churn (sesn_01234567…) · running · kernel');
  const nb = dashboardNotebook({ name: 'python3', display_name: 'Python 3' });
  assert.equal(nb.nbformat, 4);
  assert.equal(nb.metadata.kernelspec.name, 'python3');
  assert.equal(nb.cells[1].source, 'import jupyter_cma as cma\n\ncma.dashboard()');
});
