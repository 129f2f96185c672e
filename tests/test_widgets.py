"""The notebook widgets without a browser: `cma.dashboard()`, `cma.egress_log()`, their traits and checks, the built
ES modules, and `cma.Agent` / `cma.Session` displayed in a real kernel as a widget view with their text and HTML.

What the widgets draw is the frontend's (`labextension/test/*.test.mjs` for its logic, `tests/browser/` in a real
JupyterLab); here is the Python side and the contract between the two: trait names, the built files, the bundle.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import traitlets

import jupyter_cma as cma
from jupyter_cma.widgets import Dashboard
from jupyter_cma.widgets import core as widgets
from tests.notebook_kernels import notebook_of
from tests.test_dispatch import Harness, cma_emulator, cma_mode, harness, jp_server_config, script  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _built() -> None:
    missing = [n for n in ("dashboard.js", "egress.js") if not (widgets.STATIC / n).is_file()]
    assert not missing, (f"the widgets' JavaScript is missing ({missing}): build the extension first "
                         "(cd labextension && jlpm build:prod)")


# ---------------------------------------------------------------------- the notebook API


def test_importing_jupyter_cma_loads_no_widget_machinery():
    code = ("import sys, jupyter_cma as cma; cma.dashboard; "
            "print(sorted(m for m in ('anywidget', 'ipywidgets', 'jupyter_cma.widgets') if m in sys.modules))")
    # `cma.dashboard` is looked up lazily: only touching it loads the widgets.
    untouched = subprocess.run([sys.executable, "-c", "import sys, jupyter_cma; print('anywidget' in sys.modules)"],
                               capture_output=True, text=True, check=True)
    assert untouched.stdout.strip() == "False"
    touched = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(touched.stdout.replace("'", '"')) == ["anywidget", "ipywidgets", "jupyter_cma.widgets"]
    assert {"dashboard", "egress_log"} <= set(dir(cma))


def test_dashboard_carries_its_filters_as_synced_traits():
    _built()
    dash = cma.dashboard(state="active", tier="kernel", agent="analyst", text="team=ml", session="sesn_01", limit=50)
    assert isinstance(dash, Dashboard)
    assert (dash.state, dash.tier, dash.agent, dash.text, dash.session, dash.show_table, dash.limit) == (
        "active", "kernel", "analyst", "team=ml", "sesn_01", True, 50)
    synced = {name for name in dash.traits(sync=True)}
    assert {"state", "tier", "agent", "text", "session", "show_table", "limit", "_esm", "_css"} <= synced
    assert "export default" in dash._esm or "render" in dash._esm
    assert repr(dash) == "<cma.Dashboard state='active', tier='kernel', agent='analyst', text='team=ml', session='sesn_01'>"
    assert repr(cma.dashboard()) == "<cma.Dashboard all sessions>"
    # a filter set later is checked too, and a good one is taken
    dash.state = "sleeping"
    with pytest.raises(traitlets.TraitError, match="is not a session state"):
        dash.state = "asleep"
    assert dash.state == "sleeping"


def test_dashboard_takes_agent_and_session_objects_for_their_ids():
    _built()
    agent = cma.Agent({"id": "agent_011", "name": "analyst", "tools": []})
    dash = cma.dashboard(agent=agent, session=cma.Session("sesn_022"))
    assert (dash.agent, dash.session) == ("agent_011", "sesn_022")
    log = cma.egress_log(cma.Session("sesn_022"), decision="denied", host="pypi.org")
    assert (log.session, log.decision, log.host) == ("sesn_022", "denied", "pypi.org")
    assert repr(log) == "<cma.EgressLogWidget session='sesn_022', decision='denied', host='pypi.org'>"
    assert repr(cma.egress_log()) == "<cma.EgressLogWidget every request>"


@pytest.mark.parametrize(("filters", "error", "says"), [
    ({"state": "runing"}, ValueError, r"state='runing' is not a session state: use one of active, claimed, .*'' for every state"),
    ({"tier": "gpu"}, ValueError, r"tier='gpu' is not a tier: use 'kernel' or 'container'"),
    ({"session": "sesn 1"}, ValueError, r"session='sesn 1' is not an id: give one such as 'sesn_…'"),
    ({"limit": 0}, ValueError, r"limit=0: give how many recent sessions to load, from 1 to 500"),
    ({"text": "a\nb"}, ValueError, r"at most 256 characters on one line"),
    ({"stat": "running"}, TypeError, r"cma.dashboard\(\) has no filter 'stat': it takes state, tier, agent, text, session"),
    ({"state": 3}, TypeError, r"cma.dashboard\(state=...\) takes a string, not int"),
])
def test_a_bad_dashboard_filter_says_what_to_write_instead(filters, error, says):
    with pytest.raises(error, match=says):
        cma.dashboard(**filters)


@pytest.mark.parametrize(("args", "filters", "error", "says"), [
    ((), {"decision": "blocked"}, ValueError, r"decision='blocked': use one of allowed, denied, injected"),
    (("not an id",), {}, ValueError, r"session='not an id' is not an id"),
    ((), {"agent": "agent_1"}, TypeError, r"cma.egress_log\(\) has no filter 'agent': it takes decision, host"),
    ((), {"host": 42}, TypeError, r"takes a string, not int"),
])
def test_a_bad_egress_log_filter_says_what_to_write_instead(args, filters, error, says):
    with pytest.raises(error, match=says):
        cma.egress_log(*args, **filters)


def test_missing_javascript_names_the_rebuild():
    _built()
    dash = cma.dashboard()
    with pytest.raises(widgets.WidgetAssetsMissing, match=r"rebuild the extension: `cd labextension && jlpm install && jlpm build:prod`"):
        widgets._require_assets(dash, "no-such-widget.js")
    stand_in = widgets._asset("no-such-widget.js")
    assert isinstance(stand_in, str) and "export default" in stand_in and "rebuild the extension" in stand_in


def test_outside_a_kernel_agents_and_sessions_display_as_text_and_html_only():
    agent = cma.Agent({"id": "agent_011", "name": "analyst", "tier": "kernel", "tools": []})
    bundle = agent._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"] == repr(agent) and bundle["text/html"] == agent._repr_html_()
    assert widgets.widget_bundle(agent="agent_011") is None  # no kernel here: no widget made


# ---------------------------------------------------------------------- the built ES modules


@pytest.mark.parametrize("name", ["dashboard", "egress"])
def test_the_built_es_modules_export_a_default_with_render(name):
    _built()
    path = widgets.STATIC / f"{name}.js"
    assert (widgets.STATIC / f"{name}.css").is_file()
    node = shutil.which("node")
    assert node, "Node.js is not on PATH (scripts/setup.sh installs it): it checks the built modules"
    probe = ("const m = await import(process.argv[1]);"
             "console.log(JSON.stringify({default: typeof m.default, render: typeof m.default?.render}));")
    run = subprocess.run([node, "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON", "--input-type=module", "-e", probe,
                          path.as_uri()], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"default": "object", "render": "function"}
    # one standalone module: nothing left for the page to resolve
    assert not [line for line in path.read_text().splitlines() if line.startswith("import ")]


def test_the_python_traits_are_the_ones_the_modules_read():
    _built()
    dashboard = (ROOT / "labextension" / "src" / "widget" / "dashboard.ts").read_text()
    for trait in ("state", "tier", "agent", "text", "session", "show_table", "limit"):
        assert f"'{trait}'" in dashboard, trait
        assert widgets.Dashboard.class_traits()[trait].metadata.get("sync") is True
    egress = (ROOT / "labextension" / "src" / "widget" / "egress.ts").read_text()
    for trait in ("session", "decision", "host"):
        assert f"'{trait}'" in egress, trait
        assert widgets.EgressLogWidget.class_traits()[trait].metadata.get("sync") is True


# ---------------------------------------------------------------------- in a real kernel of the server


async def test_agents_and_sessions_display_as_the_live_view_with_their_text_and_html(harness):
    _built()
    async with notebook_of(harness) as notebook:
        await notebook.run('''
            import json
            import jupyter_cma as cma
            agent = cma.Agent.create("viewer", tier="kernel")
            session = agent.start(json.dumps({"cma_script": [{"say": "hello from the session"}]}), title="shown")
            print(session.wait())
        ''')
        shown = await notebook.finish(notebook.submit("display(agent)\ndisplay(session)\ncma.dashboard(state='active')"))
        displays = [o for o in shown if o["type"] in ("display_data", "execute_result")]
        assert len(displays) == 3, shown
        agent_view, session_view, dashboard_view = (d["data"] for d in displays)

        # each is a widget view (the browser draws it, talking to the server) ...
        for data in (agent_view, session_view, dashboard_view):
            assert data[WIDGET_MIME]["model_id"], data
        # ... with the text and HTML a saved notebook, nbconvert or a console shows instead
        assert agent_view["text/plain"].startswith("<cma.Agent 'viewer' agent_")
        assert "<b>cma.Agent</b> viewer" in agent_view["text/html"]
        assert "hello from the session" in session_view["text/plain"]
        assert "hello from the session" in session_view["text/html"] and "<script" not in session_view["text/html"]
        assert dashboard_view["text/plain"] == "<cma.Dashboard state='active'>"

        # the widgets' models carry what each view shows: the agent's sessions, the session alone
        models = json.loads(await notebook.run('''
            import json
            from ipywidgets.widgets.widget import _instances
            from jupyter_cma.widgets import Dashboard
            shown = [w for w in _instances.values() if isinstance(w, Dashboard)]
            print(json.dumps([{"agent": w.agent, "session": w.session, "show_table": w.show_table, "state": w.state}
                              for w in shown]))
        '''))
        agent_id = re.search(r"agent_[A-Za-z0-9]+", agent_view["text/plain"]).group(0)
        session_id = re.search(r"sesn_[A-Za-z0-9]+", session_view["text/plain"]).group(0)
        assert {"agent": agent_id, "session": "", "show_table": True, "state": ""} in models
        assert {"agent": "", "session": session_id, "show_table": False, "state": ""} in models
        assert {"agent": "", "session": "", "show_table": True, "state": "active"} in models
