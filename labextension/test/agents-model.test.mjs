// The Agents view's pure logic (src/views/agents-model.ts), on the compiled lib/ output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  agentRow, agentToolNames, checkAgentForm, createAgentBody, errorField, errorsByField, groupToolCatalog,
  patchAgentBody, selectedKeys, selectionProblems, tierOptions, toolKey
} from '../lib/views/agents-model.js';

const STATUS = {
  default_tier: 'kernel',
  tiers: {
    container: { available: false, reason: 'no Docker engine answers: FileNotFoundError; start one' },
    kernel: { available: true, isolation: 'bubblewrap', limits: { sizes: { small: {}, large: {}, medium: {} } } }
  }
};

const CATALOG = {
  notebook: [
    { kernel_id: 'BBBB-2', notebook: 'work/b.ipynb', name: 'score', description: 'Score a model' },
    { kernel_id: 'aaaa-1', notebook: 'a.ipynb', name: 'lookup', description: 'Look a customer up' },
    { kernel_id: 'aaaa-1', notebook: 'a.ipynb', name: 'fetch_rows', description: 'Rows of a table' },
    { kernel_id: 'cccc-3', notebook: null, name: 'lookup', description: 'Another lookup' }
  ],
  server: [{ name: 'clock', description: 'the time', input_schema: { type: 'object' } }]
};

test('tiers: the default first, unavailable ones with their reason, sizes from the status', () => {
  const tiers = tierOptions(STATUS);
  assert.deepEqual(tiers.map(t => t.name), ['kernel', 'container']);
  assert.equal(tiers[0].isDefault, true);
  assert.equal(tiers[0].available, true);
  assert.deepEqual(tiers[0].sizes, ['large', 'medium', 'small']);
  assert.equal(tiers[1].available, false);
  assert.match(tiers[1].reason, /no Docker engine/);
  // a tier that lists no sizes gets the listed ones (both tiers share the setting)
  assert.deepEqual(tiers[1].sizes, ['large', 'medium', 'small']);
  assert.ok(tiers[0].standardTools.includes('python'));
  assert.ok(tiers[1].standardTools.includes('bash'));
});

test('tiers: a tier still being probed is not available, and says so', () => {
  const [t] = tierOptions({ tiers: { container: { available: null, reason: 'probing' } } });
  assert.equal(t.available, false);
  assert.equal(t.reason, 'probing');
  assert.deepEqual(tierOptions({}), []);
});

test('tool names: the toolset as configured, then custom tools', () => {
  const names = agentToolNames([
    { type: 'agent_toolset_20260401', configs: [{ name: 'bash', enabled: false }, { name: 'web_fetch', enabled: false },
      { name: 'web_search', enabled: false }] },
    { type: 'custom', name: 'python' },
    { type: 'custom', name: 'lookup' }
  ]);
  assert.deepEqual(names, ['edit', 'read', 'write', 'glob', 'grep', 'python', 'lookup']);
  assert.deepEqual(agentToolNames([{ type: 'agent_toolset_20260401', default_config: { enabled: false },
    configs: [{ name: 'read', enabled: true }] }]), ['read']);
  assert.deepEqual(agentToolNames(undefined), []);
});

test('agent rows: model as its id, tools counted, notebook tools kept', () => {
  const row = agentRow({ id: 'agent_1', name: 'analyst', tier: 'kernel', size: null, model: { id: 'claude-x' },
    tools: [{ type: 'custom', name: 'python' }], notebook_tools: [{ name: 'lookup', kernel_id: 'aaaa-1', notebook: 'a.ipynb' }] });
  assert.equal(row.model, 'claude-x');
  assert.deepEqual(row.tools, ['python']);
  assert.deepEqual([...selectedKeys(row)], ['aaaa-1/lookup']);
  assert.equal(agentRow({ id: 'agent_2', model: 'm' }).name, 'agent_2');
});

test('catalog: grouped by kernel, labelled by notebook, sorted, with the server tools apart', () => {
  const { groups, server } = groupToolCatalog(CATALOG);
  assert.deepEqual(groups.map(g => g.label), ['a.ipynb', 'kernel cccc-3', 'work/b.ipynb']);
  assert.deepEqual(groups[0].tools.map(t => t.name), ['fetch_rows', 'lookup']);
  assert.equal(groups[0].tools[1].description, 'Look a customer up');
  assert.equal(groups[2].kernel_id, 'bbbb-2'); // kernel ids compared in lower case, as the server does
  assert.equal(groups[2].tools[0].key, toolKey('BBBB-2', 'score'));
  assert.deepEqual(server, [{ name: 'clock', description: 'the time' }]);
  assert.deepEqual(groupToolCatalog(null), { groups: [], server: [] });
});

