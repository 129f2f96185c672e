// The Tools view's logic, the agent form's built-ins and the notebook edits (src/views/tools-model.ts), on lib/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  builtinFamilies, builtinLabels, builtinsBody, choiceValues, editRow, editRows, editSummary, familyFacts,
  familySettings, initialChoices, markUndone, notebookEditProgress, notebookUrl, pageInLab, parseList, runsLabel,
  settingFields, standardTiers
} from '../lib/views/tools-model.js';
import { createAgentBody, errorField, errorsByField, agentRow, patchAgentBody, sameBuiltins } from '../lib/views/agents-model.js';

const NOTEBOOK_SCHEMA = {
  type: 'object',
  properties: {
    mode: { type: 'string', enum: ['read', 'edit'], default: 'read', description: 'read or edit' },
    paths: { type: 'array', items: { type: 'string' }, default: ['**'] }
  },
  additionalProperties: false
};

const CATALOG = {
  standard: [
    { tier: 'kernel', tools: [{ name: 'python', runs: 'sandbox', available: true, reason: null },
      { name: 'read', runs: 'sandbox', available: true, reason: null }] },
    { tier: 'container', tools: [{ name: 'bash', runs: 'sandbox', available: true },
      { name: 'web_search', runs: 'anthropic', available: false, reason: 'off on this server' }] }
  ],
  builtin: [
    { family: 'web_fetch', title: 'Web fetch', summary: 'Fetch a page as markdown.', requires: 'the egress engine',
      available: true, reason: null, timeout: 60,
      settings_schema: { type: 'object', properties: {}, additionalProperties: false },
      tools: [{ name: 'web_fetch', description: 'Fetch a URL. Returns markdown.', input_schema: {}, runs: 'server' }] },
    { family: 'browser', title: 'Browser', summary: 'A headless browser.', requires: 'Chromium',
      available: false, reason: 'no Chromium: install it (apt-get install chromium)', timeout: 120,
      tools: [{ name: 'browse', runs: 'server' }, { name: 'screenshot', runs: 'server' }] },
    { family: 'notebook', title: 'Notebooks', available: true, settings_schema: NOTEBOOK_SCHEMA,
      tools: [{ name: 'notebook_read' }, { name: 'notebook_edit' }] },
    { title: 'no key: skipped' }
  ],
  notebook: [],
  server: []
};

test('families: in the server order, availability and reason, tools, settings from the schema', () => {
  const families = builtinFamilies(CATALOG);
  assert.deepEqual(families.map(f => f.key), ['web_fetch', 'browser', 'notebook']);
  const [web, browser, notebook] = families;
  assert.equal(web.available, true);
  assert.equal(web.reason, null);
  assert.deepEqual(web.settings, []);
  assert.equal(browser.available, false);
  assert.match(browser.reason, /no Chromium: install it/);
  assert.deepEqual(browser.tools.map(t => t.name), ['browse', 'screenshot']);
  assert.equal(browser.tools[0].runs, 'server');
  assert.equal(notebook.title, 'Notebooks');
  assert.deepEqual(notebook.settings.map(s => [s.name, s.kind]), [['mode', 'enum'], ['paths', 'list']]);
  assert.deepEqual(notebook.settings[0].options, ['read', 'edit']);
  assert.equal(familyFacts(browser), 'runs in the Jupyter server · 120 s per call');
  assert.equal(familyFacts(notebook), 'runs in the Jupyter server');
  // an older server's catalog has no built-ins
  assert.deepEqual(builtinFamilies({ notebook: [], server: [] }), []);
  // an unavailable family without a reason still says something
  assert.ok(builtinFamilies({ builtin: [{ family: 'email', available: false, tools: [] }] })[0].reason);
});

