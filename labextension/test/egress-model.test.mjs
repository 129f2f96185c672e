// The Egress views' pure logic (src/views/egress-model.ts), on the compiled lib/ output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  canSave, countByDecision, decideBody, explanation, isEgressRow, logQuery, mergeRows, newestId, parsePolicyText,
  policyRows, policyText, rowMatches, rowTarget, scopeLabel, secretNameProblem, secretRows, secretValueProblem,
  shortFingerprint, validationMessages
} from '../lib/views/egress-model.js';

function row(id, extra = {}) {
  return { id, at: 1000 + id, session_id: 'sesn_1', agent_id: 'agent_1', method: 'GET', scheme: 'https', host: 'pypi.org',
    port: 443, path: '/simple/', status: 200, bytes_up: 10, bytes_down: 20, duration_ms: 5, decision: 'allowed',
    rule: 'policy:pol_1:preset:pypi:pypi.org', ...extra };
}

test('filters match exactly, as the server does; the host case-insensitively', () => {
  const r = row(1, { host: 'pypi.org', decision: 'denied', session_id: 'sesn_2' });
  assert.ok(rowMatches(r, {}));
  assert.ok(rowMatches(r, { host: ' PyPI.org ', decision: 'denied', session: 'sesn_2' }));
  assert.ok(!rowMatches(r, { host: 'pypi' }));
  assert.ok(!rowMatches(r, { decision: 'allowed' }));
  assert.ok(!rowMatches(r, { session: 'sesn_1' }));
});

test('the query of a filter (and of the export) names only what is set', () => {
  assert.deepEqual(logQuery({ host: 'X.org', decision: '', session: 'sesn_1' }, { format: 'jsonl' }),
    { session_id: 'sesn_1', host: 'x.org', format: 'jsonl' });
  assert.deepEqual(logQuery({}), {});
});

test('rows merge by id, newest first, a later copy wins, capped', () => {
  const snapshot = [row(3), row(2), row(1)];
  const merged = mergeRows(snapshot, [row(2, { status: 404 }), row(4)]);
  assert.deepEqual(merged.map(r => r.id), [4, 3, 2, 1]);
  assert.equal(merged.find(r => r.id === 2).status, 404);
  // an ascending page (GET egress/log?after=) merges the same way
  assert.deepEqual(mergeRows(merged, [row(5), row(6)], 3).map(r => r.id), [6, 5, 4]);
  // applying the same live message twice changes nothing
  assert.deepEqual(mergeRows(mergeRows([], [row(7)]), [row(7)]).map(r => r.id), [7]);
  assert.deepEqual(mergeRows([], [{ id: 'x' }, null, row(1)]).map(r => r.id), [1]);
  assert.equal(newestId(merged), 4);
  assert.equal(newestId([]), null);
  assert.ok(isEgressRow(row(1)) && !isEgressRow({ id: 1.5, decision: 'x' }));
});

test('a row reads as one request line, default ports left out', () => {
  assert.equal(rowTarget(row(1)), 'GET https://pypi.org/simple/');
  assert.equal(rowTarget(row(1, { method: 'CONNECT', port: 8443, path: null })), 'CONNECT https://pypi.org:8443');
  assert.equal(rowTarget(row(1, { scheme: 'http', port: 80, path: '/' })), 'GET http://pypi.org/');
  assert.deepEqual(countByDecision([row(1), row(2, { decision: 'denied' }), row(3)]), { allowed: 2, denied: 1 });
});

test('a policy is edited without its read-only fields; bad JSON says where', () => {
  const text = policyText({ id: 'pol_1', name: 'p', scope: { environment: true }, created_at: 1, updated_at: 2 });
  assert.deepEqual(JSON.parse(text), { name: 'p', scope: { environment: true } });
  assert.deepEqual(parsePolicyText('{"name": "p"}'), { doc: { name: 'p' } });
  const bad = parsePolicyText('{\n  "name": "p",\n  oops\n}');
  assert.match(bad.error, /line 3/);
  assert.match(parsePolicyText('[1]').error, /JSON object/);
});

