// The formatters the views share.
import assert from 'node:assert/strict';
import test from 'node:test';

import { age, bytes, duration, errorMessage, ms, parseTime, plural, shortId, truncate } from '../lib/core/format.js';

test('duration and age', () => {
  assert.equal(duration(5.9), '5s');
  assert.equal(duration(125), '2m');
  assert.equal(duration(7200), '2h');
  assert.equal(duration(3 * 86400 + 5), '3d');
  assert.equal(duration(null), '–');
  assert.equal(age(100, 100.5), 'just now');
  assert.equal(age(100, 190), '1m ago');
  assert.equal(age(undefined, 1), '–');
});

test('ms and bytes', () => {
  assert.equal(ms(850.4), '850 ms');
  assert.equal(ms(1234), '1.2 s');
  assert.equal(ms(12_345), '12 s');
  assert.equal(ms(125_000), '2m 05s');
  assert.equal(ms(NaN), '–');
  assert.equal(bytes(512), '512 B');
  assert.equal(bytes(1536), '1.5 KB');
  assert.equal(bytes(12 * 1024 * 1024), '12 MB');
  assert.equal(bytes(undefined), '–');
});

test('parseTime, plural, truncate, shortId, errorMessage', () => {
  assert.equal(parseTime('2026-01-01T00:00:01Z'), 1767225601);
  assert.equal(parseTime('nope'), null);
  assert.equal(plural(1, 'session'), '1 session');
  assert.equal(plural(2, 'policy', 'policies'), '2 policies');
  assert.equal(truncate('abcdef', 4), 'abc…');
  assert.equal(truncate('abc', 4), 'abc');
  assert.equal(shortId('sesn_0123456789abc'), 'sesn_01234567…');
  assert.equal(shortId('sesn_0123'), 'sesn_0123');
  assert.equal(shortId(null), '–');
  assert.equal(errorMessage(new Error('x')), 'x');
  assert.equal(errorMessage('y'), 'y');
});
