// What the page does when an agent edits a notebook open in JupyterLab (src/lab/notebook-watch-model.ts), on lib/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  INITIAL_WATCH, KEEP_CAPTION, NOTICE_MAX, RELOAD_CAPTION, UNDO_RELOAD_CAPTION, editAction, reloadedNotice, shortPath, takeNewEdits,
  undoNews, undoneNotice, unsavedNotice, unsavedUndoNotice
} from '../lib/lab/notebook-watch-model.js';

const edit = (id, path, extra = {}) => ({
  id, at: 1_700_000_000 + id, session_id: 'sesn_1', agent_id: 'agent_1', path, checkpoint_id: 'checkpoint',
  summary: { text: `edit ${id}`, operations: [] }, undone_at: null, ...extra
});
const page = (...rows) => ({ data: rows });

test('the first read only records the newest id: no reloads when the page opens', () => {
  const { state, news } = takeNewEdits(INITIAL_WATCH, page(edit(7, 'a.ipynb'), edit(9, 'b.ipynb'), edit(8, 'a.ipynb')));
  assert.deepEqual(state, { newest: 9 });
  assert.deepEqual(news, []);
});

test('a first read of an empty log starts at 0, so the first edit ever is new', () => {
  const first = takeNewEdits(INITIAL_WATCH, page());
  assert.deepEqual(first, { state: { newest: 0 }, news: [] });
  const next = takeNewEdits(first.state, page(edit(1, 'a.ipynb')));
  assert.deepEqual(next.state, { newest: 1 });
  assert.deepEqual(next.news.map(n => [n.path, n.edits.map(e => e.id)]), [['a.ipynb', [1]]]);
  assert.equal(next.news[0].edits[0].summary, 'edit 1');
});

test('only edits newer than the newest seen, by notebook, oldest first; each handled once', () => {
  const answer = page(edit(12, 'a.ipynb'), edit(11, 'b.ipynb'), edit(10, 'a.ipynb'), edit(9, 'c.ipynb'));
  const { state, news } = takeNewEdits({ newest: 9 }, answer);
  assert.deepEqual(state, { newest: 12 });
  assert.deepEqual(news.map(n => [n.path, n.edits.map(e => e.id)]), [['a.ipynb', [10, 12]], ['b.ipynb', [11]]]);
  // the same answer again (a resync, another tool call): nothing new
  assert.deepEqual(takeNewEdits(state, answer), { state: { newest: 12 }, news: [] });
});

test('an edit undone before the page saw it is skipped, but counted as seen', () => {
  const { state, news } = takeNewEdits({ newest: 3 }, page(edit(5, 'a.ipynb', { undone_at: 1_800_000_000 }), edit(4, 'b.ipynb')));
  assert.deepEqual(state, { newest: 5 });
  assert.deepEqual(news.map(n => n.path), ['b.ipynb']);
});

test('the newest seen never goes back (an answer without the newest rows, e.g. after edits were pruned)', () => {
  const { state, news } = takeNewEdits({ newest: 20 }, page(edit(4, 'a.ipynb')));
  assert.deepEqual(state, { newest: 20 });
  assert.deepEqual(news, []);
});

test('answers that are not a page of edits change nothing', () => {
  for (const answer of [null, undefined, {}, { data: null }, 'nope', { data: [{ id: 0, path: 'x.ipynb' }, { path: 'y.ipynb' }] }]) {
    assert.deepEqual(takeNewEdits({ newest: 2 }, answer), { state: { newest: 2 }, news: [] });
  }
  // a bare array is taken as the rows
  assert.deepEqual(takeNewEdits({ newest: 2 }, [edit(3, 'a.ipynb')]).news.map(n => n.path), ['a.ipynb']);
});

test('a clean tab is reloaded, a tab with unsaved changes asks, collaboration and closed notebooks need nothing', () => {
  assert.equal(editAction('clean'), 'reload');
  assert.equal(editAction('unsaved'), 'ask');
  assert.equal(editAction('collaborative'), 'none');
  assert.equal(editAction('not open'), 'none');
});

