"""The `notebook` built-in family against a real Jupyter server: its contents manager, its root, its REST API.

The family is given the server's own parts (its contents manager and root, the extension's store), so an edit
goes through the same contents manager JupyterLab uses and its row lands where `GET cma/api/notebook-edits`
reads it; undo goes through the REST route. Nothing of ours is mocked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado.httpclient import HTTPClientError

from jupyter_cma.emulator.scenarios import Values, build_input
from jupyter_cma.store import Store
from jupyter_cma.tools.builtin.base import CallContext, ServerParts, ToolError
from jupyter_cma.tools.builtin.notebooks import EditUndoError, NotebookFileTools, path_matches, undo_edit
from tests.test_dispatch import cma_emulator, cma_mode, harness, jp_server_config, results, script  # noqa: F401

SESSION = "sesn_notebooks"
AGENT = "agent_notebooks"


def write_notebook(path: Path, *cells: Any, minor: int = 5) -> dict[str, Any]:
    """A notebook file of these cells (nbformat 4.`minor`); its JSON as written."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = list(cells)
    nb.nbformat_minor = minor
    if minor < 5:
        for cell in nb.cells:
            cell.pop("id", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb, version=4), encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


def sample(path: Path, minor: int = 5) -> dict[str, Any]:
    code = nbformat.v4.new_code_cell("print('hello')", execution_count=1,
                                     outputs=[nbformat.v4.new_output("stream", name="stdout", text="hello\n")])
    return write_notebook(path, nbformat.v4.new_markdown_cell("# Sales"), code, minor=minor)


async def edits(h: Any, **params: str) -> list[dict[str, Any]]:
    """`GET cma/api/notebook-edits` with these query parameters."""
    response = await h.fetch("cma", "api", "notebook-edits", params=params)
    return json.loads(response.body)["data"]