test('settings: the notebook family without a schema gets mode and paths; other kinds map to fields', () => {
  assert.deepEqual(settingFields(undefined, 'notebook').map(f => f.name), ['mode', 'paths']);
  assert.deepEqual(settingFields({ properties: {} }, 'web_fetch'), []);
  const fields = settingFields({
    properties: { on: { type: 'boolean' }, n: { type: ['integer', 'null'] }, s: { type: 'string' }, o: { type: 'object' } },
    required: ['s']
  });
  assert.deepEqual(fields.map(f => [f.name, f.kind, f.required]), [['on', 'boolean', false], ['n', 'number', false], ['s', 'string', true]]);
});

test('standard tools by tier: the ones given, those turned off, an unavailable tier\'s reason once', () => {
  const tiers = standardTiers({ standard: [
    { tier: 'kernel', available: true, reason: null, tools: [
      { name: 'bash', kind: 'toolset', runs: 'sandbox', enabled: false, available: false, reason: 'the kernel tier gives agents no bash tool' },
      { name: 'read', kind: 'toolset', runs: 'sandbox', enabled: true, available: true, reason: null },
      { name: 'python', kind: 'tier', runs: 'sandbox', enabled: true, available: true, reason: null }] },
    { tier: 'container', available: false, reason: 'no Docker engine', tools: [
      { name: 'bash', runs: 'sandbox', enabled: true, available: false, reason: 'no Docker engine' },
      { name: 'web_search', runs: 'anthropic', enabled: true, available: false, reason: 'no Docker engine', note: 'runs at Anthropic' }] }
  ] });
  assert.deepEqual(tiers.map(t => t.tier), ['kernel', 'container']);
  assert.deepEqual(tiers[0].tools.map(t => t.name), ['read', 'python']);
  assert.deepEqual(tiers[0].off, ['bash']);
  assert.equal(tiers[0].available, true);
  assert.equal(tiers[1].available, false);
  assert.equal(tiers[1].reason, 'no Docker engine');
  const search = tiers[1].tools[1];
  assert.equal(search.available, false);
  assert.equal(search.reason, null, 'the tier says why, once');
  assert.equal(search.runs, 'anthropic');
  assert.equal(search.note, 'runs at Anthropic');
  // a tool of an available tier that is not available says why itself
  const [own] = standardTiers({ standard: [{ tier: 'kernel', available: true, tools: [{ name: 'x', available: false, reason: 'why' }] }] });
  assert.equal(own.tools[0].reason, 'why');
  const fallback = standardTiers({ notebook: [] });
  assert.ok(fallback.find(t => t.tier === 'kernel').tools.some(t => t.name === 'python'));
  assert.equal(runsLabel('server'), 'in the Jupyter server');
  assert.equal(runsLabel('sandbox'), "in the session's sandbox");
  assert.equal(runsLabel('kernel'), "in its notebook's kernel");
});

test('the form: an agent\'s built-ins ticked with their settings, the rest unticked with defaults', () => {
  const families = builtinFamilies(CATALOG);
  const fresh = initialChoices(families, null);
  assert.deepEqual(Object.keys(fresh), ['web_fetch', 'browser', 'notebook']);
  assert.ok(Object.values(fresh).every(c => !c.enabled));
  assert.deepEqual(fresh.notebook.values, { mode: 'read', paths: '**' });
  const had = initialChoices(families, { notebook: { mode: 'edit', paths: ['reports/**', 'a.ipynb'] } });
  assert.equal(had.notebook.enabled, true);
  assert.deepEqual(had.notebook.values, { mode: 'edit', paths: 'reports/**, a.ipynb' });
  assert.deepEqual(choiceValues(families[2], { mode: 'edit' }), { mode: 'edit', paths: '**' });
  assert.deepEqual(parseList(' a/**,\n b.ipynb ,, '), ['a/**', 'b.ipynb']);
});

test('the form → builtins: web_fetch with no settings, notebook with mode and paths', () => {
  const families = builtinFamilies(CATALOG);
  const choices = initialChoices(families, null);
  choices.web_fetch.enabled = true;
  choices.notebook.enabled = true;
  choices.notebook.values = { mode: 'edit', paths: '**' };
  const { builtins, problems } = builtinsBody(choices, families);
  assert.deepEqual(problems, []);
  assert.deepEqual(builtins, { web_fetch: {}, notebook: { mode: 'edit', paths: ['**'] } });
});

