"""The egress proxy as the Jupyter server sees it: a supervised engine process and the sandboxes' sockets.

`EgressProxy` starts the engine (`jupyter_cma.egress.engine`, mitmproxy with
our policy hooks) in a process of its own, from a Python environment of its
own (`install_engine` makes one), so that a crash in the engine cannot take
the Jupyter server down and mitmproxy's pinned dependencies never meet the
server's. When the engine dies it is started again, with a growing pause if
it keeps dying, and handed every sandbox again.

The server owns each sandbox's *listening* Unix socket (`attach` creates it
at the path the tier chose) and passes it to the engine over the control
channel. Connections made while the engine restarts wait in the socket's
backlog. No secret goes to the engine on its command line or in its
environment: the control channel carries the settings and, for a
credential-free worker, the session's token; secrets are read from the
secret store by name when a request needs one.

The engine sends back one record per request, which goes to the `EgressLog`
(SQLite and the live feed). A plain tunnel or a WebSocket is recorded when it
ends; the engine announces each when it opens, and the server keeps the
announcement until its record comes. When the engine dies (or is stopped)
with some still open, the server writes their records itself, marked as cut
off (`CUT_OFF_RULE`): nothing open at a crash goes unrecorded.

It also relays the sandboxes' calls to `http://cma.internal/` (the internal
route): each names only the sandbox whose socket it came in on, and the
session it is made for is the one this server attached that socket to.
`internal_handler` (the tool registry's `handle_internal`) answers it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import secrets as _random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from ..tasks import BackgroundTasks
from . import channel
from .log import EgressLog
from .policy import WorkerScope

# The engine's environment. mitmproxy 11.0.2 is the last release for Python 3.11;
# it pins older tornado/h11/cryptography than the Jupyter server uses, hence its own venv.
ENGINE_REQUIREMENTS = ("mitmproxy==11.0.2", "idna==3.10")
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
# Passed through to the engine; nothing else of the server's environment (it may hold API keys).
ENGINE_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")
PACKAGE_DIR = Path(__file__).resolve().parent.parent
RESTART_DELAY_MIN = 0.2
STABLE_SECONDS = 30.0  # an engine that ran this long was not crash-looping: restart it without a pause
INTERNAL_MAX_ANSWER = 8 * 1024 * 1024  # an internal call's answer (base64 on the channel: within its MAX_MESSAGE_BYTES)
CUT_OFF_RULE = "cut-off:engine-stopped"  # prefixes the rule of a tunnel or WebSocket still open when the engine stopped

# (session_id, agent_id, method, path, body) → (status, body, content type); see EgressProxy.internal_handler.
InternalHandler = Callable[[str | None, str | None, str, str, bytes], Awaitable[tuple[int, bytes, str]]]


def default_engine_dir() -> Path:
    """Where `install_engine` puts the engine's environment: beside the server's own."""
    return Path(sys.prefix) / "share" / "jupyter-cma" / "egress-engine"


def install_engine(target: Path | None = None, *, pip_args: tuple[str, ...] = ()) -> Path:
    """Create (or update) the engine's virtual environment; returns its python."""
    target = Path(target or default_engine_dir())
    python = target / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *pip_args, *ENGINE_REQUIREMENTS], check=True)
    # The engine runs with -O; compile its optimised bytecode now rather than on each start.
    subprocess.run([str(python), "-O", "-m", "compileall", "-q", "-j", "0", str(target / "lib")], check=False, stdout=subprocess.DEVNULL)
    return python


def placeholder_work_secret(placeholder: str) -> str:
    """A work-item `secret` payload carrying only a placeholder sessions token.

    A credential-free worker (the container tier) is given this as
    ANTHROPIC_WORK_SECRET; the SDK sends `Authorization: Bearer <placeholder>`
    and the proxy swaps in the real token on the worker's own calls for its
    work item only (`policy.WorkerScope`).
    """
    return base64.urlsafe_b64encode(json.dumps({"sessions_token": placeholder}).encode()).decode().rstrip("=")


def _json_answer(status: int, error: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"error": error}).encode(), "application/json"


@dataclass
class Attachment:
    sandbox_id: str
    socket_path: str
    listener: socket.socket
    spec: dict[str, Any]