async def undo(h: Any, edit_id: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """`POST cma/api/notebook-edits/{id}/undo`."""
    response = await h.fetch("cma", "api", "notebook-edits", str(edit_id), "undo", method="POST",
                             body=json.dumps(body) if body is not None else "")
    return json.loads(response.body)


def on_disk(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


async def family_for(store: Store, contents_manager: Any, root: Path, data_dir: Path) -> NotebookFileTools:
    """The family started with the server's parts it uses (the store, the contents manager and the root)."""
    family = NotebookFileTools()
    await family.start(ServerParts(store=store, client=lambda: None, environment_id=lambda: "",  # type: ignore[arg-type]
                                   contents_manager=contents_manager, root_dir=str(root), policies=None,  # type: ignore[arg-type]
                                   secrets=None, data_dir=data_dir, egress=None))  # type: ignore[arg-type]
    return family


def context(family: NotebookFileTools, **settings: Any) -> CallContext:
    return CallContext(session_id=SESSION, agent_id=AGENT, settings=family.check_settings(settings), egress=None)  # type: ignore[arg-type]


@pytest.fixture
def served(harness, jp_root_dir, tmp_path):
    """Starts the server, then gives it with the notebook family wired to its contents manager, root and store."""

    async def start() -> tuple[Any, NotebookFileTools]:
        await harness.start()
        return harness, await family_for(harness.ext.store, harness.serverapp.contents_manager, jp_root_dir, tmp_path / "cma")

    return start


async def test_an_edit_is_in_the_file_and_undone_by_its_checkpoint_through_rest(served, jp_root_dir):
    h, family = await served()
    target = jp_root_dir / "reports" / "sales.ipynb"
    original = sample(target)
    ctx = context(family, mode="edit")

    said = await family.call(ctx, "notebook_edit", {"path": "reports/sales.ipynb", "operations": [
        {"op": "insert", "index": 2, "cell_type": "markdown", "source": "## Findings\nSales rose."},
        {"op": "replace", "index": 1, "source": "print('hello, world')"},
    ]})
    assert "inserted cell 2 (markdown); replaced cell 1 (code)" in str(said)

    edited = on_disk(target)
    assert [c["cell_type"] for c in edited["cells"]] == ["markdown", "code", "markdown"]
    assert "".join(edited["cells"][2]["source"]) == "## Findings\nSales rose."
    assert edited["cells"][2]["id"] and len({c["id"] for c in edited["cells"]}) == 3
    assert edited["cells"][1]["id"] == original["cells"][1]["id"], "a replaced cell keeps its id"
    assert edited["cells"][1]["outputs"] == [], "the old source's outputs go with it"
    # The contents manager took its checkpoint before the save: it holds the notebook as it was.
    checkpoint = jp_root_dir / "reports" / ".ipynb_checkpoints" / "sales-checkpoint.ipynb"
    assert on_disk(checkpoint)["cells"] == original["cells"]

    listed = (await edits(h, path="reports/sales.ipynb"))
    assert len(listed) == 1
    edit = listed[0]
    assert edit["session_id"] == SESSION and edit["agent_id"] == AGENT and edit["path"] == "reports/sales.ipynb"
    assert edit["checkpoint_id"] == "checkpoint" and edit["undone_at"] is None
    assert edit["summary"]["cells_before"] == 2 and edit["summary"]["cells_after"] == 3
    assert [op["op"] for op in edit["summary"]["operations"]] == ["insert", "replace"]
    assert await edits(h, session_id=SESSION) == listed
    assert await edits(h, session_id="sesn_other") == []

    undone = await undo(h, edit["id"])
    assert undone["restored_from"] == "checkpoint" and undone["undone"] == [edit["id"]]
    assert undone["edit"]["undone_at"] is not None
    assert on_disk(target)["cells"] == original["cells"]

    with pytest.raises(HTTPClientError) as again:
        await undo(h, edit["id"])
    assert again.value.code == 409 and "already undone" in again.value.response.body.decode()
    with pytest.raises(HTTPClientError) as unknown:
        await undo(h, 999999)
    assert unknown.value.code == 404
    with pytest.raises(HTTPClientError) as bad:
        await undo(h, edit["id"], {"force": True})
    assert bad.value.code == 400
    with pytest.raises(HTTPClientError) as bad_query:
        await edits(h, limit="0")
    assert bad_query.value.code == 400


async def test_undoing_an_older_edit_restores_it_and_marks_the_later_ones_undone(served, jp_root_dir):
    h, family = await served()
    target = jp_root_dir / "analysis.ipynb"
    original = sample(target, minor=4)  # an older notebook: the edit moves it to 4.5, with ids
    ctx = context(family, mode="edit")
    path = "analysis.ipynb"

    await family.call(ctx, "notebook_edit", {"path": path, "operations": [{"op": "delete", "index": 0}]})
    after_first = on_disk(target)
    assert after_first["nbformat_minor"] == 5 and all(c.get("id") for c in after_first["cells"])
    await family.call(ctx, "notebook_edit", {"path": path, "operations": [{"op": "insert", "index": 1, "source": "x = 1"}]})
    await family.call(ctx, "notebook_edit", {"path": path, "operations": [{"op": "replace", "index": 1, "cell_type": "markdown"}]})
    first, second, third = sorted(e["id"] for e in await edits(h))

    # Undo the last one: its checkpoint is still the one taken before it.
    assert (await undo(h, third))["restored_from"] == "checkpoint"
    assert [c["cell_type"] for c in on_disk(target)["cells"]] == ["code", "code"]
    # Undo the first: one checkpoint per file cannot hold it any more; the copy kept at edit time does.
    undone = await undo(h, first)
    assert undone["restored_from"] == "copy" and undone["undone"] == [first, second]
    assert on_disk(target)["cells"] == original["cells"] and on_disk(target)["nbformat_minor"] == 4
    rows = {e["id"]: e for e in await edits(h, path=path)}
    assert all(rows[i]["undone_at"] is not None for i in (first, second, third))


async def test_a_checkpoint_replaced_since_the_edit_is_not_restored(served, jp_root_dir):
    """JupyterLab's save makes a new checkpoint of the file; undo then restores the copy kept at edit time."""
    h, family = await served()
    target = jp_root_dir / "notes.ipynb"
    original = sample(target)
    await family.call(context(family, mode="edit"), "notebook_edit",
                      {"path": "notes.ipynb", "operations": [{"op": "insert", "index": 0, "source": "import os"}]})
    cm = h.serverapp.contents_manager
    model = await cm.get("notes.ipynb", content=True, type="notebook")
    model["content"].cells.append(nbformat.v4.new_markdown_cell("the user's own cell"))
    await cm.save({"type": "notebook", "content": model["content"]}, "notes.ipynb")
    await cm.create_checkpoint("notes.ipynb")  # what JupyterLab's File > Save does after saving
    (edit,) = await edits(h)
    undone = await undo(h, edit["id"])
    assert undone["restored_from"] == "copy"
    assert on_disk(target)["cells"] == original["cells"]


async def test_invalid_operations_write_nothing(served, jp_root_dir):
    h, family = await served()
    target = jp_root_dir / "keep.ipynb"
    sample(target)
    before = target.read_bytes()
    ctx = context(family, mode="edit")
    cases = [
        ([{"op": "insert", "index": 0, "source": "ok"}, {"op": "delete", "index": 5}], "the notebook has 3 cells then"),
        ([{"op": "move", "index": 0}], "op must be one of insert, replace, delete"),
        ([{"op": "replace", "index": 0}], "replace needs a source"),
        ([{"op": "insert", "index": 0, "cell_type": "raw", "source": "x"}], "cell_type must be 'code' or 'markdown'"),
        ([{"op": "delete", "index": -1}], "index must be a cell index"),
        ([], "operations must be a non-empty list"),
    ]
    for operations, message in cases:
        with pytest.raises(ToolError, match=message):
            await family.call(ctx, "notebook_edit", {"path": "keep.ipynb", "operations": operations})
    assert target.read_bytes() == before
    assert not (jp_root_dir / ".ipynb_checkpoints").exists(), "no checkpoint for an edit that was refused"
    assert await edits(h) == []


async def test_reading_outside_the_root_is_refused(served, jp_root_dir, tmp_path):
    _, family = await served()
    outside = tmp_path / "outside"
    sample(outside / "secret.ipynb")
    sample(jp_root_dir / ".hidden" / "n.ipynb")
    sample(jp_root_dir / "fine.ipynb")
    os.symlink(outside / "secret.ipynb", jp_root_dir / "link.ipynb")
    os.symlink(outside, jp_root_dir / "elsewhere")
    ctx = context(family)
    refusals = {
        "../outside/secret.ipynb": "leaves its folder with '..'",
        "reports/../../outside/secret.ipynb": "leaves its folder with '..'",
        str(outside / "secret.ipynb"): "is absolute",
        "~/secret.ipynb": "is absolute",
        "link.ipynb": "outside the Jupyter server's root",
        "elsewhere/secret.ipynb": "outside the Jupyter server's root",
        ".hidden/n.ipynb": "hidden",
        "fine.txt": "not a notebook",
        "": "path is required",
    }
    for path, message in refusals.items():
        with pytest.raises(ToolError, match=message) as refused:
            await family.call(ctx, "notebook_read", {"path": path})
        assert str(outside) not in str(refused.value) or path.startswith("/"), "a link's target is never told"
    text = await family.call(ctx, "notebook_read", {"path": "./fine.ipynb"})
    assert "Notebook fine.ipynb: 2 cells" in str(text)


async def test_a_path_outside_the_agents_paths_is_refused(served, jp_root_dir):
    _, family = await served()
    sample(jp_root_dir / "reports" / "q1.ipynb")
    sample(jp_root_dir / "private.ipynb")
    os.symlink(jp_root_dir / "private.ipynb", jp_root_dir / "reports" / "alias.ipynb")
    ctx = context(family, mode="edit", paths=["reports/**"])
    assert "## cell 1 · code · [1]" in str(await family.call(ctx, "notebook_read", {"path": "reports/q1.ipynb"}))
    with pytest.raises(ToolError, match=r"not among the notebooks this agent may use \(reports/\*\*\)"):
        await family.call(ctx, "notebook_read", {"path": "private.ipynb"})
    with pytest.raises(ToolError, match="not among the notebooks"):
        await family.call(ctx, "notebook_edit", {"path": "private.ipynb", "operations": [{"op": "delete", "index": 0}]})
    with pytest.raises(ToolError, match="is a link to private.ipynb, which is not among"):
        await family.call(ctx, "notebook_read", {"path": "reports/alias.ipynb"})


def test_globs():
    assert path_matches("a.ipynb", ["**"]) and path_matches("x/y/a.ipynb", ["**"])
    assert path_matches("reports/a.ipynb", ["reports/**"]) and path_matches("reports/2026/a.ipynb", ["reports/**"])
    assert not path_matches("reports.ipynb", ["reports/**"]) and not path_matches("other/a.ipynb", ["reports/**"])
    assert path_matches("a.ipynb", ["*.ipynb"]) and not path_matches("x/a.ipynb", ["*.ipynb"])
    assert path_matches("a.ipynb", ["**/a.ipynb"]) and path_matches("x/y/a.ipynb", ["**/a.ipynb"])
    assert path_matches("q1.ipynb", ["q?.ipynb"]) and not path_matches("q10.ipynb", ["q?.ipynb"])
    assert not path_matches("a+b.ipynb", ["a.b.ipynb"]), "only *, ? and ** are special"


async def test_read_only_mode_offers_no_notebook_edit(served, jp_root_dir):
    _, family = await served()
    sample(jp_root_dir / "n.ipynb")
    assert [t.name for t in family.tools(family.check_settings({}))] == ["notebook_read"]
    assert [t.name for t in family.tools(family.check_settings({"mode": "edit"}))] == ["notebook_read", "notebook_edit"]
    assert family.check_settings({}) == {"mode": "read", "paths": ["**"]}
    assert [t.name for t in family.all_tools()] == ["notebook_read", "notebook_edit"]
    with pytest.raises(ToolError, match="may only read notebooks"):
        await family.call(context(family), "notebook_edit", {"path": "n.ipynb", "operations": [{"op": "delete", "index": 0}]})
    for bad, message in [({"mode": "write"}, "'read' or 'edit'"), ({"paths": []}, "list of 1 to"),
                         ({"paths": ["../x/**"]}, "must not contain '..'"), ({"paths": ["/abs/**"]}, "relative"),
                         ({"paths": [".git/**"]}, "hidden"), ({"extra": 1}, "takes 'mode' and 'paths'")]:
        with pytest.raises(ValueError, match=message):
            family.check_settings(bad)
    assert family.unavailable() is None
    assert set(family.settings_schema["properties"]) == {"mode", "paths"}
    for spec in family.tools({"mode": "edit"}):  # the API refuses additionalProperties on a custom tool
        assert "additionalProperties" not in json.dumps(spec.input_schema)


async def test_read_caps_outputs_and_names_what_it_leaves_out(served, jp_root_dir):
    _, family = await served()
    family.max_cell_output_chars = 100
    family.max_output_chars = 121  # the figure's 21 characters, then the loud cell's 100
    family.max_read_chars = 600
    loud = nbformat.v4.new_code_cell("print('x' * 1000)", outputs=[nbformat.v4.new_output("stream", text="x" * 1000)])
    figure = nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480>"})])
    error = nbformat.v4.new_code_cell("1/0", outputs=[nbformat.v4.new_output(
        "error", ename="ZeroDivisionError", evalue="division by zero", traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"])])
    fence = nbformat.v4.new_markdown_cell("```python\ncode\n```")
    many = [nbformat.v4.new_markdown_cell(f"note {i} " + "y" * 60) for i in range(10)]
    write_notebook(jp_root_dir / "big.ipynb", figure, loud, error, fence, *many)
    text = str(await family.call(context(family), "notebook_read", {"path": "big.ipynb"}))
    assert "x" * 100 + "\n[… 900 more characters]" in text
    assert "<Figure size 640x480>" in text and "image/png not included" in text and "iVBOR" not in text
    assert "[not included: this read's output limit (121 characters) is reached]" in text
    assert "````markdown\n```python\ncode\n```\n````" in text, "a source with a fence gets a longer one"
    assert "notebook_read again with first_cell=" in text
    first = int(text.rsplit("first_cell=", 1)[1].split("]")[0])
    rest = str(await family.call(context(family), "notebook_read", {"path": "big.ipynb", "first_cell": first}))
    assert f"## cell {first} · markdown" in rest and "## cell 0 " not in rest
    with pytest.raises(ToolError, match="past the last cell"):
        await family.call(context(family), "notebook_read", {"path": "big.ipynb", "first_cell": 99})


async def test_a_sync_contents_manager_serves_the_same_tools(tmp_path):
    """Jupyter servers configured with the synchronous FileContentsManager: every call is awaited the same way, on
    the server's thread (the contents manager's notebook-trust database, opened there, refuses other threads)."""
    root = tmp_path / "root"
    original = sample(root / "n.ipynb")
    store = Store(tmp_path / "cma" / "cma.sqlite3")
    cm = FileContentsManager(root_dir=str(root))
    cm.get("n.ipynb")  # JupyterLab opened it first, on the server's thread
    family = await family_for(store, cm, root, tmp_path / "cma")
    assert "## cell 1 · code · [1]" in str(await family.call(context(family), "notebook_read", {"path": "n.ipynb"}))
    await family.call(context(family, mode="edit"), "notebook_edit",
                      {"path": "n.ipynb", "operations": [{"op": "insert", "index": 0, "source": "import math"}]})
    assert "".join(on_disk(root / "n.ipynb")["cells"][0]["source"]) == "import math"
    (edit,) = store.notebook_edits()
    assert (await undo_edit(store, family.parts.contents_manager, edit["id"]))["restored_from"] == "checkpoint"
    assert on_disk(root / "n.ipynb")["cells"] == original["cells"]


class SwappingContents(AsyncLargeFileManager):
    """The server's default contents manager, while another process (a kernel, say) replaces a notebook with a link
    at the worst moment: at the start of the contents manager's `during` call of that path, once."""

    swap: tuple[str, str, Path] | None = None  # (during, API path, the link's target)

    def _swap_now(self, during: str, path: str) -> None:
        if self.swap is not None and self.swap[:2] == (during, path):
            link = Path(self.root_dir) / path
            link.unlink()
            link.symlink_to(self.swap[2])
            self.swap = None

    async def get(self, path, content=True, type=None, format=None, require_hash=False):  # type: ignore[no-untyped-def]
        self._swap_now("get", path)
        return await super().get(path, content=content, type=type, format=format, require_hash=require_hash)

    async def create_checkpoint(self, path):  # type: ignore[no-untyped-def]
        self._swap_now("create_checkpoint", path)
        return await super().create_checkpoint(path)


async def swapping(tmp_path: Path) -> tuple[NotebookFileTools, SwappingContents, Path, Path]:
    """A root with reports/q.ipynb, a notebook outside it, the family on a SwappingContents; (family, cm, root, outside)."""
    root = tmp_path / "root"
    sample(root / "reports" / "q.ipynb")
    outside = tmp_path / "outside" / "secret.ipynb"
    write_notebook(outside, nbformat.v4.new_markdown_cell("the secret"))
    cm = SwappingContents(root_dir=str(root))
    family = await family_for(Store(tmp_path / "cma" / "cma.sqlite3"), cm, root, tmp_path / "cma")
    return family, cm, root, outside


async def test_a_link_swapped_in_during_a_read_is_refused(tmp_path):
    family, cm, root, outside = await swapping(tmp_path)
    cm.swap = ("get", "reports/q.ipynb", outside)
    with pytest.raises(ToolError, match="is a link to a place outside the Jupyter server's root; it cannot be used; "
                                        "what was read there is not used") as refused:
        await family.call(context(family), "notebook_read", {"path": "reports/q.ipynb"})
    assert str(outside) not in str(refused.value)
    # A link to another notebook the agent may read: refused too, the call read something else than it checked.
    (root / "reports" / "q.ipynb").unlink()
    sample(root / "reports" / "q.ipynb")
    write_notebook(root / "reports" / "other.ipynb", nbformat.v4.new_markdown_cell("another notebook"))
    cm.swap = ("get", "reports/q.ipynb", root / "reports" / "other.ipynb")
    with pytest.raises(ToolError, match="reports/q.ipynb was moved or replaced by a link while this call used it; "
                                        "what was read there is not used; call again"):
        await family.call(context(family), "notebook_read", {"path": "reports/q.ipynb"})
    # Called again, the path is checked afresh: it is a link to a notebook within the agent's paths.
    assert "another notebook" in str(await family.call(context(family), "notebook_read", {"path": "reports/q.ipynb"}))


async def test_a_link_swapped_in_before_an_edits_save_is_refused_and_nothing_is_written(tmp_path):
    family, cm, root, outside = await swapping(tmp_path)
    store = family.parts.store
    secret = outside.read_bytes()
    other = root / "reports" / "other.ipynb"
    write_notebook(other, nbformat.v4.new_markdown_cell("another notebook"))
    another = other.read_bytes()
    edit = {"path": "reports/q.ipynb", "operations": [{"op": "insert", "index": 0, "source": "import os"}]}
    for to, message in [(outside, "is a link to a place outside the Jupyter server's root; it cannot be used; "
                                  "nothing was changed"),
                        (other, "was moved or replaced by a link while this call used it; nothing was changed")]:
        (root / "reports" / "q.ipynb").unlink(missing_ok=True)
        sample(root / "reports" / "q.ipynb")
        cm.swap = ("create_checkpoint", "reports/q.ipynb", to)
        with pytest.raises(ToolError, match=message):
            await family.call(context(family, mode="edit"), "notebook_edit", edit)
    assert outside.read_bytes() == secret and other.read_bytes() == another, "the save never went through the link"
    assert store.notebook_edits() == []
    assert list((Path(store.path).parent / "notebook-edits").iterdir()) == [], "the copies kept for undo are dropped"


async def test_undo_refuses_a_path_that_now_leads_elsewhere(tmp_path):
    family, cm, root, outside = await swapping(tmp_path)
    target = root / "reports" / "q.ipynb"
    original = on_disk(target)
    other = root / "reports" / "other.ipynb"
    write_notebook(other, nbformat.v4.new_markdown_cell("another notebook"))
    await family.call(context(family, mode="edit"), "notebook_edit", {
        "path": "reports/q.ipynb", "operations": [{"op": "delete", "index": 0}]})
    edited = target.read_bytes()
    store = family.parts.store
    (edit,) = store.notebook_edits()
    secret, another = outside.read_bytes(), other.read_bytes()

    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(EditUndoError, match="now a link to a place outside the Jupyter server's root") as refused:
        await undo_edit(store, cm, edit["id"])
    assert refused.value.status == 409 and str(outside) not in str(refused.value)
    target.unlink()
    target.symlink_to(other)
    with pytest.raises(EditUndoError, match="now leads to reports/other.ipynb, not to reports/q.ipynb"):
        await undo_edit(store, cm, edit["id"])
    assert outside.read_bytes() == secret and other.read_bytes() == another
    assert store.notebook_edit(edit["id"])["undone_at"] is None

    target.unlink()
    target.write_bytes(edited)  # the notebook back at its path: the undo goes through
    assert (await undo_edit(store, cm, edit["id"]))["restored_from"] == "checkpoint"
    assert on_disk(target)["cells"] == original["cells"]


def test_the_demo_brain_passes_a_json_list_to_a_list_of_objects_parameter():
    """The emulator's demo brain fills `operations` from a ```json block, as the example notebook's request gives it."""
    edit = NotebookFileTools().tools({"mode": "edit"})[1]
    message = ("Use notebook_edit on 'a.ipynb' with these operations:\n"
               '```json\n[{"op": "delete", "index": 0}]\n```')
    assert build_input(edit.input_schema, Values.of(message, ["notebook_edit"])) == (
        {"path": "a.ipynb", "operations": [{"op": "delete", "index": 0}]}, [])
    assert build_input(edit.input_schema, Values.of("Use notebook_edit on 'a.ipynb'", ["notebook_edit"]))[1] == ["operations"]


async def test_a_scripted_session_of_an_agent_with_the_notebook_builtin_edits_a_notebook_in_the_root(harness, jp_root_dir):
    h = await harness.start()
    target = jp_root_dir / "reports" / "q3.ipynb"
    original = sample(target)
    editor = (await h.api("POST", "agents", {"name": "nb-editor", "tier": "kernel",
                                             "builtins": {"notebook": {"mode": "edit", "paths": ["reports/**"]}}}))["id"]
    reader = (await h.api("POST", "agents", {"name": "nb-reader", "tier": "kernel", "builtins": {"notebook": {}}}))["id"]
    assert (await h.api("GET", f"agents/{editor}"))["builtins"] == {"notebook": {"mode": "edit", "paths": ["reports/**"]}}

    sid = await h.session(editor, script(
        {"tool": "notebook_edit", "input": {"path": "reports/q3.ipynb", "operations": [
            {"op": "insert", "index": 0, "cell_type": "markdown", "source": "Reviewed by the agent."}]}},
        {"tool": "notebook_read", "input": {"path": "reports/q3.ipynb"}},
        {"tool": "notebook_read", "input": {"path": "../outside.ipynb"}},
        {"say": "done"}))
    events = await h.turn_ends(sid)
    edited, read, refused = results(events)
    assert edited.startswith("Edited reports/q3.ipynb: inserted cell 0 (markdown)")
    assert "## cell 0 · markdown\n```markdown\nReviewed by the agent.\n```" in read
    assert "leaves its folder with '..'" in refused
    errors = [e.is_error for e in events if e.type == "user.custom_tool_result"]
    assert errors == [False, False, True]
    assert "".join(on_disk(target)["cells"][0]["source"]) == "Reviewed by the agent."

    (edit,) = await edits(h, session_id=sid)
    assert edit["agent_id"] == editor and edit["path"] == "reports/q3.ipynb"
    assert (await undo(h, edit["id"]))["restored_from"] == "checkpoint"
    assert on_disk(target)["cells"] == original["cells"]

    # A reader is given notebook_read only: its definition upstream has no notebook_edit.
    names = {t.get("name") for t in (await h.api("GET", f"agents/{reader}"))["tools"] if isinstance(t, dict)}
    assert "notebook_read" in names and "notebook_edit" not in names
