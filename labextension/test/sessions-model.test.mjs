// The sessions table's logic (src/views/sessions-model.ts), on the compiled lib/ output: no browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  agentLabel,
  applyLive,
  cleanFilter,
  isolationOf,
  lastActivity,
  matchesFilter,
  mergeSnapshot,
  snapshotQuery,
  sortSessions,
  unknownAgents,
  visibleSessions
} from '../lib/views/sessions-model.js';

function row(id, more = {}) {
  return {
    id,
    agent_id: 'agent_a',
    status: 'running',
    tier: 'kernel',
    title: null,
    created_at: 100,
    updated_at: 100,
    cold_start_ms: 250,
    metadata: {},
    sandbox: { state: 'busy', start: 'pool', isolation: 'bubblewrap', tool_calls: 2, last_activity: 110 },
    ...more
  };
}

const names = new Map([
  ['agent_a', 'analyst'],
  ['agent_b', 'Builder']
]);

test('filters: state (and active), tier, agent by id or name, words anywhere in the row', () => {
  const rows = [
    row('sesn_1'),
    row('sesn_2', { status: 'sleeping', sandbox: null, tier: 'container', agent_id: 'agent_b', title: 'Nightly ETL' }),
    row('sesn_3', { status: 'idle', metadata: { team: 'ml' } }),
    row('sesn_4', { status: 'ended', sandbox: null })
  ];
  const ids = filter => rows.filter(r => matchesFilter(r, filter, names)).map(r => r.id);
  assert.deepEqual(ids({}), ['sesn_1', 'sesn_2', 'sesn_3', 'sesn_4']);
  assert.deepEqual(ids({ state: 'active' }), ['sesn_1', 'sesn_3']);
  assert.deepEqual(ids({ state: 'ended' }), ['sesn_4']);
  assert.deepEqual(ids({ tier: 'container' }), ['sesn_2']);
  assert.deepEqual(ids({ agent: 'agent_b' }), ['sesn_2']);
  assert.deepEqual(ids({ agent: 'builder' }), ['sesn_2'], 'agent names match without case');
  assert.deepEqual(ids({ text: 'nightly' }), ['sesn_2']);
  assert.deepEqual(ids({ text: 'team=ml' }), ['sesn_3'], 'metadata is searchable as key=value');
  assert.deepEqual(ids({ text: 'analyst idle' }), ['sesn_3'], 'every word must appear');
  assert.deepEqual(ids({ text: 'POOL' }), ['sesn_1', 'sesn_3'], 'how the sandbox started, any case');
  assert.deepEqual(ids({ state: 'active', tier: 'container' }), []);
});

test('a live state change replaces the row; an older or repeated one changes nothing', () => {
  const rows = new Map([['sesn_1', row('sesn_1')]]);
  const before = rows.get('sesn_1');
  assert.equal(applyLive(rows, { kind: 'session.state', data: { id: 'sesn_1', state: 'idle', from_state: 'running', at: 120 } }), 'changed');
  const after = rows.get('sesn_1');
  assert.notEqual(after, before, 'a new object, so the view redraws that row');
  assert.equal(after.status, 'idle');
  assert.equal(after.updated_at, 120);
  assert.equal(after.sandbox.tool_calls, 2, 'a serving state keeps its sandbox');
  assert.equal(applyLive(rows, { kind: 'session.state', data: { id: 'sesn_1', state: 'running', at: 90 } }), 'unchanged');
  assert.equal(applyLive(rows, { kind: 'session.state', data: { id: 'sesn_1', state: 'idle', at: 120 } }), 'unchanged');
  assert.equal(rows.get('sesn_1'), after);
  assert.equal(applyLive(rows, { kind: 'session.state', data: { id: 'sesn_1', state: 'sleeping', at: 130 } }), 'changed');
  assert.equal(rows.get('sesn_1').sandbox, null, 'a session no longer served has no sandbox');
});

test('a state message for an unknown session adds a placeholder and asks for a refetch', () => {
  const rows = new Map();
  const result = applyLive(rows, {
    kind: 'session.state',
    session_id: 'sesn_9',
    data: { id: 'sesn_9', state: 'claimed', from_state: null, tier: 'container', agent_id: 'agent_b', at: 200 }
  });
  assert.equal(result, 'unknown');
  const placeholder = rows.get('sesn_9');
  assert.equal(placeholder.status, 'claimed');
  assert.equal(placeholder.tier, 'container');
  assert.equal(agentLabel(placeholder, names), 'Builder');
});

