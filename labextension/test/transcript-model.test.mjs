// Events → transcript (src/views/transcript-model.ts), on the compiled lib/ output: no browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  blocksText,
  cut,
  describeTurn,
  eventsCursor,
  imageSource,
  itemSignature,
  mergeEvents,
  transcriptItems,
  turnState
} from '../lib/views/transcript-model.js';

const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';
const text = t => [{ type: 'text', text: t }];

const EVENTS = [
  { id: 'e1', type: 'user.message', content: text('count the rows'), processed_at: '2026-12-05T08:00:00.000001Z' },
  { id: 'e2', type: 'agent.thinking', processed_at: '2026-12-05T08:00:01Z' },
  { id: 'e3', type: 'agent.custom_tool_use', name: 'add', input: { n: 1 }, processed_at: '2026-12-05T08:00:02Z' },
  { id: 'e4', type: 'user.custom_tool_result', custom_tool_use_id: 'e3', content: text('42'), processed_at: '2026-12-05T08:00:03Z' },
  { id: 'e5', type: 'agent.tool_use', name: 'python', input: { code: 'plot()' }, processed_at: '2026-12-05T08:00:04Z' },
  {
    id: 'e6',
    type: 'agent.tool_result',
    tool_use_id: 'e5',
    content: [{ type: 'text', text: 'a figure' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } }],
    processed_at: '2026-12-05T08:00:05Z'
  },
  { id: 'e7', type: 'agent.message', content: text('done: 42'), processed_at: '2026-12-05T08:00:06Z' },
  { id: 'e8', type: 'session.status_idle', stop_reason: { type: 'end_turn' }, processed_at: '2026-12-05T08:00:07Z' },
  { id: 'e9', type: 'session.usage', processed_at: '2026-12-05T08:00:08Z' }
];

test('messages, thinking, tool calls holding their results (text and images), in order, with turns', () => {
  const items = transcriptItems(EVENTS);
  assert.deepEqual(
    items.map(i => [i.kind, i.key, i.turn]),
    [
      ['user', 'e1', 1],
      ['thinking', 'e2', 1],
      ['tool', 'e3', 1],
      ['tool', 'e5', 1],
      ['agent', 'e7', 1]
    ]
  );
  const [add, python] = items.filter(i => i.kind === 'tool');
  assert.equal(add.name, 'add');
  assert.deepEqual(add.input, { n: 1 });
  assert.equal(add.toolType, 'custom');
  assert.equal(blocksText(add.result), '42');
  assert.equal(add.isError, false);
  assert.equal(python.result.length, 2);
  assert.equal(imageSource(python.result[1]), `data:image/png;base64,${PNG}`);
  assert.deepEqual(turnState(EVENTS), { state: 'done', userMessages: 1, reason: 'end_turn', waitingFor: [] });
  assert.equal(describeTurn(turnState(EVENTS)), 'idle: the turn is done');
});

test('a pending call, a denied confirmation, an error result, an MCP call', () => {
  const items = transcriptItems([
    { id: 'u', type: 'user.message', content: 'hi' },
    { id: 'c1', type: 'agent.tool_use', name: 'bash', input: { command: 'ls' } },
    { id: 'c2', type: 'agent.tool_use', name: 'bash', input: { command: 'rm -rf /' } },
    { id: 'd', type: 'user.tool_confirmation', tool_use_id: 'c2', result: 'deny', deny_message: 'not that' },
    { id: 'c3', type: 'agent.mcp_tool_use', name: 'search', mcp_server_name: 'docs', input: {} },
    { id: 'r3', type: 'agent.mcp_tool_result', mcp_tool_use_id: 'c3', content: 'boom', is_error: true },
    { id: 'r3b', type: 'agent.mcp_tool_result', mcp_tool_use_id: 'c3', content: 'second answer' }
  ]);
  const [pending, denied, mcp] = items.filter(i => i.kind === 'tool');
  assert.equal(pending.result, null);
  assert.equal(itemSignature(pending), 'tool:pending:0');
  assert.equal(denied.isError, true);
  assert.equal(blocksText(denied.result), 'not that');
  assert.equal(mcp.server, 'docs');
  assert.equal(mcp.isError, true);
  assert.equal(blocksText(mcp.result), 'boom', 'the first answer stands');
  assert.equal(itemSignature(mcp), 'tool:1:1');
});