test('validation answers become messages; errors block saving, warnings do not', () => {
  const invalid = validationMessages({ valid: false, errors: ['allow[0]: *.com covers a public suffix'], warnings: [], policy: null });
  assert.deepEqual(invalid, [{ level: 'error', text: 'allow[0]: *.com covers a public suffix' }]);
  assert.ok(!canSave(invalid));
  const warned = validationMessages({ valid: true, errors: [], warnings: ['secret GITHUB_TOKEN is not set yet'] });
  assert.deepEqual(warned.map(m => m.level), ['warning', 'ok']);
  assert.ok(canSave(warned));
  assert.deepEqual(validationMessages({ valid: true, errors: [], warnings: [] }), [{ level: 'ok', text: 'valid' }]);
  assert.equal(validationMessages({ valid: false }).length, 1);
  assert.ok(!canSave([]));
});

test('policies list: scopes in words, rule counts, a corrupt one with its error', () => {
  const rows = policyRows([
    { id: 'pol_1', name: 'gh', scope: { agent_id: 'agent_1' }, presets: ['pypi'], allow: ['api.github.com'], deny: [],
      inject: [{}], private_services: [], updated_at: 5 },
    { id: 'pol_2', name: 'broken', error: 'stored policy is invalid: x', created_at: 1, updated_at: 2 }
  ]);
  assert.equal(rows[0].scope, 'agent agent_1');
  assert.equal(rows[0].summary, 'presets 1 · allow 1 · deny 0 · inject 1');
  assert.equal(rows[1].error, 'stored policy is invalid: x');
  assert.equal(scopeLabel({ metadata: [{ key: 'team', equals: 'ml' }, { key: 'env', one_of: ['a', 'b'] }] }),
    'metadata team=ml, env in [a, b]');
  assert.equal(scopeLabel({ environment: true }), 'environment');
});

test('explain: the body from the form, the answer as decision, rule and policies', () => {
  assert.deepEqual(decideBody(' https://pypi.org/simple/ ', 'get', ''), { url: 'https://pypi.org/simple/', method: 'GET' });
  assert.deepEqual(decideBody('https://x.org', '', 'sesn_1'), { url: 'https://x.org', method: 'GET', session_id: 'sesn_1' });
  const e = explanation({
    decision: { action: 'deny', rule: 'default:no-policy', reason: 'no policy applies', status: 403, injections: [],
      private_service: null, policy_id: null },
    request: { method: 'GET', scheme: 'https', host: 'evil.example', port: 443, path: '/x', websocket: false },
    context: { session_id: 'sesn_1', agent_id: null, metadata: {} },
    resolution: { policies: [{ id: 'pol_1', name: 'env', scope: { environment: true }, role: 'decides' }], system_allowance: null,
      error: null, middleware: [] }
  });
  assert.equal(e.allowed, false);
  assert.equal(e.rule, 'default:no-policy');
  assert.equal(e.request, 'GET https://evil.example/x');
  assert.deepEqual(e.policies, [{ id: 'pol_1', name: 'env', scope: 'environment', role: 'decides' }]);
  const i = explanation({ decision: { action: 'allow', rule: 'r', injections: [{ header: 'Authorization', secret: 'GH', prefix: 'Bearer ', secret_set: false }] } });
  assert.equal(i.allowed, true);
  assert.deepEqual(i.injections, [{ header: 'Authorization', secret: 'GH', set: false }]);
});

test('secrets: names checked, values checked without being echoed, rows carry no value', () => {
  assert.equal(secretNameProblem('GITHUB_TOKEN'), null);
  assert.ok(secretNameProblem('1abc'));
  assert.ok(secretNameProblem('a-b'));
  assert.equal(secretValueProblem(' tok '), null);
  assert.ok(secretValueProblem('   '));
  const problem = secretValueProblem('line1\nline2-s3cr3t');
  assert.ok(problem && !problem.includes('s3cr3t'));
  const rows = secretRows([{ name: 'B', fingerprint: 'f2', created_at: 1, updated_at: 2, value: 'leak' }, { name: 'A', fingerprint: 'f1' }]);
  assert.deepEqual(rows.map(r => r.name), ['A', 'B']);
  assert.ok(!('value' in rows[1]));
});

test('a fingerprint is shown by its digest\'s first characters', () => {
  assert.equal(shortFingerprint('hmac-sha256:0e6b1c2d3e4f5a6b7c8d'), '0e6b1c2d3e4f…');
  assert.equal(shortFingerprint('abc'), 'abc');
});