class EgressProxy(LoggingConfigurable):
    """Runs and supervises the egress engine; attaches and detaches sandboxes' sockets."""

    engine_python = Unicode(
        "",
        help="The Python of the egress engine's environment (mitmproxy installed). Empty: "
        "<sys.prefix>/share/jupyter-cma/egress-engine/bin/python, which `jupyter cma install-egress-engine` creates. "
        "Without an engine sandboxes have no network at all (fail closed).",
    ).tag(config=True)
    upstream_ca = Unicode(
        "", help="A CA bundle (PEM) the proxy trusts for upstream TLS instead of the system's (e.g. an internal CA of private services)."
    ).tag(config=True)
    max_header_bytes = Int(64 * 1024, help="Largest request head (request line and headers) a sandbox may send.").tag(config=True)
    header_timeout = Float(30.0, help="Seconds a sandbox has to finish sending a request head.").tag(config=True)
    idle_timeout = Float(120.0, help="Seconds a connection may stay silent before it is closed.").tag(config=True)
    max_connection_seconds = Float(3600.0, help="Longest life of one connection (or tunnel).").tag(config=True)
    max_body_bytes = Int(2 * 1024**3, help="Largest request or response body.").tag(config=True)
    max_websocket_message_bytes = Int(
        16 * 1024**2,
        help="Largest WebSocket message, either way. The proxy relays a message once it is whole, so it holds its fragments "
        "until then; each fragment counts 64 bytes on top of its payload. A larger message closes the connection (close "
        "code 1009) and is logged as denied (limit:websocket-message).",
    ).tag(config=True)
    connections_per_sandbox = Int(64, help="Open connections one sandbox may have; more are refused with 429.").tag(config=True)
    connections_total = Int(2048, help="Open connections through the proxy in all.").tag(config=True)
    requests_per_second = Float(200.0, help="Requests (and CONNECTs) per second one sandbox may make, on average; "
                                "the same rate bounds the connections it opens.").tag(config=True)
    request_burst = Int(400, help="Requests one sandbox may make at once above its rate.").tag(config=True)
    start_timeout = Float(60.0, help="Seconds to wait for the engine to start (the first start creates its CA).").tag(config=True)
    restart_delay_max = Float(10.0, help="Longest pause between restarts of an engine that keeps dying.").tag(config=True)
    internal_timeout = Float(300.0, help="Seconds a sandbox's call to http://cma.internal/ (a tool) may take before "
                             "the proxy answers 504.").tag(config=True)

    def __init__(self, *, data_dir: Path, api_base_url: str, middleware: list[str], egress_log: EgressLog,
                 internal_handler: InternalHandler | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.api_base_url = api_base_url
        self.middleware = list(middleware)
        self.egress_log = egress_log
        # Answers the sandboxes' calls to http://cma.internal/ with the session of the calling sandbox's attachment.
        # None: such calls get 404 (no tool registry on this server).
        self.internal_handler = internal_handler
        self._answers = BackgroundTasks("egress proxy: cma.internal answers")
        self._background = BackgroundTasks("egress proxy")  # the supervisor and the engine's stderr relay
        self.home = self.data_dir / "egress"
        self.confdir = self.home / "mitmproxy"
        self.ca_bundle = self.home / "ca-bundle.pem"
        self.attachments: dict[str, Attachment] = {}
        # Tunnels and WebSockets the engine announced as open, by the engine's id, until their record comes.
        self._open: dict[int, dict[str, Any]] = {}
        self.restarts = 0
        self.last_exit: str | None = None
        self.error: str | None = None
        self.engine_setup_error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._outbox: channel.Outbox | None = None
        self._inbox = channel.Inbox()
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def python(self) -> Path:
        return Path(self.engine_python) if self.engine_python else default_engine_dir() / "bin" / "python"

    @property
    def available(self) -> bool:
        """The engine can be run here (its environment exists)."""
        return self.python.exists()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._control is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    async def start(self) -> bool:
        """Start the engine and wait until it serves; False (and `error` says why) if it cannot."""
        if not self.available:
            self.error = (f"the egress engine is not installed ({self.python} is missing); run `jupyter cma install-egress-engine`. "
                          "Until then sandboxes have no network access")
            self.log.error("jupyter-cma: %s", self.error)
            return False
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.confdir.mkdir(mode=0o700, exist_ok=True)
        self._link_package()
        self._stopping = False
        try:
            await self._spawn()
        except Exception as exc:
            self.error = f"the egress engine did not start: {exc}; retrying"
            self.log.error("jupyter-cma: %s", self.error)
            await self._kill()
        self._supervisor = self._background.spawn(self._supervise())
        return self.running

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        await self._answers.close(5.0)
        for sandbox_id in list(self.attachments):
            self.detach(sandbox_id)
        await self._kill()
        await self._background.close(5.0)  # the stderr relay ends with the engine

    def _link_package(self) -> None:
        """The engine imports this very package (same version as the server) and nothing else from the server's environment."""
        pkg = self.home / "pkg"
        pkg.mkdir(exist_ok=True)
        link = pkg / PACKAGE_DIR.name
        if link.is_symlink() and Path(os.readlink(link)) == PACKAGE_DIR:
            return
        tmp = pkg / f".{PACKAGE_DIR.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(PACKAGE_DIR, target_is_directory=True)
        os.replace(tmp, link)

    async def _spawn(self) -> None:
        server_end, engine_end = channel.pair()
        env = {k: os.environ[k] for k in ENGINE_ENV_KEEP if k in os.environ}
        env["PYTHONPATH"] = str(self.home / "pkg")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                # -O: mitmproxy type-checks every message it builds while __debug__ is on (a fifth of its time).
                str(self.python), "-O", "-m", "jupyter_cma.egress.engine", "--control-fd", str(engine_end.fileno()),
                pass_fds=(engine_end.fileno(),), env=env, cwd=str(self.home),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,  # a terminal's Ctrl-C goes to the server, which stops the engine itself
            )
        finally:
            engine_end.close()
        self._control = server_end
        self._outbox = channel.Outbox(server_end)
        self._inbox = channel.Inbox()
        self._started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        server_end.setblocking(False)
        loop.add_reader(server_end.fileno(), self._on_control)
        self._background.spawn(self._relay_stderr(self._proc))
        self._send({"op": "configure", "data_dir": str(self.data_dir), "confdir": str(self.confdir), "api_base_url": self.api_base_url,
                    "middleware": self.middleware, "upstream_ca": self.upstream_ca or None, "limits": self._limits(),
                    "internal_timeout": self.internal_timeout})
        ready = await asyncio.wait_for(asyncio.shield(self._ready), self.start_timeout)
        self.engine_setup_error = ready.get("setup_error")
        self._write_ca_bundle(Path(ready["ca_cert"]))
        for attachment in self.attachments.values():
            self._send_attach(attachment)
        self.error = None
        self.log.info("jupyter-cma: egress engine running (pid %s)", self._proc.pid)

    def _limits(self) -> dict[str, Any]:
        names = ("max_header_bytes", "header_timeout", "idle_timeout", "max_connection_seconds", "max_body_bytes",
                 "max_websocket_message_bytes", "connections_per_sandbox", "connections_total", "requests_per_second", "request_burst")
        return {name: getattr(self, name) for name in names}

    async def _supervise(self) -> None:
        """Start the engine again whenever it stops; pause longer each time it dies young (a crash loop)."""
        delay = RESTART_DELAY_MIN
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                self.last_exit = f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
                self.log.error("jupyter-cma: the egress engine stopped (%s); starting it again", self.last_exit)
                if time.monotonic() - self._started_at > STABLE_SECONDS:
                    delay = RESTART_DELAY_MIN
            self._close_control()
            self._proc = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.restart_delay_max)
            self.restarts += 1
            try:
                await self._spawn()
            except Exception as exc:
                self.error = f"the egress engine did not restart: {exc}"
                self.log.error("jupyter-cma: %s", self.error)
                await self._kill()

    async def _kill(self) -> None:
        self._close_control()
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(proc.wait(), 5)  # it exits once the control channel closes
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    def _close_control(self) -> None:
        control, self._control = self._control, None
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            outbox.close()
        if control is not None:
            try:
                asyncio.get_running_loop().remove_reader(control.fileno())
            except (RuntimeError, ValueError):
                pass
            control.close()
        self._cut_off_open()

    def _cut_off_open(self) -> None:
        """The engine is gone (or going): record every tunnel and WebSocket it left open, marked as cut off.

        Every message it sent was read before this (the channel's end comes
        after them), so these records will never come from it. Ids are the
        engine's own: the next engine starts with none open.
        """
        announced, self._open = self._open, {}
        if not announced:
            return
        now = time.time()
        rows = []
        for row in announced.values():
            rows.append({**row, "rule": f"{CUT_OFF_RULE}:{row.get('rule') or '-'}", "status": None,
                         "duration_ms": max(0.0, now - float(row.get("at") or now)) * 1000})
        self.log.warning("jupyter-cma: the egress engine stopped with %d tunnel(s) or WebSocket(s) open; recorded as cut off", len(rows))
        self._record(rows)

    async def _relay_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                # The engine's lines start with their level (see engine.__main__.main); tracebacks' lines do not.
                level = logging.WARNING if text.startswith(("WARNING", "ERROR", "CRITICAL")) else logging.INFO
                self.log.log(level, "egress engine: %s", text[:2000])

    # ------------------------------------------------------------------ control channel

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """Send now or as soon as the channel can take it (nothing is dropped while the engine lives)."""
        if self._outbox is None:
            return  # no engine: attachments are sent to the next one when it starts
        try:
            self._outbox.send(message, fds)
        except OSError as exc:  # the engine is gone; _supervise restarts it and re-sends the attachments
            self.log.warning("jupyter-cma: could not reach the egress engine (%s)", exc)

    def _on_control(self) -> None:
        """Read every message waiting; the log records among them are stored in one transaction."""
        rows: list[dict[str, Any]] = []
        try:
            while self._control is not None:
                try:
                    data = self._control.recv(channel.MESSAGE_BYTES)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    self._record(rows)  # what it sent before it went comes before what it left open
                    rows = []
                    self._close_control()  # the engine is gone; _supervise restarts it
                    return
                try:
                    whole = self._inbox.feed(data)
                    if whole is None:
                        continue  # a fragment; the rest of the message follows
                    message = json.loads(whole)
                except ValueError:
                    self.log.warning("jupyter-cma: unreadable message from the egress engine")
                    continue
                op = message.get("op")
                if op == "ready" and self._ready is not None and not self._ready.done():
                    self._ready.set_result(message)
                elif op == "log":
                    rows.extend(self._closed_rows(message.get("rows") or []))
                elif op == "worker_scope":
                    self._learned_scope(message)
                elif op == "internal":
                    self._answers.spawn(self._answer_internal(message, self._outbox))
        finally:
            if rows:
                self._record(rows)

    async def _answer_internal(self, message: dict[str, Any], outbox: channel.Outbox | None) -> None:
        """Answer a sandbox's call to cma.internal: who calls is this server's attachment of the socket, nothing else.

        The reply goes back only to the engine that asked (`outbox`): call
        ids are an engine's own, so a restarted engine must not get an answer
        meant for its predecessor.
        """
        call_id = message.get("id")
        status, body, content_type = await self._internal_answer(message)
        if len(body) > INTERNAL_MAX_ANSWER:
            self.log.warning("jupyter-cma: an internal call's answer of %d bytes is larger than %d; refused", len(body), INTERNAL_MAX_ANSWER)
            status, body, content_type = _json_answer(502, f"the answer is larger than {INTERNAL_MAX_ANSWER} bytes")
        if outbox is None or outbox is not self._outbox:
            return  # that engine is gone; the sandbox's connection went with it
        self._send({"op": "internal_reply", "id": call_id, "status": status, "body": base64.b64encode(body).decode("ascii"),
                    "content_type": content_type})

    async def _internal_answer(self, message: dict[str, Any]) -> tuple[int, bytes, str]:
        attachment = self.attachments.get(str(message.get("sandbox")))
        if attachment is None:
            return _json_answer(403, "this sandbox is not attached to the egress proxy")
        if attachment.spec.get("internal_route", True) is not True:  # `attach` always sets it; anything but True refuses
            # A socket of the server's own built-ins (web pages a browser opens among them): whatever reaches the network
            # through it must not run the session's tools. Decided here, by the server, not by the engine that asked.
            return _json_answer(403, "this socket does not reach cma.internal: it carries built-in tools' web traffic, "
                                     "which may not call the session's tools")
        if self.internal_handler is None:
            return _json_answer(404, "no tool registry on this server")
        try:
            body = base64.b64decode(message.get("body") or "", validate=True)
        except (binascii.Error, TypeError):
            return _json_answer(400, "the egress engine sent an unreadable body")
        spec = attachment.spec  # the session this server attached the socket to; the message is not asked
        try:
            status, answer, content_type = await self.internal_handler(
                spec.get("session_id"), spec.get("agent_id"), str(message.get("method")), str(message.get("path")), body)
            return int(status), bytes(answer), str(content_type)
        except Exception:
            self.log.exception("jupyter-cma: the internal handler failed on %s %s for session %s",
                               message.get("method"), str(message.get("path"))[:200], spec.get("session_id"))
            return _json_answer(500, "the server failed to answer this call; its log has the details")

    def _closed_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records to store now: an announcement (`open_id`) is kept until the record that closes it (`record_id`)."""
        out = []
        for row in rows:
            if not isinstance(row, dict):
                continue
            if "open_id" in row:
                self._open[row.pop("open_id")] = row
                continue
            self._open.pop(row.pop("record_id", None), None)
            out.append(row)
        return out

    def _learned_scope(self, message: dict[str, Any]) -> None:
        """The engine learned a worker's skills and memory stores: a restarted engine gets them with the attachment."""
        attachment = self.attachments.get(str(message.get("sandbox")))
        worker = message.get("worker")
        if attachment is None or not isinstance(worker, dict) or not isinstance(attachment.spec.get("worker"), dict):
            return
        own = attachment.spec["worker"]
        if all(worker.get(k) == own.get(k) for k in ("session_id", "work_id", "environment_id")):  # never another item's
            attachment.spec["worker"] = {**own, "skills": worker.get("skills") or [], "memory_stores": worker.get("memory_stores") or {}}

    def _record(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            self.egress_log.record_many(rows)
        except Exception:
            self.log.exception("jupyter-cma: could not store %d egress log records", len(rows))

    def _write_ca_bundle(self, engine_ca: Path) -> None:
        """The bundle sandboxes trust: the system's CAs plus the proxy's own (for intercepted tunnels)."""
        parts = []
        for candidate in SYSTEM_CA_FILES:
            if os.path.isfile(candidate):
                parts.append(Path(candidate).read_text())
                break
        else:
            try:
                import certifi

                parts.append(Path(certifi.where()).read_text())
            except ImportError:
                pass
        parts.append(engine_ca.read_text())
        text = "\n".join(p.rstrip("\n") for p in parts) + "\n"
        if self.ca_bundle.exists() and self.ca_bundle.read_text() == text:
            return
        tmp = self.ca_bundle.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, self.ca_bundle)

    # ------------------------------------------------------------------ sandboxes

    def attach(self, sandbox_id: str, socket_path: str, *, session_id: str | None, agent_id: str | None = None,
               metadata: dict[str, str] | None = None, api_token: str | None = None, work_id: str | None = None,
               environment_id: str | None = None, socket_mode: int = 0o600, internal_route: bool = True,
               inject: bool = True) -> str | None:
        """Serve a sandbox's socket for a session; returns the placeholder to give the sandbox when `api_token` is set.

        `api_token` (a credential-free worker's: the container tier) is spent
        only on the calls that worker makes for its own work item: `work_id`
        and `environment_id` name it, with `session_id` (`policy.WorkerScope`);
        a token without them is refused (ValueError). A sandbox without a token
        has no system allowance toward the API host at all.
        Without an engine (not installed) no socket is made: the sandbox's
        bridge then answers every connection at once that there is no egress.
        While the engine (re)starts, connections wait in the socket's backlog.
        `socket_mode`: 0600 when the sandbox runs as this server's user (kernels);
        a container's user differs, so its socket is opened up, and the directory
        holding it is what keeps everyone else out.
        `internal_route`: calls to http://cma.internal/ through this socket reach the
        session's tools (a sandbox's); False refuses them with 403 (the server's own
        built-ins, whose traffic a web page may steer). `inject`: the session's policy
        injections apply; False sends requests without them (a browser, which spends
        them for whatever page it opens), decided and logged as the session all the same.
        """
        worker = None
        if api_token:
            try:
                worker = WorkerScope.from_json({"session_id": session_id, "work_id": work_id, "environment_id": environment_id}).to_json()
            except (KeyError, TypeError):
                raise ValueError("an API token is attached only with the work item it serves (session_id, work_id, environment_id)") from None
        self.detach(sandbox_id)
        if self._supervisor is None:  # no engine to serve it (not installed, or not started)
            return None
        placeholder = f"cma-placeholder-{_random.token_urlsafe(24)}" if api_token else None
        path = Path(socket_path)
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            path.chmod(socket_mode)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        spec = {"id": sandbox_id, "session_id": session_id, "agent_id": agent_id, "metadata": dict(metadata or {}),
                "api_token": api_token, "placeholder": placeholder, "worker": worker,
                "internal_route": bool(internal_route), "inject": bool(inject)}
        attachment = Attachment(sandbox_id, str(path), listener, spec)
        self.attachments[sandbox_id] = attachment
        self._send_attach(attachment)
        return placeholder

    def _send_attach(self, attachment: Attachment) -> None:
        self._send({"op": "attach", "sandbox": attachment.spec}, [attachment.listener.fileno()])

    def detach(self, sandbox_id: str) -> None:
        attachment = self.attachments.pop(sandbox_id, None)
        if attachment is None:
            return
        self._send({"op": "detach", "id": sandbox_id})
        attachment.listener.close()
        Path(attachment.socket_path).unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        return {
            "engine": "running" if self.running else ("not installed" if not self.available else "stopped"),
            "pid": self.pid,
            "python": str(self.python),
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "error": self.error or self.engine_setup_error,
            "sandboxes": len(self.attachments),
            "open_tunnels": len(self._open),  # plain tunnels and WebSockets open now (their records come when they end)
            "ca_bundle": str(self.ca_bundle) if self.ca_bundle.exists() else None,
        }

