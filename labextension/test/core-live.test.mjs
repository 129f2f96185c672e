// The live channel's client: merging the views' interests, dispatching, and when views resync, against a fake
// socket and fake timers (the server side is tested in tests/test_live.py).
import assert from 'node:assert/strict';
import test from 'node:test';

import { backoffDelay, coalesce, LiveClient, matches, mergeFilters } from '../lib/core/live.js';

const tick = () => new Promise(resolve => setTimeout(resolve, 0));

function harness() {
  const sockets = [];
  const timers = [];
  const client = new LiveClient({
    url: () => 'ws://h/cma/api/live',
    createSocket: url => {
      const s = { url, readyState: 1, sent: [], closed: false, onopen: null, onmessage: null, onclose: null, onerror: null,
        send(text) { this.sent.push(JSON.parse(text)); }, close() { this.closed = true; } };
      sockets.push(s);
      return s;
    },
    setTimeout: (fn, ms) => { const t = { fn, ms, done: false }; timers.push(t); return t; },
    clearTimeout: t => { if (t) t.done = true; }
  });
  const server = {
    hello(epoch = 'e1', seq = 0) { sockets.at(-1).onmessage({ data: JSON.stringify({ kind: 'hello', seq, epoch, max_queue: 1000 }) }); },
    subscribed() { sockets.at(-1).onmessage({ data: JSON.stringify({ kind: 'subscribed', filter: {} }) }); },
    send(messages) { sockets.at(-1).onmessage({ data: JSON.stringify(messages) }); },
    gap() { sockets.at(-1).onmessage({ data: JSON.stringify({ kind: 'gap', seq: 9, dropped: 3 }) }); },
    drop() { const s = sockets.at(-1); s.readyState = 3; s.onclose({ code: 1006 }); },
    runTimers() { const due = timers.filter(t => !t.done); due.forEach(t => { t.done = true; t.fn(); }); return due.map(t => t.ms); }
  };
  return { client, sockets, timers, server };
}

function view(client, interest) {
  const v = { messages: [], resyncs: 0 };
  v.sub = client.listen(interest, { message: m => v.messages.push(m), resync: () => v.resyncs++ });
  return v;
}

const msg = (seq, kind, session_id = null, data = {}) => ({ seq, t: 1, kind, session_id, data });

test('mergeFilters: union of kinds and sessions; one egress session only when every egress view wants it', () => {
  assert.deepEqual(mergeFilters([]), { op: 'subscribe', kinds: [], sessions: null, egress: null });
  assert.deepEqual(
    mergeFilters([{ kinds: ['session.state'] }, { kinds: ['session.event', 'session.state'], sessions: ['s1'] }]),
    { op: 'subscribe', kinds: ['session.event', 'session.state'], sessions: ['s1'], egress: null });
  assert.equal(mergeFilters([{ kinds: ['session.state'] }, {}]).kinds, null);
  assert.deepEqual(mergeFilters([{ kinds: ['egress.row'], egress: { session_id: 's1' } }, { kinds: ['session.state'] }]).egress, { session_id: 's1' });
  assert.equal(mergeFilters([{ kinds: ['egress.row'], egress: { session_id: 's1' } }, { kinds: ['egress.row'] }]).egress, null);
  assert.equal(mergeFilters([{ kinds: ['egress.row'], egress: { session_id: 's1' } }, { egress: { session_id: 's2' } }]).egress, null);
  assert.deepEqual(mergeFilters([{ sessions: ['a', 'b'] }, { sessions: ['b', 'c'] }], 2).sessions, ['a', 'b']);
  assert.deepEqual(mergeFilters([{ kinds: ['session.state', 'no.such.kind'] }]).kinds, ['session.state']);
});

test('matches: session.event only for listed sessions, egress rows of the wanted session, kinds', () => {
  assert.equal(matches({}, msg(1, 'session.state', 's1')), true);
  assert.equal(matches({ kinds: ['egress.row'] }, msg(1, 'session.state', 's1')), false);
  assert.equal(matches({}, msg(1, 'session.event', 's1')), false);
  assert.equal(matches({ sessions: ['s1'] }, msg(1, 'session.event', 's1')), true);
  assert.equal(matches({ sessions: ['s1'] }, msg(1, 'session.event', null, { session_id: 's1' })), true);
  assert.equal(matches({ egress: { session_id: 's1' } }, msg(1, 'egress.row', 's2')), false);
  assert.equal(matches({ egress: { session_id: 's1' } }, msg(1, 'egress.row', 's1')), true);
  assert.equal(matches({ sessions: ['s1'] }, msg(1, 'session.state', 's2')), true);
});

test('backoff: 1 s doubling up to 30 s', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10].map(backoffDelay), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
});

test('one socket for all views; hello sends the merged filter and views resync once it is applied', async () => {
  const { client, sockets, server } = harness();
  const a = view(client, { kinds: ['session.state'] });
  const b = view(client, { kinds: ['session.event'], sessions: ['s1'] });
  assert.equal(sockets.length, 1);
  server.hello();
  assert.equal(client.connected, true);
  assert.deepEqual(sockets[0].sent, [{ op: 'subscribe', kinds: ['session.event', 'session.state'], sessions: ['s1'], egress: null }]);
  assert.deepEqual([a.resyncs, b.resyncs], [0, 0]);
  server.subscribed();
  assert.deepEqual([a.resyncs, b.resyncs], [1, 1]);
  server.send([msg(1, 'session.state', 's2'), msg(2, 'session.event', 's1'), msg(3, 'session.event', 's9')]);
  assert.deepEqual(a.messages.map(m => m.seq), [1]);
  assert.deepEqual(b.messages.map(m => m.seq), [2]);
  assert.equal(client.seq, 3);
  client.dispose();
});