test('the form → builtins: an unavailable family, empty paths and a bad mode are problems', () => {
  const families = builtinFamilies(CATALOG);
  const choices = initialChoices(families, null);
  choices.browser.enabled = true;
  choices.notebook.enabled = true;
  choices.notebook.values = { mode: 'write', paths: ' , ' };
  const { problems } = builtinsBody(choices, families);
  assert.equal(problems.length, 3);
  assert.match(problems[0], /^browser: no Chromium/);
  assert.match(problems.join('\n'), /notebook: mode is one of read, edit/);
  assert.match(problems.join('\n'), /notebook: give at least one path glob/);
  // an agent that has the browser already may keep it while it is unavailable (the server kept it)
  choices.notebook.enabled = false;
  assert.deepEqual(builtinsBody(choices, families, ['browser']).problems, []);
  // a family the catalog no longer lists
  assert.match(builtinsBody({ email: { enabled: true, values: {} } }, families).problems[0], /no such built-in/);
  // numbers
  const n = { key: 'x', settings: settingFields({ properties: { n: { type: 'number' } } }) };
  assert.deepEqual(familySettings(n, { n: '2.5' }), { settings: { n: 2.5 }, problems: [] });
  assert.match(familySettings(n, { n: 'many' }).problems[0], /must be a number/);
});

test('agent bodies: builtins sent on create when any, on patch when they changed', () => {
  const values = { name: ' reader ', tier: 'kernel', size: '', model: '', system: '' };
  assert.deepEqual(createAgentBody(values, [], { web_fetch: {} }), { name: 'reader', tier: 'kernel', builtins: { web_fetch: {} } });
  assert.deepEqual(createAgentBody(values, [], {}), { name: 'reader', tier: 'kernel' });
  assert.deepEqual(createAgentBody(values, []), { name: 'reader', tier: 'kernel' });
  const agent = agentRow({ id: 'agent_1', name: 'reader', tier: 'kernel', builtins: { notebook: { paths: ['**'], mode: 'read' } } });
  assert.deepEqual(agent.builtins, { notebook: { paths: ['**'], mode: 'read' } });
  assert.deepEqual(agentRow({ id: 'a' }).builtins, {});
  const same = { tier: 'kernel', size: '', name: 'reader', model: '', system: '' };
  assert.equal(patchAgentBody(agent, same, [], { notebook: { mode: 'read', paths: ['**'] } }), null, 'key order does not matter');
  assert.equal(patchAgentBody(agent, same, [], null), null, 'null leaves them');
  assert.deepEqual(patchAgentBody(agent, same, [], { notebook: { mode: 'edit', paths: ['**'] } }), { builtins: { notebook: { mode: 'edit', paths: ['**'] } } });
  assert.deepEqual(patchAgentBody(agent, same, [], {}), { builtins: {} }, 'unticking every family sends none');
  assert.ok(sameBuiltins({}, undefined));
  assert.ok(!sameBuiltins({ web_fetch: {} }, {}));
});

test('server errors about built-ins go to the built-ins field', () => {
  const families = ['web_fetch', 'browser', 'notebook'];
  assert.equal(errorField('builtins: unknown family email (known: web_fetch, notebook)'), 'builtins');
  assert.equal(errorField('browser: no Chromium on this server', families), 'builtins');
  assert.equal(errorField('the browser built-in is not available here'), 'builtins');
  assert.equal(errorField('browser: no Chromium on this server'), '');
  assert.deepEqual(errorsByField('name: taken; notebook: mode is read or edit', families), {
    name: 'name: taken',
    builtins: 'notebook: mode is read or edit'
  });
});

