// CmaApi: each method asks its route with the right method, path, query and body (over a recording transport).
import assert from 'node:assert/strict';
import test from 'node:test';

import { CmaApi, isActiveSession } from '../lib/core/api.js';

function recorder() {
  const calls = [];
  const transport = {
    baseUrl: '/',
    liveUrl: () => 'ws://h/cma/api/live',
    request: async (path, init = {}) => {
      calls.push({ path, ...init });
      return { data: [] };
    },
    fetchRaw: async (path, init) => {
      calls.push({ raw: path, ...init });
      return new Response('{"cells": []}', { status: 200 });
    }
  };
  return { api: new CmaApi(transport), calls };
}

test('sessions joins the states and leaves out absent filters', async () => {
  const { api, calls } = recorder();
  await api.sessions({ status: ['running', 'idle'], limit: 10 });
  await api.sessions();
  assert.deepEqual(calls[0], { path: 'sessions', query: { status: 'running,idle', agent_id: undefined, tier: undefined, limit: 10, before: undefined } });
  assert.equal(calls[1].query.status, undefined);
});

test('catch-up cursors: events?after= and egress/log?after=', async () => {
  const { api, calls } = recorder();
  await api.events('sesn_1', { after: '2026-01-01T00:00:00Z' });
  await api.egressLog({ after: 41, session_id: 'sesn_1' });
  assert.deepEqual(calls[0], { path: 'sessions/sesn_1/events', query: { limit: undefined, page: undefined, after: '2026-01-01T00:00:00Z' } });
  assert.deepEqual(calls[1], { path: 'egress/log', query: { after: 41, session_id: 'sesn_1' } });
});

test('actions are POST/PUT/PATCH/DELETE with their bodies; names in paths are encoded', async () => {
  const { api, calls } = recorder();
  await api.startEmulator();
  await api.stopSession('sesn_1');
  await api.openTerminal('sesn_1');
  await api.createSession({ agent_id: 'agent_1', message: 'hi' });
  await api.sendMessage('sesn_1', 'more');
  await api.patchAgent('agent_1', { tier: 'kernel' });
  await api.putSecret('GITHUB_TOKEN', 'v');
  await api.deleteSecret('A/B');
  await api.validatePolicy({ rules: [] });
  await api.decide({ url: 'https://pypi.org/' });
  await api.deletePolicy('pol_1');
  assert.deepEqual(calls.map(c => [c.method, c.path, c.body]), [
    ['POST', 'setup/emulator', {}],
    ['POST', 'sessions/sesn_1/stop', {}],
    ['POST', 'sessions/sesn_1/terminal', {}],
    ['POST', 'sessions', { agent_id: 'agent_1', message: 'hi' }],
    ['POST', 'sessions/sesn_1/messages', { text: 'more' }],
    ['PATCH', 'agents/agent_1', { tier: 'kernel' }],
    ['PUT', 'egress/secrets/GITHUB_TOKEN', { value: 'v' }],
    ['DELETE', 'egress/secrets/A%2FB', undefined],
    ['POST', 'egress/policies/validate', { rules: [] }],
    ['POST', 'egress/decide', { url: 'https://pypi.org/' }],
    ['DELETE', 'egress/policies/pol_1', undefined]
  ]);
});

test('downloads go through fetchRaw: the notebook and the JSONL log', async () => {
  const { api, calls } = recorder();
  assert.deepEqual(await api.notebook('sesn_1'), { cells: [] });
  await api.egressLogJsonl({ decision: 'deny' });
  assert.equal(calls[0].raw, 'sessions/sesn_1/notebook');
  assert.equal(calls[1].raw, 'egress/log?decision=deny&format=jsonl');
});

test('a session is active until it is stopped or failed', () => {
  assert.equal(isActiveSession({ status: 'running' }), true);
  assert.equal(isActiveSession({ status: 'sleeping' }), true);
  assert.equal(isActiveSession({ status: 'stopped' }), false);
  assert.equal(isActiveSession({ status: 'failed' }), false);
});

test('notebook edits: GET with its filters, undo as a POST; agents take builtins', async () => {
  const { api, calls } = recorder();
  await api.notebookEdits({ session_id: 'sesn_1' });
  await api.notebookEdits();
  await api.undoNotebookEdit(7);
  await api.createAgent({ name: 'a', builtins: { web_fetch: {}, notebook: { mode: 'edit', paths: ['**'] } } });
  assert.deepEqual(calls[0], { path: 'notebook-edits', query: { session_id: 'sesn_1', path: undefined, limit: undefined } });
  assert.equal(calls[1].query.session_id, undefined);
  assert.deepEqual([calls[2].method, calls[2].path, calls[2].body], ['POST', 'notebook-edits/7/undo', {}]);
  assert.deepEqual(calls[3].body.builtins, { web_fetch: {}, notebook: { mode: 'edit', paths: ['**'] } });
});