test('a view that joins later: a new filter goes out and only that view resyncs when it is applied', async () => {
  const { client, sockets, server } = harness();
  const a = view(client, { kinds: ['session.state'] });
  server.hello();
  server.subscribed();
  const b = view(client, { kinds: ['egress.row'], egress: { session_id: 's1' } });
  await tick();
  assert.deepEqual(sockets[0].sent.at(-1), { op: 'subscribe', kinds: ['egress.row', 'session.state'], sessions: null, egress: { session_id: 's1' } });
  server.subscribed();
  assert.deepEqual([a.resyncs, b.resyncs], [1, 1]);
  // the same interest again changes nothing on the wire: the view resyncs at once
  const c = view(client, { kinds: ['session.state'] });
  await tick();
  assert.equal(sockets[0].sent.length, 2);
  assert.equal(c.resyncs, 1);
  // leaving narrows the filter
  b.sub.dispose();
  c.sub.dispose();
  await tick();
  assert.deepEqual(sockets[0].sent.at(-1), { op: 'subscribe', kinds: ['session.state'], sessions: null, egress: null });
  client.dispose();
});

test('a gap makes every view resync', () => {
  const { client, server } = harness();
  const a = view(client, {});
  const b = view(client, { kinds: ['egress.row'] });
  server.hello();
  server.subscribed();
  server.gap();
  assert.deepEqual([a.resyncs, b.resyncs], [2, 2]);
  assert.equal(client.seq, 9);
  client.dispose();
});

test('a dropped socket reconnects with backoff; the new hello (a new epoch too) resyncs every view', () => {
  const { client, sockets, server } = harness();
  const a = view(client, { kinds: ['session.state'] });
  const changes = [];
  client.onConnectionChange(c => changes.push(c));
  server.hello('e1');
  server.subscribed();
  server.drop();
  assert.equal(client.connected, false);
  assert.deepEqual(server.runTimers(), [1000]);
  assert.equal(sockets.length, 2);
  server.drop();
  assert.deepEqual(server.runTimers(), [2000]);
  assert.equal(sockets.length, 3);
  server.hello('e2', 40);
  assert.equal(client.epoch, 'e2');
  assert.deepEqual(sockets[2].sent, [{ op: 'subscribe', kinds: ['session.state'], sessions: null, egress: null }]);
  server.subscribed();
  assert.equal(a.resyncs, 2);
  assert.deepEqual(changes, [true, false, true]);
  // after a successful hello the backoff starts over
  server.drop();
  assert.deepEqual(server.runTimers(), [1000]);
  client.dispose();
});

test('when the channel cannot connect, views still load their snapshot from REST', () => {
  const { client, server } = harness();
  const a = view(client, { kinds: ['session.state'] });
  server.drop();
  assert.equal(a.resyncs, 1);
  server.runTimers();
  server.drop();
  assert.equal(a.resyncs, 1);
  client.dispose();
});

test('a view failing on a message does not stop the others', () => {
  const { client, server } = harness();
  const errors = [];
  const original = console.error;
  console.error = (...args) => errors.push(args);
  try {
    client.listen({}, { message: () => { throw new Error('boom'); }, resync: () => undefined });
    const b = view(client, {});
    server.hello();
    server.subscribed();
    server.send([msg(1, 'status.changed')]);
    assert.equal(b.messages.length, 1);
    assert.equal(errors.length, 1);
  } finally {
    console.error = original;
    client.dispose();
  }
});

test('the socket closes some time after the last view left, and reopens for a new one', () => {
  const { client, sockets, server } = harness();
  const a = view(client, {});
  server.hello();
  a.sub.dispose();
  assert.deepEqual(server.runTimers(), [10000]);
  assert.equal(sockets[0].closed, true);
  assert.equal(client.connected, false);
  view(client, {});
  assert.equal(sockets.length, 2);
  client.dispose();
});

test('LiveClient.shared is one client per page', () => {
  const t = { liveUrl: () => 'ws://h/cma/api/live' };
  const one = LiveClient.shared(t);
  assert.equal(LiveClient.shared({ liveUrl: () => 'ws://other' }), one);
  assert.equal(globalThis.__jupyterCmaLive, one);
  one.dispose();
  assert.equal(globalThis.__jupyterCmaLive, undefined);
});

test('coalesce: one run in flight and one trailing run for any number of calls meanwhile', async () => {
  let runs = 0;
  let release;
  const refresh = coalesce(async () => {
    runs++;
    await new Promise(r => { release = r; });
  });
  const p1 = refresh();
  const p2 = refresh();
  const p3 = refresh();
  assert.equal(p2, p3);
  assert.equal(runs, 1);
  release();
  await p1;
  await tick();
  assert.equal(runs, 2);
  release();
  await p2;
  assert.equal(runs, 2);
  const failing = coalesce(async () => { throw new Error('x'); }, e => (runs += 10));
  await failing();
  assert.equal(runs, 12);
});