test('an agent\'s built-ins as labels', () => {
  assert.deepEqual(builtinLabels({ web_fetch: {}, notebook: { mode: 'edit', paths: ['reports/**', 'a.ipynb'] } }),
    ['notebook (edit: reports/** a.ipynb)', 'web_fetch']);
  assert.deepEqual(builtinLabels({ call_service: { services: ['crm'] }, email: { verbose: true, n: 3 } }),
    ['call_service (services crm)', 'email (verbose; n 3)']);
  assert.deepEqual(builtinLabels({ notebook: { mode: 'read' } }), ['notebook (read)']);
  assert.deepEqual(builtinLabels(null), []);
  assert.deepEqual(builtinLabels([]), []);
});

test('notebook edits: rows newest first, summaries in words', () => {
  const rows = editRows({ data: [
    { id: 3, at: 30, session_id: 'sesn_1', agent_id: 'agent_1', path: 'a.ipynb', checkpoint_id: 'c3',
      summary: { operations: [{ op: 'replace', index: 2, cell_type: 'code' }] }, undone_at: null },
    { id: 5, at: 50, session_id: 'sesn_1', agent_id: null, path: 'b.ipynb', checkpoint_id: 'c5', summary: 'added a title', undone_at: 55 },
    { id: 0, path: 'no id: dropped' }
  ] });
  assert.deepEqual(rows.map(r => r.id), [5, 3]);
  assert.equal(rows[0].undoneAt, 55);
  assert.equal(rows[0].summary, 'added a title');
  assert.equal(rows[1].summary, 'replaced code cell 2');
  assert.equal(rows[1].sessionId, 'sesn_1');
  assert.equal(editRow({ id: 1, summary: { op: 'delete', index: 0 } }).summary, 'deleted cell 0');
  assert.equal(editSummary([{ op: 'insert', index: 1, cell_type: 'markdown' }, { op: 'delete' }]), 'inserted markdown cell 1, deleted a cell');
  assert.equal(editSummary({ ops: [1, 2, 3, 4, 5, 6].map(i => ({ op: 'insert', index: i })) }),
    'inserted cell 1, inserted cell 2, inserted cell 3, inserted cell 4 and 2 more');
  assert.equal(editSummary({ cells: 2, kind: 'x' }), 'cells: 2, kind: x');
  assert.equal(editSummary(null), '');
  assert.deepEqual(editRows({}), []);
});

test('undo: the edit and the later edits of that notebook are undone, others stay', () => {
  const rows = editRows({ data: [
    { id: 4, path: 'a.ipynb', undone_at: null }, { id: 3, path: 'b.ipynb', undone_at: null },
    { id: 2, path: 'a.ipynb', undone_at: null }, { id: 1, path: 'a.ipynb', undone_at: null }
  ] });
  const after = markUndone(rows, 2, 99);
  assert.deepEqual(after.map(r => [r.id, r.undoneAt]), [[4, 99], [3, null], [2, 99], [1, null]]);
  assert.deepEqual(markUndone(rows, 42, 99), rows);
});

test('a session\'s notebook_edit calls and their results count as progress', () => {
  const events = [
    { type: 'agent.custom_tool_use', id: 'u1', name: 'notebook_edit' },
    { type: 'agent.custom_tool_use', id: 'u2', name: 'python' },
    { type: 'user.custom_tool_result', custom_tool_use_id: 'u2' }
  ];
  assert.equal(notebookEditProgress(events), 1);
  assert.equal(notebookEditProgress([...events, { type: 'user.custom_tool_result', custom_tool_use_id: 'u1' }]), 2);
  assert.equal(notebookEditProgress([]), 0);
});

test('links to notebooks: JupyterLab or Notebook 7, under the base URL', () => {
  assert.equal(notebookUrl('/user/ada/', 'work/my nb.ipynb', true), '/user/ada/lab/tree/work/my%20nb.ipynb');
  assert.equal(notebookUrl('/base', '/a.ipynb', false), '/base/notebooks/a.ipynb');
  assert.equal(pageInLab('/user/ada/lab/tree/x.ipynb'), true);
  assert.equal(pageInLab('/notebooks/x.ipynb'), false);
});