test('selection problems: two tools of one name, a tier tool name, a tool no longer registered', () => {
  const catalog = groupToolCatalog(CATALOG);
  assert.deepEqual(selectionProblems(['aaaa-1/lookup', 'bbbb-2/score'], catalog, 'kernel'), []);
  const twice = selectionProblems(['aaaa-1/lookup', 'cccc-3/lookup'], catalog, 'kernel');
  assert.equal(twice.length, 1);
  assert.match(twice[0], /2 tools are named lookup/);
  const python = groupToolCatalog({ notebook: [{ kernel_id: 'dd', notebook: 'p.ipynb', name: 'python', description: '' }] });
  assert.match(selectionProblems(['dd/python'], python, 'kernel')[0], /kernel tier gives every agent a tool named python/);
  assert.deepEqual(selectionProblems(['dd/python'], python, 'container'), []);
  assert.match(selectionProblems(['ee/gone'], catalog, 'kernel')[0], /gone is no longer registered/);
});

test('form checks: a name to create, an available tier, a size of that tier', () => {
  const tiers = tierOptions(STATUS);
  const ok = { name: 'analyst', tier: 'kernel', size: 'small', model: '', system: '' };
  assert.deepEqual(checkAgentForm(ok, tiers, true), {});
  assert.ok(checkAgentForm({ ...ok, name: ' ' }, tiers, true).name);
  assert.deepEqual(checkAgentForm({ ...ok, name: '' }, tiers, false), {});
  assert.match(checkAgentForm({ ...ok, tier: 'container' }, tiers, true).tier, /no Docker engine/);
  assert.match(checkAgentForm({ ...ok, size: 'huge' }, tiers, true).size, /large, medium, small/);
  assert.ok(checkAgentForm({ ...ok, tier: 'gpu' }, tiers, true).tier);
});

test('POST agents body: only what was filled in, notebook tools as refs', () => {
  assert.deepEqual(createAgentBody({ name: ' analyst ', tier: '', size: '', model: '', system: '' }, []), { name: 'analyst' });
  assert.deepEqual(
    createAgentBody({ name: 'a', tier: 'kernel', size: 'large', model: 'claude-x', system: 'Be brief.' }, ['bbbb-2/score', 'aaaa-1/lookup']),
    { name: 'a', tier: 'kernel', size: 'large', model: 'claude-x', system: 'Be brief.',
      notebook_tools: [{ kernel_id: 'aaaa-1', name: 'lookup' }, { kernel_id: 'bbbb-2', name: 'score' }] });
});

test('PATCH agents body: the fields that changed, null when none did', () => {
  const agent = agentRow({ id: 'agent_1', name: 'a', tier: 'kernel', size: 'small', model: 'm',
    notebook_tools: [{ name: 'lookup', kernel_id: 'aaaa-1', notebook: 'a.ipynb' }] });
  const same = { name: 'a', tier: 'kernel', size: 'small', model: '', system: '' };
  assert.equal(patchAgentBody(agent, same, ['aaaa-1/lookup']), null);
  assert.deepEqual(patchAgentBody(agent, { ...same, size: 'large' }, ['aaaa-1/lookup']), { size: 'large' });
  assert.deepEqual(patchAgentBody(agent, { ...same, tier: 'container' }, []), { tier: 'container', notebook_tools: [] });
});

test('server errors are placed next to their field', () => {
  assert.equal(errorField('name is required (expected a non-empty string of at most 256 characters)'), 'name');
  assert.equal(errorField('size must be one of [\'large\', \'small\'] on the kernel tier (KernelTier.instance_sizes on this server)'), 'size');
  assert.equal(errorField('tier must be one of [\'container\', \'kernel\'] on this server'), 'tier');
  assert.equal(errorField("kernel 1234 has no tool 'x': run the notebook cell that defines it"), 'notebook_tools');
  assert.equal(errorField("the agent already has a tool named 'python'; give the notebook tool another name"), 'notebook_tools');
  assert.equal(errorField('the container tier has no instance sizes on this server'), 'size');
  assert.equal(errorField('the API is unreachable'), '');
  assert.deepEqual(errorsByField('name is required; system: input should be a valid string'),
    { name: 'name is required', system: 'system: input should be a valid string' });
});