test('long paths keep the notebook name', () => {
  assert.equal(shortPath('a.ipynb'), 'a.ipynb');
  assert.equal(shortPath('reports/2024/q3/regions/very-long-folder/sales.ipynb', 30), '…/sales.ipynb');
  const long = `${'n'.repeat(60)}.ipynb`;
  assert.equal(shortPath(long, 30).length, 30);
  assert.ok(shortPath(long, 30).endsWith('.ipynb'));
});

test('the notices name the notebook and what changed, within what JupyterLab shows of a notification', () => {
  const one = { path: 'reports/sales.ipynb', edits: [{ id: 1, path: 'reports/sales.ipynb', summary: 'replaced cell 0 (code)' }] };
  assert.equal(reloadedNotice(one), 'Reloaded reports/sales.ipynb: an agent edited it (replaced cell 0 (code)).');
  const two = { ...one, edits: [one.edits[0], { ...one.edits[0], id: 2 }] };
  assert.equal(reloadedNotice(two), 'Reloaded reports/sales.ipynb: an agent edited it 2 times.');
  const ask = unsavedNotice(one);
  assert.match(ask, /^An agent edited reports\/sales\.ipynb\. /);
  assert.match(ask, /unsaved changes/);
  assert.match(ask, /Reload from disk discards them/);
  assert.match(unsavedNotice(two), /edited reports\/sales\.ipynb 2 times\./);
  assert.match(RELOAD_CAPTION, /unsaved changes are discarded/);
  assert.match(KEEP_CAPTION, /overwrite/);

  const deep = `${'folder/'.repeat(20)}${'x'.repeat(80)}.ipynb`;
  const many = { path: deep, edits: Array.from({ length: 120 }, (_, i) => ({ id: i + 1, path: deep, summary: 's'.repeat(200) })) };
  const wordy = { path: deep, edits: [{ id: 1, path: deep, summary: 's'.repeat(200) }] };
  for (const text of [reloadedNotice(many), reloadedNotice(wordy), unsavedNotice(many), unsavedNotice(wordy)]) {
    assert.ok(text.length <= NOTICE_MAX, `${text.length} > ${NOTICE_MAX}: ${text}`);
  }
  assert.ok(!reloadedNotice(wordy).includes('sss'), 'a summary too long for the notice is left out');
});

test('a notebook.undone message names the notebook and the edits undone; anything else is ignored', () => {
  assert.deepEqual(undoNews({ path: 'reports/sales.ipynb', edit_ids: [4, 5], at: 1 }), { path: 'reports/sales.ipynb', editIds: [4, 5] });
  assert.deepEqual(undoNews({ path: 'a.ipynb', edit_ids: [1, 'x', 2.5, null] }), { path: 'a.ipynb', editIds: [1] });
  assert.deepEqual(undoNews({ path: 'a.ipynb' }), { path: 'a.ipynb', editIds: [] });
  for (const data of [null, undefined, 'a.ipynb', {}, { path: '' }, { path: 3, edit_ids: [1] }]) {
    assert.equal(undoNews(data), null);
  }
});

test('the undo notices say the edit was undone, within what JupyterLab shows of a notification', () => {
  assert.equal(undoneNotice({ path: 'reports/sales.ipynb', editIds: [4] }), "Reloaded reports/sales.ipynb: an agent's edit of it was undone.");
  assert.equal(undoneNotice({ path: 'a.ipynb', editIds: [4, 5, 6] }), 'Reloaded a.ipynb: 3 agent edits of it were undone.');
  const ask = unsavedUndoNotice({ path: 'reports/sales.ipynb', editIds: [4] });
  assert.match(ask, /^An agent's edit of reports\/sales\.ipynb was undone\. /);
  assert.match(ask, /Reload from disk discards them/);
  assert.match(UNDO_RELOAD_CAPTION, /undone/);
  assert.match(UNDO_RELOAD_CAPTION, /unsaved changes are discarded/);
  const deep = `${'folder/'.repeat(20)}${'x'.repeat(80)}.ipynb`;
  for (const text of [undoneNotice({ path: deep, editIds: Array.from({ length: 500 }, (_, i) => i) }), unsavedUndoNotice({ path: deep, editIds: [1] })]) {
    assert.ok(text.length <= NOTICE_MAX, `${text.length} > ${NOTICE_MAX}: ${text}`);
  }
});