test('tool messages raise the tool count and last activity, idempotently', () => {
  const rows = new Map([['sesn_1', row('sesn_1')]]);
  assert.equal(applyLive(rows, { kind: 'session.tool', data: { session_id: 'sesn_1', tool_calls: 3, at: 150 } }), 'changed');
  assert.equal(rows.get('sesn_1').sandbox.tool_calls, 3);
  assert.equal(lastActivity(rows.get('sesn_1')), 150);
  assert.equal(applyLive(rows, { kind: 'session.tool', data: { session_id: 'sesn_1', tool_calls: 3, at: 150 } }), 'unchanged');
  assert.equal(applyLive(rows, { kind: 'session.tool', data: { session_id: 'sesn_1', tool_calls: 2, at: 140 } }), 'unchanged', 'an older count never lowers it');
  assert.equal(applyLive(rows, { kind: 'session.tool', data: { session_id: 'sesn_x', tool_calls: 1, at: 150 } }), 'unknown');
  assert.equal(applyLive(rows, { kind: 'session.tool', data: { session_id: 'sesn_1', tool_calls: 3, at: 150, cold_start_ms: 812.5 } }), 'changed');
  assert.equal(rows.get('sesn_1').cold_start_ms, 812.5, 'the cold start shows once the first tool result is in');
  assert.equal(applyLive(rows, { kind: 'egress.row', data: { id: 1 } }), 'unchanged');
});

test('a snapshot wins unless a live message was newer; rows it lacks stay only if live touched them meanwhile', () => {
  const live = row('sesn_1', { status: 'idle', updated_at: 300 });
  const current = new Map([
    ['sesn_1', live],
    ['sesn_2', row('sesn_2', { updated_at: 50 })],
    ['sesn_3', row('sesn_3', { updated_at: 400, status: 'claimed' })],
    ['sesn_4', row('sesn_4', { updated_at: 120 })]
  ]);
  const snapshot = [row('sesn_1', { status: 'running', updated_at: 200, title: 'from REST' }), row('sesn_4', { updated_at: 120 })];
  const merged = mergeSnapshot(current, snapshot, new Set(['sesn_3']));
  assert.deepEqual([...merged.keys()], ['sesn_1', 'sesn_4', 'sesn_3']);
  assert.equal(merged.get('sesn_1').status, 'idle', 'the newer live state stands');
  assert.equal(merged.get('sesn_1').title, 'from REST', 'the other fields come from the snapshot');
  assert.equal(merged.get('sesn_4'), current.get('sesn_4'), 'an unchanged row keeps its object');
});

test('sorting: most recent activity first by default; by any column, ties stable', () => {
  const rows = [
    row('sesn_a', { updated_at: 10, sandbox: null, cold_start_ms: 900 }),
    row('sesn_b', { updated_at: 30, sandbox: null, cold_start_ms: 100 }),
    row('sesn_c', { updated_at: 20, sandbox: { state: 'busy', start: 'new', isolation: 'none', tool_calls: 9, last_activity: 40 } })
  ];
  assert.deepEqual(sortSessions(rows).map(r => r.id), ['sesn_c', 'sesn_b', 'sesn_a']);
  assert.deepEqual(sortSessions(rows, { key: 'cold_start', descending: false }).map(r => r.id), ['sesn_b', 'sesn_c', 'sesn_a']);
  assert.deepEqual(sortSessions(rows, { key: 'tool_calls', descending: true }).map(r => r.id), ['sesn_c', 'sesn_b', 'sesn_a']);
});

test('visible rows are capped, with the total before the cap', () => {
  const rows = Array.from({ length: 30 }, (_, i) => row(`sesn_${i}`, { updated_at: i, sandbox: null }));
  const shown = visibleSessions(rows, { state: 'running' }, { max: 10 });
  assert.equal(shown.total, 30);
  assert.equal(shown.rows.length, 10);
  assert.equal(shown.rows[0].id, 'sesn_29');
});

test('the REST query asks the server for what it can filter', () => {
  assert.deepEqual(snapshotQuery({}), { limit: 200 });
  assert.deepEqual(snapshotQuery({ state: 'active', tier: 'kernel', agent: 'agent_x1' }, 50), {
    limit: 50,
    status: 'claimed,starting,running,idle,resumed',
    tier: 'kernel',
    agent_id: 'agent_x1'
  });
  assert.deepEqual(snapshotQuery({ state: 'ended', agent: 'analyst' }, 9999), { limit: 500 }, 'ended and names: filtered here');
});

test('isolation, agents to look up, filters from traits', () => {
  assert.equal(isolationOf(row('s', { sandbox: null, tier: 'container' })), 'container');
  assert.equal(isolationOf(row('s', { sandbox: null })), '');
  assert.equal(isolationOf(row('s')), 'bubblewrap');
  assert.deepEqual(unknownAgents([row('s1'), row('s2', { agent_id: 'agent_z' })], names), ['agent_z']);
  assert.deepEqual(cleanFilter({ state: 'bogus', tier: 'gpu', agent: ' analyst ', text: 3 }), {
    state: '',
    tier: '',
    agent: 'analyst',
    text: ''
  });
});
