"""Every example notebook runs top to bottom, offline, as a user runs it: in a kernel of the Jupyter server.

Each notebook of `examples/` is opened as JupyterLab opens it — a session of the real server under test
(with jupyter-cma, the emulator in place of Anthropic's API, both sandbox tiers) — and executed by nbclient
over that kernel. Any cell that raises fails the test. The executed notebooks are saved next to the test's
temporary root, so what a user would see can be read afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_dispatch import cma_emulator, cma_mode, harness, jp_server_config  # noqa: F401

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.ipynb"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 4, "examples/ holds the example notebooks"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
async def test_example_runs_top_to_bottom_offline(harness, jp_root_dir, example, tmp_path):
    await harness.start()
    serverapp = harness.serverapp
    shutil.copy(example, jp_root_dir / example.name)
    session = await serverapp.session_manager.create_session(path=example.name, type="notebook", kernel_name="python3")
    kernel_id = session["kernel"]["id"]
    notebook = nbformat.read(example, as_version=4)
    client = NotebookClient(notebook, km=serverapp.kernel_manager.get_kernel(kernel_id), timeout=600,
                            resources={"metadata": {"path": str(jp_root_dir)}})
    try:
        await client.async_execute()
    finally:
        nbformat.write(notebook, tmp_path / example.name)
        await serverapp.kernel_manager.shutdown_kernel(kernel_id)
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"]
    assert errors == []
