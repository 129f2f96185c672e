// The notebook widgets' host actions (src/widget/_host.ts), on the compiled lib/ output: no browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { onTraits, text, widgetHost } from '../lib/widget/_host.js';

function fakeApp(commands) {
  const calls = [];
  globalThis.jupyterapp = {
    commands: {
      hasCommand: id => commands.includes(id),
      execute: async (id, args) => {
        calls.push([id, args]);
      }
    }
  };
  return calls;
}

test('with the page app exposed, a widget opens terminals and notebooks in it', async () => {
  const calls = fakeApp(['terminal:open', 'docmanager:open']);
  const asked = [];
  const api = { openTerminal: async id => (asked.push(id), { name: '7', url: 'terminals/7' }) };
  const host = widgetHost(() => api);
  await host.openTerminal('sesn_1');
  await host.openNotebook('sesn_1.ipynb');
  assert.deepEqual(asked, ['sesn_1'], 'the terminal is made through the REST API first');
  assert.deepEqual(calls, [
    ['terminal:open', { name: '7' }],
    ['docmanager:open', { path: 'sesn_1.ipynb' }]
  ]);
  delete globalThis.jupyterapp;
});

test('without it, the widget offers neither (the views fall back to links and downloads)', () => {
  delete globalThis.jupyterapp;
  assert.deepEqual(widgetHost(() => ({})), {});
  fakeApp(['docmanager:open']);
  const host = widgetHost(() => ({}));
  assert.equal(host.openTerminal, undefined);
  assert.equal(typeof host.openNotebook, 'function');
  delete globalThis.jupyterapp;
});

test('traits: strings read safely, listeners removed', () => {
  const handlers = new Map();
  const model = {
    values: { state: 'active', limit: 5 },
    get(name) {
      return this.values[name];
    },
    on(event, cb) {
      handlers.set(event, cb);
    },
    off(event, cb) {
      if (handlers.get(event) === cb) {
        handlers.delete(event);
      }
    }
  };
  assert.equal(text(model, 'state'), 'active');
  assert.equal(text(model, 'limit'), '', 'not a string');
  assert.equal(text(model, 'missing'), '');
  let changes = 0;
  const stop = onTraits(model, ['state', 'tier'], () => changes++);
  handlers.get('change:state')();
  handlers.get('change:tier')();
  assert.equal(changes, 2);
  stop();
  assert.equal(handlers.size, 0);
});
