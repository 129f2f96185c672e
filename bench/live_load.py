"""A Jupyter server extension that loads the live channel for `bench_live.py` (benchmarks only, never installed).

Enabled next to jupyter-cma (`--ServerApp.jpserver_extensions`, with `bench/` on PYTHONPATH), it adds
`POST {base_url}cma-bench/run` `{"scenario", "seconds"}`, which drives the server's **real** write paths on
its own event loop for that long and answers what it did:

- `spread`: 100 sessions (`sesn_bench_000…099`), each moving running ⇄ idle once a second through
  `Store.transition` (so the store's hook publishes `session.state`), spread evenly: one every 10 ms;
- `burst`: the same 100 transitions, all at once at the start of each second;
- `spread_egress`: `spread`, plus 100 egress rows a second through `EgressLog.record_many` (one per 10 ms);
- `bus`: the baseline. The same transitions as `spread`, then each announced on the server's event bus
  (`event_logger.emit` under a schema registered here at load time), which `/api/events/subscribe` streams.

The time a message was published is in each message (`t` on the live channel, `t` in the bus event's data);
the transition's own time is `at`. Both are `time.time()`, the clock the bench's clients read.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import tornado.web
from jupyter_server.base.handlers import JupyterHandler

BUS_SCHEMA = "https://events.jupyter-cma.org/bench/session_state/v1"
SESSIONS = 100
TICK = 1.0 / SESSIONS  # spread: one transition every 10 ms, so each session once a second

_SCHEMA = {
    "$id": BUS_SCHEMA,
    "version": "1",
    "title": "A session's state changed (bench only)",
    "description": "bench_live.py's baseline: the same notification as the live channel's session.state.",
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "state": {"type": "string"}, "from_state": {"type": ["string", "null"]},
        "tier": {"type": ["string", "null"]}, "agent_id": {"type": ["string", "null"]}, "at": {"type": "number"},
        "t": {"type": "number"},
    },
    "required": ["id", "state", "at", "t"],
}


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "live_load"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    serverapp.event_logger.register_event_schema(_SCHEMA)  # at load time: subscribers attach to the schemas known then
    route = serverapp.web_app.settings["base_url"].rstrip("/") + "/cma-bench/run"
    serverapp.web_app.add_handlers(".*$", [(route, RunHandler, {"serverapp": serverapp})])


class RunHandler(JupyterHandler):
    """`POST cma-bench/run`: run one scenario for `seconds`, answer what was published."""

    def initialize(self, serverapp: Any) -> None:  # type: ignore[override]
        self._serverapp = serverapp

    @tornado.web.authenticated
    async def post(self) -> None:
        body = json.loads(self.request.body)
        (cma,) = self._serverapp.extension_manager.extension_apps["jupyter_cma"]
        driver = Driver(cma, self._serverapp.event_logger)
        began = time.time()
        await driver.run(body["scenario"], float(body["seconds"]))
        self.finish({"transitions": driver.transitions, "rows": driver.rows, "began": began, "ended": time.time(),
                     "store_ms": driver.store_seconds * 1000, "emit_ms": driver.emit_seconds * 1000})


class Driver:
    """The load: transitions (and rows) at a fixed rate on the server's loop, through the real write paths."""

    def __init__(self, cma: Any, event_logger: Any) -> None:
        self.cma = cma
        self.event_logger = event_logger
        self.state: dict[str, str] = {}
        self.transitions = 0
        self.rows = 0
        self.store_seconds = 0.0  # Store.transition, with its hook (the live channel's publish) inside
        self.emit_seconds = 0.0  # event_logger.emit (the baseline)

    def transition(self, n: int, *, bus: bool) -> None:
        sid = f"sesn_bench_{n:03d}"
        to = "idle" if self.state.get(sid) == "running" else "running"
        began = time.perf_counter()
        before = self.cma.store.transition(sid, to, "bench", tier="kernel", agent_id="agent_bench")
        self.store_seconds += time.perf_counter() - began
        self.state[sid] = to
        self.transitions += 1
        if bus:
            began = time.perf_counter()
            self.event_logger.emit(schema_id=BUS_SCHEMA, data={"id": sid, "state": to, "from_state": before, "tier": "kernel",
                                                              "agent_id": "agent_bench", "at": time.time(), "t": time.time()})
            self.emit_seconds += time.perf_counter() - began

    def row(self, n: int) -> None:
        self.cma.egress_log.record_many([{
            "method": "GET", "scheme": "https", "host": "pypi.org", "port": 443, "path": f"/simple/pkg{n}/", "status": 200,
            "bytes_up": 512, "bytes_down": 4096, "duration_ms": 12.5, "decision": "allowed", "rule": "policy:bench:allow:0",
            "session_id": f"sesn_bench_{n % SESSIONS:03d}", "agent_id": "agent_bench",
        }])
        self.rows += 1

    async def run(self, scenario: str, seconds: float) -> None:
        start = time.monotonic()
        if scenario == "burst":
            for second in range(int(seconds)):
                await _until(start + second)
                for n in range(SESSIONS):
                    self.transition(n, bus=False)
            await _until(start + int(seconds))
            return
        ticks = int(seconds * SESSIONS)
        for i in range(ticks):
            await _until(start + i * TICK)  # behind schedule: no sleep, so the rate holds on average
            self.transition(i % SESSIONS, bus=scenario == "bus")
            if scenario == "spread_egress":
                self.row(i)


async def _until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)