test('errors, other stop reasons and termination are items; where the turn stands', () => {
  const events = [
    { id: 'u', type: 'user.message', content: text('go') },
    { id: 'x', type: 'session.error', error: { message: 'overloaded', retry_status: { type: 'retrying' } } },
    { id: 'c', type: 'agent.custom_tool_use', name: 'lookup', input: {} },
    { id: 'i', type: 'session.status_idle', stop_reason: { type: 'requires_action', event_ids: ['c'] } }
  ];
  assert.deepEqual(turnState(events).waitingFor, ['lookup']);
  assert.equal(describeTurn(turnState(events)), 'waiting for the result of lookup');
  const error = transcriptItems(events).find(i => i.kind === 'error');
  assert.equal(error.text, 'overloaded');
  assert.equal(error.retryStatus, 'retrying');
  const refused = [...events, { id: 'j', type: 'session.status_idle', stop_reason: { type: 'refusal' }, stop_details: { category: 'cyber' } }];
  assert.equal(turnState(refused).state, 'stopped');
  assert.equal(turnState(refused).reason, 'refusal: cyber');
  assert.equal(transcriptItems(refused).at(-1).kind, 'stop');
  const ended = [...events, { id: 't', type: 'session.status_terminated' }];
  assert.equal(turnState(ended).state, 'terminated');
  assert.equal(transcriptItems(ended).at(-1).kind, 'terminated');
  assert.equal(turnState([]).state, 'none');
  assert.equal(turnState(events.slice(0, 3)).state, 'running');
});

test('events merge by id: a page read twice adds nothing; an event that gained processed_at is replaced', () => {
  const first = mergeEvents([], EVENTS.slice(0, 4));
  assert.equal(first.changed, 4);
  const again = mergeEvents(first.events, EVENTS.slice(2, 6));
  assert.equal(again.changed, 2);
  assert.deepEqual(again.events.map(e => e.id), ['e1', 'e2', 'e3', 'e4', 'e5', 'e6']);
  const queued = { id: 'q', type: 'user.message', content: text('more'), processed_at: null };
  const withQueued = mergeEvents(again.events, [queued]);
  const processed = mergeEvents(withQueued.events, [{ ...queued, processed_at: '2026-12-05T08:01:00Z' }]);
  assert.equal(processed.changed, 1);
  assert.equal(processed.events.length, 7);
  assert.equal(processed.events[6].processed_at, '2026-12-05T08:01:00Z');
});

test('the after= cursor is the latest processed_at; none before anything was processed', () => {
  assert.equal(eventsCursor([]), undefined);
  assert.equal(eventsCursor([{ id: 'a', type: 'user.message', processed_at: null }]), undefined);
  assert.equal(eventsCursor(EVENTS), '2026-12-05T08:00:08Z');
  const shuffled = [EVENTS[3], EVENTS[0], EVENTS[1]];
  assert.equal(eventsCursor(shuffled), '2026-12-05T08:00:03Z');
  assert.equal(
    eventsCursor([
      { id: 'a', type: 'x', processed_at: '2026-12-05T08:00:00.000100Z' },
      { id: 'b', type: 'x', processed_at: '2026-12-05T08:00:00.000900Z' }
    ]),
    '2026-12-05T08:00:00.000900Z',
    'microseconds decide within a millisecond'
  );
});

test('only safe image sources: image types with base64, or http(s) URLs', () => {
  const b64 = (media, data) => ({ type: 'image', source: { type: 'base64', media_type: media, data } });
  assert.equal(imageSource(b64('image/png', PNG)), `data:image/png;base64,${PNG}`);
  assert.equal(imageSource(b64('image/svg+xml', PNG)), null, 'svg can carry script');
  assert.equal(imageSource(b64('image/png', 'abc"onerror=alert(1)')), null);
  assert.equal(imageSource(b64('image/png', 'abc')), null, 'not base64 by length');
  assert.equal(imageSource({ type: 'image', source: { type: 'url', url: 'https://example.com/a.png' } }), 'https://example.com/a.png');
  assert.equal(imageSource({ type: 'image', source: { type: 'url', url: 'javascript:alert(1)' } }), null);
});

test('block text and cutting', () => {
  assert.equal(blocksText('plain'), 'plain');
  assert.equal(blocksText([{ type: 'text', text: 'a' }, { type: 'image' }, { type: 'search_result', content: text('b') }]), 'a\n[image]\nb');
  assert.equal(cut('abcdef', 3), 'abc\n… (3 more characters)');
  assert.equal(cut('abc', 3), 'abc');
});
