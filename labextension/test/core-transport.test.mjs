// Transport helpers and the fetch transport (pageTransport's implementation) against a fake fetch.
import assert from 'node:assert/strict';
import test from 'node:test';

import {
  ApiError, apiPath, errorFromResponse, fetchTransport, joinUrl, readPageConfig, wsUrlFor, xsrfFromCookie
} from '../lib/core/transport.js';

test('apiPath leaves out undefined and null query values', () => {
  assert.equal(apiPath('sessions'), 'sessions');
  assert.equal(apiPath('/sessions', { status: 'running,idle', limit: 5, tier: undefined, before: null }), 'sessions?status=running%2Cidle&limit=5');
  assert.equal(apiPath('egress/log?format=jsonl', { host: 'a b' }), 'egress/log?format=jsonl&host=a+b');
  assert.equal(apiPath('status', {}), 'status');
});

test('joinUrl and wsUrlFor keep the base URL prefix', () => {
  assert.equal(joinUrl('/user/x/', '/cma/api/status'), '/user/x/cma/api/status');
  assert.equal(joinUrl('http://h:1/base', 'cma/api/'), 'http://h:1/base/cma/api/');
  assert.equal(wsUrlFor('/user/x/', 'https://hub.example'), 'wss://hub.example/user/x/');
  assert.equal(wsUrlFor('http://127.0.0.1:8888/', 'http://other'), 'ws://127.0.0.1:8888/');
});

test('xsrfFromCookie reads and decodes the _xsrf cookie only', () => {
  assert.equal(xsrfFromCookie('a=1; _xsrf=2%7C3abc; b=2'), '2|3abc');
  assert.equal(xsrfFromCookie('_xsrf=tok'), 'tok');
  assert.equal(xsrfFromCookie('not_xsrf=1'), undefined);
  assert.equal(xsrfFromCookie(''), undefined);
});

test('readPageConfig reads #jupyter-config-data and falls back to the body data or "/"', () => {
  const doc = (text, dataset = {}) => ({ getElementById: id => (id === 'jupyter-config-data' && text !== null ? { textContent: text } : null), body: { dataset } });
  assert.deepEqual(readPageConfig(doc('{"baseUrl": "/user/x", "token": "t", "wsUrl": ""}')), { baseUrl: '/user/x/', wsUrl: '', token: 't' });
  assert.deepEqual(readPageConfig(doc(null, { baseUrl: '/classic/' })), { baseUrl: '/classic/', wsUrl: '', token: '' });
  assert.deepEqual(readPageConfig(doc('not json')), { baseUrl: '/', wsUrl: '', token: '' });
  assert.deepEqual(readPageConfig(undefined), { baseUrl: '/', wsUrl: '', token: '' });
});

function fakeFetch(answer) {
  const calls = [];
  const f = async (url, init) => {
    calls.push({ url, init });
    return typeof answer === 'function' ? answer(url, init) : answer.clone();
  };
  return { f, calls };
}

const json = (body, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

test('fetchTransport sends the token, the XSRF header and a JSON body under {base}cma/api/', async () => {
  const { f, calls } = fakeFetch(json({ id: 'sesn_1' }, 201));
  const t = fetchTransport({ baseUrl: '/user/x/', origin: 'http://h', token: 'tok', xsrf: () => 'x1', fetch: f });
  const answer = await t.request('sessions', { method: 'post', body: { agent_id: 'agent_1' }, query: { a: 1 } });
  assert.deepEqual(answer, { id: 'sesn_1' });
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, 'http://h/user/x/cma/api/sessions?a=1');
  assert.equal(calls[0].init.method, 'POST');
  assert.equal(calls[0].init.credentials, 'same-origin');
  assert.equal(calls[0].init.headers.get('Authorization'), 'token tok');
  assert.equal(calls[0].init.headers.get('X-XSRFToken'), 'x1');
  assert.equal(calls[0].init.headers.get('Content-Type'), 'application/json');
  assert.equal(calls[0].init.body, '{"agent_id":"agent_1"}');
  assert.equal(t.baseUrl, '/user/x/');
});

test('fetchTransport without a token or XSRF cookie sends neither header, and no body on GET', async () => {
  const { f, calls } = fakeFetch(json({ ok: true }));
  const t = fetchTransport({ baseUrl: '/', origin: 'http://h', fetch: f });
  await t.request('status');
  assert.equal(calls[0].init.headers.get('Authorization'), null);
  assert.equal(calls[0].init.headers.get('X-XSRFToken'), null);
  assert.equal(calls[0].init.body, undefined);
  assert.equal(calls[0].init.method, 'GET');
});

test('a non-2xx answer rejects with ApiError carrying the status and the server message', async () => {
  const { f } = fakeFetch(json({ message: 'no sandbox is serving session sesn_1 on this server' }, 409));
  const t = fetchTransport({ baseUrl: '/', origin: 'http://h', fetch: f });
  await assert.rejects(t.request('sessions/sesn_1/stop', { method: 'POST', body: {} }), e => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 409);
    assert.equal(e.message, 'no sandbox is serving session sesn_1 on this server');
    return true;
  });
});

test('errorFromResponse falls back to the status line for HTML bodies', async () => {
  const e = await errorFromResponse(new Response('<html>oops</html>', { status: 502, statusText: 'Bad Gateway' }));
  assert.equal(e.status, 502);
  assert.equal(e.message, '502 Bad Gateway');
  const plain = await errorFromResponse(new Response('short text', { status: 400 }));
  assert.equal(plain.message, 'short text');
});

test('204 answers null; a network failure is ApiError with status 0', async () => {
  const t = fetchTransport({ baseUrl: '/', origin: 'http://h', fetch: async () => new Response(null, { status: 204 }) });
  assert.equal(await t.request('kernels/k/tools/x', { method: 'DELETE' }), null);
  const down = fetchTransport({ baseUrl: '/', origin: 'http://h', fetch: async () => { throw new TypeError('Failed to fetch'); } });
  await assert.rejects(down.request('status'), e => e instanceof ApiError && e.status === 0 && /could not be reached/.test(e.message));
});

test('liveUrl is ws(s) under the base URL; ?token= only when asked', () => {
  const t = fetchTransport({ baseUrl: '/user/x/', origin: 'https://hub', token: 'a b', fetch: async () => json({}) });
  assert.equal(t.liveUrl(), 'wss://hub/user/x/cma/api/live');
  const other = fetchTransport({ baseUrl: '/', wsUrl: 'ws://other:9/', origin: 'http://h', token: 'a b', appendToken: true, fetch: async () => json({}) });
  assert.equal(other.liveUrl(), 'ws://other:9/cma/api/live?token=a%20b');
});
