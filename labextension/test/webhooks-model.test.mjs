// The Webhooks view's pure logic (src/views/webhooks-model.ts), on the compiled lib/ output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bodyText, countersLine, deliveryPage, deliveryRow, mergeDeliveries } from '../lib/views/webhooks-model.js';

const d = (seq, extra = {}) => ({ seq, webhook_id: `msg_${seq}`, received_at: 100 + seq, event_type: 'session.status_idle',
  object_id: 'sesn_1', body: { type: 'event', data: { id: 'sesn_1' } }, ...extra });

test('a delivery as a row: accepted unless the API says otherwise, body as returned', () => {
  const r = deliveryRow(d(3));
  assert.equal(r.verdict, 'accepted');
  assert.equal(r.event_type, 'session.status_idle');
  assert.deepEqual(r.body, { type: 'event', data: { id: 'sesn_1' } });
  assert.equal(deliveryRow(d(4, { verdict: 'duplicate', body: null })).verdict, 'duplicate');
  assert.equal(bodyText(null), null);
  assert.equal(bodyText({ a: 1 }), '{\n  "a": 1\n}');
});

test('pages merge newest first, by seq; a short page has no next one', () => {
  const first = deliveryPage({ data: [d(9), d(8)], next_before: 8 }, 2);
  assert.equal(first.next, 8);
  const second = deliveryPage({ data: [d(7)], next_before: 7 }, 2);
  assert.equal(second.next, null);
  const rows = mergeDeliveries(mergeDeliveries(first.rows, second.rows), [deliveryRow(d(10)), deliveryRow(d(9))]);
  assert.deepEqual(rows.map(r => r.seq), [10, 9, 8, 7]);
  assert.deepEqual(deliveryPage({ data: [], next_before: null }, 50), { rows: [], next: null });
});

test('the counters line', () => {
  assert.equal(countersLine({ mode: 'webhook', webhooks: { accepted: 3, duplicates: 1, rejected: 2 } }),
    'mode webhook · accepted 3 · duplicates 1 · rejected 2 (since the server started)');
});
