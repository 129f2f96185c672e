"""Notebook tools on the server: the tools each notebook kernel defined, and running a call in that kernel.

A notebook cell's `@cma.tool` (`tools/notebook.py`, in the user's kernel) registers the tool here through the
REST API, signed with the kernel's own key (`client/signing.py`, checked by `KernelCredentials`), so a kernel
can only register tools for itself. When a session calls the tool, `NotebookTools.call` runs it in that
kernel: the server is one more client of the kernel, and sends the call as a silent `execute_request` to a
subshell (ipykernel ≥ 7, JEP 91) — a thread of the kernel beside its main shell, so the call runs while a
cell runs (even the cell that waits for the session), with the notebook's globals as they are at that moment.
The result comes back in the reply's `user_expressions`; nothing is printed into the notebook.

Calls to one kernel run one at a time, in order (one subshell per kernel). A call that outlives its
timeout is answered with a tool error, and the kernel's next call goes to a new subshell (a thread cannot
be stopped from outside; the old one finishes on its own). A kernel that restarts or shuts down loses its
tools (`forget_kernel`, from the server's kernel events); a call for one of them gets a tool error that
names the notebook and what to run again.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..client.signing import MAX_SKEW, KernelSignature

log = logging.getLogger("jupyter_cma.tools")

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
SUBSHELL_TIMEOUT = 10.0  # seconds for a kernel to make a subshell (an idle control channel answers at once)
NOTEBOOK_MODULE = "jupyter_cma.tools.notebook"
TOOL_NAME_CHARS = "letters, digits, '_' or '-'"


class KernelAuthError(PermissionError):
    """A request signed as a kernel that this server cannot accept; the message says why."""


@dataclass(frozen=True)
class NotebookTool:
    """A tool a notebook kernel registered: where it runs, and the definition an agent is given."""

    kernel_id: str
    name: str
    description: str
    input_schema: dict[str, Any]
    timeout: float
    notebook: str | None  # the notebook's path in the server's root, when the kernel belongs to one
    registered_at: float = field(default_factory=time.time)

    def definition(self) -> dict[str, Any]:
        """The custom tool as an agent gets it upstream."""
        return {"type": "custom", "name": self.name, "description": self.description, "input_schema": self.input_schema}

    def describe(self) -> dict[str, Any]:
        return {"kernel_id": self.kernel_id, "notebook": self.notebook, "name": self.name, "description": self.description,
                "input_schema": self.input_schema, "timeout": self.timeout, "registered_at": self.registered_at}


class ServerKernels:
    """The Jupyter server's kernels, as far as notebook tools need them: their keys, notebooks and clients."""

    def __init__(self, kernel_manager: Any, session_manager: Any) -> None:
        self._kernels = kernel_manager  # jupyter_server's MappingKernelManager
        self._sessions = session_manager  # jupyter_server's SessionManager (kernel → notebook path)

    def running(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    def key(self, kernel_id: str) -> bytes | None:
        """The kernel's message-signing key; None for a kernel this server does not run."""
        if kernel_id not in self._kernels:
            return None
        key = self._kernels.get_kernel(kernel_id).session.key
        return bytes(key) if key else None

    async def notebook(self, kernel_id: str) -> str | None:
        """The path of the notebook (or console) whose kernel this is, when the server has a session for it."""
        try:
            for session in await self._sessions.list_sessions():
                if (session.get("kernel") or {}).get("id") == kernel_id:
                    return session.get("path") or session.get("name")
        except Exception:
            log.debug("jupyter-cma: could not list the server's sessions", exc_info=True)
        return None

    def client(self, kernel_id: str) -> Any:
        """A new client of the kernel (jupyter_client's AsyncKernelClient), channels not started.

        It gets a session of its own (the kernel's key, a new session id): a kernel routes each reply to the
        session id that asked, so a client sharing the kernel manager's session would take other clients'
        replies, and they its.
        """
        from jupyter_client.session import Session

        manager = self._kernels.get_kernel(kernel_id)
        session = Session(key=manager.session.key, signature_scheme=manager.session.signature_scheme, username="jupyter-cma")
        return manager.client(session=session)


class KernelCredentials:
    """Checks `CMA-Kernel` signatures (see `client/signing.py`) against the keys of the server's kernels."""

    def __init__(self, kernels: ServerKernels) -> None:
        self._kernels = kernels
        self._seen: dict[str, float] = {}  # nonce → when it may be forgotten

    def verify(self, header: str | None, method: str, uri: str, body: bytes) -> str | None:
        """The id of the kernel that signed this request; None if it is not kernel-signed; KernelAuthError if the
        signature is bad, old, replayed, or names a kernel this server does not run."""
        try:
            signature = KernelSignature.parse(header)
        except ValueError as exc:
            raise KernelAuthError(str(exc)) from None
        if signature is None:
            return None
        key = self._kernels.key(signature.kernel_id)
        if key is None:
            raise KernelAuthError(f"kernel {signature.kernel_id} is not running on this server; only its own kernels sign requests")
        if not signature.fresh():
            raise KernelAuthError(f"the request's signature is more than {MAX_SKEW} s old (or ahead): check the clocks")
        if not signature.matches(key, method, uri, body):
            raise KernelAuthError(f"the request's signature does not match kernel {signature.kernel_id}'s key")
        now = time.time()
        self._seen = {n: t for n, t in self._seen.items() if t > now}
        if signature.nonce in self._seen:
            raise KernelAuthError("this signed request was already received (a replay); sign each request anew")
        self._seen[signature.nonce] = now + 2 * MAX_SKEW
        return signature.kernel_id


class _KernelLink:
    """This server's connection to one kernel: a client with its shell and control channels, and a subshell."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.subshell: str | None = None
        self.lock = asyncio.Lock()  # one call at a time per kernel
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)

    async def _request(self, channel: str, msg_type: str, content: dict[str, Any], timeout: float,
                       subshell: str | None = None) -> dict[str, Any] | None:
        """Send one request and wait for its reply (replies to earlier, abandoned requests are dropped)."""
        message = self.client.session.msg(msg_type, content)
        if subshell is not None:
            message["header"]["subshell_id"] = subshell
        getattr(self.client, f"{channel}_channel").send(message)
        read = getattr(self.client, f"get_{channel}_msg")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = await read(timeout=left)
            except Exception:  # queue.Empty on a timeout
                return None
            if reply.get("parent_header", {}).get("msg_id") == message["header"]["msg_id"]:
                return reply["content"]
        return None

    async def execute(self, code: str, expressions: dict[str, str], timeout: float) -> dict[str, Any] | None:
        """Run `code` silently in this kernel's subshell; its execute_reply, or None after `timeout` seconds."""
        if self.subshell is None:
            reply = await self._request("control", "create_subshell_request", {}, SUBSHELL_TIMEOUT)
            if reply is None or reply.get("status") != "ok" or not reply.get("subshell_id"):
                raise RuntimeError("the kernel did not make a subshell: notebook tools need ipykernel 7 or later in the "
                                   "notebook's kernel (`pip install -U ipykernel`, then restart the kernel)")
            self.subshell = reply["subshell_id"]
        content = {"code": code, "silent": True, "store_history": False, "user_expressions": expressions,
                   "allow_stdin": False, "stop_on_error": False}
        reply = await self._request("shell", "execute_request", content, timeout, subshell=self.subshell)
        if reply is None:
            self.subshell = None  # still busy with this call: the next one gets a subshell of its own
        return reply

    def close(self) -> None:
        self.client.stop_channels()


class NotebookTools:
    """The tools notebook kernels registered, by kernel, and the calls into those kernels."""

    def __init__(self, kernels: ServerKernels, *, default_timeout: float = 120.0,
                 on_change: Callable[[NotebookTool], None] | None = None) -> None:
        self.kernels = kernels
        self.default_timeout = default_timeout
        self.on_change = on_change  # a registered tool's definition changed (agents given it are updated)
        # A kernel's set of tools changed (registered, unregistered, gone with the kernel): the live channel's tools.changed.
        self.on_kernel_tools: Callable[[str], None] | None = None
        self._tools: dict[str, dict[str, NotebookTool]] = {}  # kernel id → name → tool
        self._notebooks: dict[str, str] = {}  # kernel id → notebook path, kept after the kernel ends (for messages)
        self._gone: dict[str, str] = {}  # kernel id → why its tools went (restarted, shut down)
        self._links: dict[str, _KernelLink] = {}

    # ------------------------------------------------------------------ registry

    async def register(self, kernel_id: str, name: str, *, description: str, input_schema: dict[str, Any],
                       timeout: float | None = None) -> NotebookTool:
        """Add or replace kernel `kernel_id`'s tool `name` (the caller has checked that the kernel itself asks)."""
        notebook = await self.kernels.notebook(kernel_id)
        if notebook:
            self._notebooks[kernel_id] = notebook
        tool = NotebookTool(kernel_id, name, description, input_schema,
                            float(timeout) if timeout else self.default_timeout, notebook or self._notebooks.get(kernel_id))
        before = self._tools.get(kernel_id, {}).get(name)
        self._tools.setdefault(kernel_id, {})[name] = tool
        self._gone.pop(kernel_id, None)
        if before is not None and before.definition() != tool.definition() and self.on_change is not None:
            self.on_change(tool)
        self._kernel_tools_changed(kernel_id)
        log.info("jupyter-cma: notebook %s (kernel %s) registered tool %s", tool.notebook or "?", kernel_id, name)
        return tool

    def unregister(self, kernel_id: str, name: str) -> bool:
        removed = self._tools.get(kernel_id, {}).pop(name, None) is not None
        if removed:
            self._kernel_tools_changed(kernel_id)
        return removed

    def _kernel_tools_changed(self, kernel_id: str) -> None:
        if self.on_kernel_tools is not None:
            try:
                self.on_kernel_tools(kernel_id)
            except Exception:  # a listener's failure must not fail the kernel's registration
                log.exception("jupyter-cma: a listener of kernel %s's tools failed", kernel_id)

    def forget_kernel(self, kernel_id: str, why: str) -> None:
        """The kernel restarted or shut down: its tools are gone with its memory."""
        tools = self._tools.pop(kernel_id, {})
        link = self._links.pop(kernel_id, None)
        if link is not None:
            link.close()
        if tools:
            self._gone[kernel_id] = why
            log.info("jupyter-cma: kernel %s %s; its tools %s are unregistered", kernel_id, why, sorted(tools))
            self._kernel_tools_changed(kernel_id)

    def get(self, kernel_id: str, name: str) -> NotebookTool | None:
        return self._tools.get(kernel_id, {}).get(name)

    def tools(self, kernel_id: str | None = None) -> list[NotebookTool]:
        """Registered tools (of one kernel, or of all), oldest first."""
        kernels = [kernel_id] if kernel_id is not None else list(self._tools)
        return sorted((t for k in kernels for t in self._tools.get(k, {}).values()), key=lambda t: t.registered_at)

    def on_kernel_event(self, data: dict[str, Any]) -> None:
        """A `kernel_actions` event of the Jupyter server: a kernel that restarts or shuts down loses its tools."""
        action, kernel_id = data.get("action"), data.get("kernel_id")
        if kernel_id and action in ("restart", "shutdown") and data.get("status") == "success":
            self.forget_kernel(kernel_id, "restarted" if action == "restart" else "was shut down")

    # ------------------------------------------------------------------ calls

    def _where(self, kernel_id: str, notebook: str | None = None) -> str:
        path = notebook or self._notebooks.get(kernel_id)
        return f"notebook {path!r}" if path else f"the notebook of kernel {kernel_id}"

    async def call(self, kernel_id: str, name: str, tool_input: dict[str, Any], *, notebook: str | None = None) -> dict[str, Any]:
        """Run tool `name` in kernel `kernel_id`: {"content": str or blocks, "is_error": bool}; never raises for the
        tool's own failures (they are tool errors the model reads)."""
        where = self._where(kernel_id, notebook)
        if not self.kernels.running(kernel_id):
            return _error(f"{where} is not running any more, so its tool {name!r} cannot run: open the notebook and "
                          f"run the cell that defines {name!r} (then give the agent the tool again)")
        tool = self.get(kernel_id, name)
        if tool is None:
            why = self._gone.get(kernel_id)
            if why:
                return _error(f"the kernel of {where} {why}, so its tool {name!r} is gone: run the cell that defines it again")
            return _error(f"{where} has no tool {name!r} now: run the cell that defines it")
        call_id = uuid.uuid4().hex
        call = json.dumps({"id": call_id, "name": name, "input": tool_input, "timeout": tool.timeout})
        code = f"await __import__({NOTEBOOK_MODULE!r}, fromlist=['serve_call']).serve_call({call!r})"
        expressions = {"result": f"__import__({NOTEBOOK_MODULE!r}, fromlist=['take_result']).take_result({call_id!r})"}
        link = self._links.get(kernel_id)
        if link is None:
            link = self._links[kernel_id] = _KernelLink(self.kernels.client(kernel_id))
        try:
            async with link.lock:
                reply = await link.execute(code, expressions, tool.timeout + 2.0)  # the kernel's own timeout comes first
        except RuntimeError as exc:
            return _error(f"{where}: {exc}")
        if reply is None:
            return _error(f"tool {name!r} did not answer within {tool.timeout:g} s; it may still be running in {where} "
                          "(a tool's timeout is @cma.tool(timeout=...))")
        return _answer(reply, name, where)

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()


def _error(message: str) -> dict[str, Any]:
    return {"content": message, "is_error": True}


def _answer(reply: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """The tool result in a kernel's execute_reply (see `tools/notebook.py`: serve_call and take_result)."""
    if reply.get("status") != "ok":
        ename, evalue = reply.get("ename", "Error"), reply.get("evalue", "")
        if ename == "ModuleNotFoundError":
            return _error(f"jupyter-cma is not importable in {where}'s kernel ({evalue}); install it in that environment")
        return _error(f"could not run tool {name!r} in {where}: {ename}: {evalue}")
    result = (reply.get("user_expressions") or {}).get("result") or {}
    try:
        text = ast.literal_eval(result["data"]["text/plain"])
        answer = json.loads(text)
        if isinstance(answer, dict) and isinstance(answer.get("is_error"), bool) and "content" in answer:
            return {"content": answer["content"], "is_error": answer["is_error"]}
    except (KeyError, TypeError, ValueError, SyntaxError):
        pass
    return _error(f"tool {name!r} in {where} gave no result ({result.get('ename', 'unreadable reply')}: {result.get('evalue', '')})")
