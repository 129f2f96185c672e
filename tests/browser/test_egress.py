"""The sidebar's Egress tab: a request the proxy refused appears, live, highlighted with the rule that refused it."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.cma_rest import create_agent, python_message, start_session, wait_for
from tests.browser.pages import assert_not_reloaded, mark_page, open_lab, open_sidebar, widen_sidebar
from tests.browser.servers import LabServer

# No policy allows this host (none exists on the test server): the egress proxy refuses it.
FETCH_A_HOST_NO_POLICY_ALLOWS = """import urllib.request, urllib.error
try:
    urllib.request.urlopen("http://example.invalid/private/data", timeout=20)
except (urllib.error.URLError, OSError) as exc:
    print("refused:", exc)"""


def test_denied_egress_request_appears_highlighted_with_its_rule(page: Page, lab: LabServer):
    open_lab(page, lab)
    open_sidebar(page, "egress")
    widen_sidebar(page)
    log = page.locator("#jupyter-cma-panel-tabpanel-egress .jp-cma-egress-log")
    expect(log).to_be_visible()
    mark_page(page)

    agent = create_agent(lab, "browser-egress", "kernel")
    session = start_session(lab, agent["id"], python_message(FETCH_A_HOST_NO_POLICY_ALLOWS), title="reaches for a host no policy allows")
    denied = wait_for(lambda: [r for r in lab.api("GET", "egress/log", session_id=session["id"], decision="denied")["data"]
                               if r["host"] == "example.invalid"], what="the proxy's denied row for example.invalid")[0]

    row = log.locator(f"tr.jp-cma-egress-row[data-id='{denied['id']}']")
    expect(row).to_be_visible(timeout=30_000)
    expect(row).to_have_attribute("data-decision", "denied")
    expect(row).to_have_class(re.compile(r"\bjp-cma-egress-denied\b"))
    expect(row).to_contain_text("example.invalid")
    expect(row.locator(".jp-cma-egress-rule")).to_have_text(denied["rule"])
    assert_not_reloaded(page)
    # Highlighted: the row is tinted away from the panel's background, and its rule is in the error colour.
    looks = row.evaluate(
        """(tr) => { const probe = (v) => { const d = document.createElement('div');
                       d.style.color = `var(${v})`; d.style.background = `var(${v})`; tr.closest('.jp-cma-panel').appendChild(d);
                       const c = getComputedStyle(d).color; d.remove(); return c; };
                   return { cell: getComputedStyle(tr.querySelector('td')).backgroundColor,
                            plain: probe('--jp-layout-color1'),
                            rule: getComputedStyle(tr.querySelector('.jp-cma-egress-rule')).color,
                            error: probe('--jp-error-color1') }; }""")
    assert looks["cell"] not in (looks["plain"], "rgba(0, 0, 0, 0)"), looks
    assert looks["rule"] == looks["error"], looks
