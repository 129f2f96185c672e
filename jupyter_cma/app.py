"""The jupyter-cma server extension: settings, wiring, background tasks.

`CMAApp` holds every setting as a documented trait (`c.CMAApp.<name>` in
`jupyter_server_config.py`, or `--CMAApp.<name>=…`). Secrets never appear in
config: each is read from an environment variable or a 0600 file, named by a
trait. Background tasks start in `_start_jupyter_server_extension` (the
server's loop is running then) and are cancelled, with a bounded wait, in
`stop_extension`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Enum, Float, Integer, List, Type, Unicode, default
from traitlets.utils.importstring import import_item

from ._version import __version__
from .anthropic_api import Credentials, SecretFileError, load_secret
from .client.connection import SERVER_URL_ENV
from .control.agents import refresh_agents
from .control.dispatcher import Dispatcher
from .control.relay import SessionEventRelay
from .control.egress import SessionEgress
from .control.sessions import SessionManager
from .control.webhooks import WebhookIngest
from .egress.log import EgressLog
from .egress.policy import CorruptPolicy, PolicyError, PolicyResolver, PolicyStore, load_middleware
from .egress.proxy import EgressProxy
from .egress.secrets import SecretStore, SecretStoreError
from .live import LiveHub, LiveSources
from .local_emulator import EmulatorInfo, LocalEmulator
from .sandboxes.base import Tier, WorkerSettings
from .sandboxes.probe import probe_tiers
from .setup import CredentialSource, EmulatorRefused, SetupInput, setup_checks, setup_document
from .store import Store
from .tasks import BackgroundTasks
from .tools.builtin import BuiltinFamily, BuiltinTools, ServerParts
from .tools.builtin.egress import ToolEgress
from .tools.catalog import tool_catalog
from .tools.kernels import KERNEL_ACTIONS, KernelCredentials, NotebookTool, NotebookTools, ServerKernels
from .tools.registry import ToolRegistry
from .web.base import KERNEL_CREDENTIALS
from .web.handlers import ApiContext, handlers

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

DEFAULT_API_BASE_URL = "https://api.anthropic.com"
DEFAULT_BUILTIN_FAMILIES = [
    "jupyter_cma.tools.builtin.web.WebFetchTools",
    "jupyter_cma.tools.builtin.web.ServiceTools",
    "jupyter_cma.tools.builtin.browser.BrowserTools",
    "jupyter_cma.tools.builtin.email.EmailTools",
    "jupyter_cma.tools.builtin.notebooks.NotebookFileTools",
]
# A session's sandbox is released in these states; its built-ins' end_session runs when it enters one of them.
RELEASED_STATES = frozenset({"sleeping", "stopped", "failed", "ended"})


class CMAApp(ExtensionApp):
    """Claude Managed Agents with the agent's hands on this Jupyter server."""

    name = "jupyter_cma"
    load_other_extensions = True

    api_base_url = Unicode(
        help=f"Base URL of the Managed Agents API (default: $ANTHROPIC_BASE_URL, else {DEFAULT_API_BASE_URL}). "
        "Point it at `jupyter cma emulator` to run offline."
    ).tag(config=True)

    @default("api_base_url")
    def _default_api_base_url(self) -> str:
        return os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_API_BASE_URL

    environment_id = Unicode(
        help="Id of the self-hosted environment this server serves, e.g. env_… (default: $ANTHROPIC_ENVIRONMENT_ID)."
    ).tag(config=True)

    @default("environment_id")
    def _default_environment_id(self) -> str:
        return os.environ.get("ANTHROPIC_ENVIRONMENT_ID", "")

    api_key_env = Unicode(
        "ANTHROPIC_API_KEY",
        help="Environment variable holding the API key, used for control-plane calls such as creating agents "
        "and sessions (default ANTHROPIC_API_KEY). The key itself is never a config value.",
    ).tag(config=True)
    api_key_file = Unicode(
        None, allow_none=True, help="File holding the API key, mode 0600 (default: none; takes precedence over api_key_env)."
    ).tag(config=True)
    environment_key_env = Unicode(
        "ANTHROPIC_ENVIRONMENT_KEY",
        help="Environment variable holding the environment key, the worker's credential for polling the "
        "environment's work queue (default ANTHROPIC_ENVIRONMENT_KEY).",
    ).tag(config=True)
    environment_key_file = Unicode(
        None, allow_none=True, help="File holding the environment key, mode 0600 (default: none; takes precedence over environment_key_env)."
    ).tag(config=True)
    webhook_secret_env = Unicode(
        "ANTHROPIC_WEBHOOK_SIGNING_KEY",
        help="Environment variable holding the webhook signing secret in whsec_… form (default ANTHROPIC_WEBHOOK_SIGNING_KEY). "
        "With a secret, mode 'auto' means webhook mode.",
    ).tag(config=True)
    webhook_secret_file = Unicode(
        None, allow_none=True, help="File holding the webhook signing secret, mode 0600 (default: none; takes precedence over webhook_secret_env)."
    ).tag(config=True)
    mode = Enum(
        ["auto", "webhook", "poll"],
        default_value="auto",
        help="How this server learns of work: 'webhook' (Anthropic calls {base_url}cma/webhooks), 'poll' (a long-poll loop, "
        "for machines without a public URL), or 'auto' (default: webhook when a webhook secret is configured, else poll).",
    ).tag(config=True)
    data_dir = Unicode(
        help="Directory for the database, workspaces and sockets (default: <jupyter data dir>/cma). Created 0700."
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "cma")

    egress_log_retention_days = Float(
        30.0, help="Days to keep egress log records, and the email built-ins' mail log, before pruning them (default 30). "
        "Export the egress log (JSON lines) to keep it longer."
    ).tag(config=True)
    webhook_retention_days = Float(
        7.0, help="Days to keep received webhook deliveries before pruning them (default 7). Replays older than 5 minutes fail the signature check anyway."
    ).tag(config=True)
    reap_interval = Float(
        300.0, help="Seconds between checks for sessions that ended upstream while resting here (terminated, archived or "
        "deleted); their sandboxes and workspaces (files, container volumes) are removed (default 300; 0: never). "
        "Webhook mode also reaps at once on the ended events. Needs the API key.",
    ).tag(config=True)
    tier_probe_interval = Float(
        60.0, help="Seconds between re-checks of which sandbox tiers this machine can run (default 60)."
    ).tag(config=True)
    stop_timeout = Float(
        10.0, help="Seconds stop_extension waits for background tasks to finish after cancelling them (default 10)."
    ).tag(config=True)
    max_webhook_bytes = Integer(
        256 * 1024, help="Largest webhook body accepted, in bytes (default 262144)."
    ).tag(config=True)
    safety_drain_interval = Float(
        15.0, help="Webhook mode: seconds between safety drains of the work queue, so a lost delivery costs seconds (default 15)."
    ).tag(config=True)
    reclaim_older_than_ms = Integer(
        5000, help="Reclaim work items another worker polled but never acknowledged after this many ms (default 5000)."
    ).tag(config=True)
    notebook_tool_timeout = Float(
        120.0, help="Seconds a call to a notebook tool (@cma.tool) may take unless the tool sets its own timeout (default 120; "
        "keep it under 150, the SDK worker's bound on any tool call)."
    ).tag(config=True)
    idle_release_seconds = Float(
        60.0, help="Seconds a session may stay idle (turn ended) before its sandbox is released; the workspace is kept (default 60)."
    ).tag(config=True)
    default_tier = Enum(
        ["auto", "kernel", "container"],
        default_value="auto",
        help="Tier for agents that have none stored: 'kernel', 'container', or 'auto' (default): container when a Docker "
        "engine answers and the container tier is installed, else kernel.",
    ).tag(config=True)
    kernel_tier_class = Type(
        default_value="jupyter_cma.sandboxes.kernel.KernelTier",
        klass=Tier,
        help="The kernel (isolate) tier: a dedicated ipykernel per session (default jupyter_cma.sandboxes.kernel.KernelTier).",
    ).tag(config=True)
    container_tier_class = Type(
        default_value="jupyter_cma.sandboxes.container.ContainerTier",
        klass=Tier,
        help="The container tier: a Docker container per session (default jupyter_cma.sandboxes.container.ContainerTier).",
    ).tag(config=True)

    live_queue_size = Integer(
        1000, help="Messages the live channel (cma/api/live) queues per subscriber; one that falls further behind loses "
        "its queue and is told to refetch from the REST API (default 1000)."
    ).tag(config=True)
    live_max_subscribers = Integer(
        64, help="Live channel sockets open at once (one per browser page); more are refused with 503 (default 64)."
    ).tag(config=True)
    live_max_watched_sessions = Integer(
        50, help="Sessions whose events the live channel relays at once, each over one upstream event stream shared by "
        "every view (default 50). A view watching more is told which sessions it does not get."
    ).tag(config=True)
    live_relay_linger = Float(
        30.0, help="Seconds a session's upstream event stream stays open after the last view stopped watching it, so a "
        "page reload does not reopen it (default 30)."
    ).tag(config=True)

    egress_middleware = List(
        Unicode(),
        default_value=[],
        help="Egress middleware: dotted names of Python callables `hook(request, decision) -> Decision | None`, "
        "consulted in order after the egress policy decided a request (see jupyter_cma.egress.policy). "
        "One that cannot be imported makes every egress decision a deny, and is listed in status errors.",
    ).tag(config=True)

    builtin_families = List(
        Unicode(),
        default_value=list(DEFAULT_BUILTIN_FAMILIES),
        help="Built-in tool families this server offers agents, as import strings of BuiltinFamily subclasses "
        "(default: web_fetch, call_service, browser, email and notebook: " + ", ".join(DEFAULT_BUILTIN_FAMILIES) + "). "
        "Each is configured as its class (c.EmailTools.smtp_host = …); an agent gets a family's tools when it is created "
        "or patched with `builtins`. One that cannot be imported is left out and listed in status errors.",
    ).tag(config=True)

    # ------------------------------------------------------------------ wiring

    def initialize_settings(self) -> None:
        data = Path(self.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        self.store = Store(data / "cma.sqlite3")
        self.credentials, self.setting_errors = self._load_credentials()
        self.tier_probe: dict[str, dict[str, Any]] = {}
        self.background = BackgroundTasks("jupyter-cma")  # the extension's own loops, ended in stop_extension
        self.egress_secrets = SecretStore(data / "secrets")
        self.egress_policies = PolicyStore(self.store)
        self.egress_resolver = self._make_egress_resolver()
        # The live channel (cma/api/live): the writers publish through their hooks, after their commits.
        self.live = LiveHub(queue_size=self.live_queue_size, max_subscribers=self.live_max_subscribers)
        self.live_sources = LiveSources(self.live)
        self.store.on_transition = self.live_sources.session_state
        self.egress_log = EgressLog(self.store, on_rows=self.live_sources.egress_rows)
        # Notebook tools (@cma.tool) run in the kernel that defined them; a kernel proves which one it is by signing
        # its requests with its own key (KernelCredentials, checked by every REST handler).
        kernels = ServerKernels(self.serverapp.kernel_manager, self.serverapp.session_manager)
        self.notebook_tools = NotebookTools(kernels, default_timeout=self.notebook_tool_timeout,
                                            on_change=self._notebook_tool_changed)
        self.notebook_tools.on_kernel_tools = self.live_sources.tools_changed
        self.settings[KERNEL_CREDENTIALS] = KernelCredentials(kernels)
        # Built-in tools run in this server; their egress path (ToolEgress) is set below, once the proxy exists.
        self.builtins = self._make_builtins()
        # Custom tools: sandboxes call them at http://cma.internal/ through their proxy (identified by their socket),
        # with the built-in and notebook tools of their session's agent.
        self.tools = ToolRegistry(self.notebook_tools, agent_tools=lambda agent_id: (self.store.agent(agent_id) or {}).get("notebook_tools") or {},
                                  builtins=self.builtins)
        self.egress_proxy = EgressProxy(parent=self, data_dir=data, api_base_url=self.api_base_url,
                                        middleware=list(self.egress_middleware), egress_log=self.egress_log,
                                        internal_handler=self.tools.handle_internal)
        egress = SessionEgress(store=self.store, proxy=self.egress_proxy)
        # A built-in reaches the network only as its session: a proxy socket attached like a sandbox's.
        self.builtins.egress = ToolEgress(hook=egress, proxy=self.egress_proxy, socket_dir=data / "tool-sockets",
                                           policies=self.egress_resolver, secrets=self.egress_secrets)
        self._chain_session_released()
        self.sandbox_tiers: dict[str, Tier] = {
            "kernel": self.kernel_tier_class(
                parent=self, kernel_dir=str(data / "kernels"), data_dir=str(data), recorder=self.store.add_cell, store=self.store,
                egress_hook=egress, custom_tools=self.tools,
            ),
            "container": self.container_tier_class(
                parent=self, data_dir=str(data), store=self.store, egress_hook=egress, api_base_url=self.api_base_url,
                custom_tools=self.tools,
            ),
        }
        self.client = self._make_client()
        self.sessions = SessionManager(
            store=self.store,
            tiers=self.sandbox_tiers,
            default_tier=self.resolve_default_tier,
            workspaces=data / "workspaces",
            worker=WorkerSettings(client=self.client, environment_key=self.credentials.environment_key, max_idle=self.idle_release_seconds),
        )
        self.sessions.on_tool_result = self.live_sources.session_tool
        self.live_relay = SessionEventRelay(client=self.client, publish=self.live.publish, linger=self.live_relay_linger,
                                            max_streams=self.live_max_watched_sessions)
        self.live.watcher = self.live_relay
        self.dispatcher: Dispatcher | None = None
        if self.environment_id and self.credentials.environment_key is not None:
            self.dispatcher = Dispatcher(
                client=self.client,
                environment_id=self.environment_id,
                environment_key=self.credentials.environment_key,
                route=self.sessions.route,
                reclaim_older_than_ms=self.reclaim_older_than_ms,
            )
        self.webhooks = WebhookIngest(store=self.store, secret=self.credentials.webhook_secret, on_event=self._on_webhook_event)
        # The local emulator this server owns once `POST cma/api/setup/emulator` started it (use_local_emulator).
        self.local_emulator: LocalEmulator | None = None
        self._emulator_lock = asyncio.Lock()
        self._emulator_poll: asyncio.Task[None] | None = None
        self._extension_started = False
        if self.webhooks.config_error:
            self.setting_errors.append(f"webhook_secret: {self.webhooks.config_error}")
        for problem in self.setting_errors:
            self.log.error("jupyter-cma: %s", problem)
        self.log.info("jupyter-cma %s: mode %s, data in %s", __version__, self.effective_mode, data)

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers(ApiContext(
            store=self.store,
            sessions=self.sessions,
            tiers=self.sandbox_tiers,
            client=self.client,
            environment_id=lambda: self.environment_id,  # read per request: use_local_emulator may set it
            default_tier=self.resolve_default_tier,
            status=self.status,
            webhooks=self.webhooks,
            max_webhook_bytes=self.max_webhook_bytes,
            policies=self.egress_policies,
            egress=self.egress_resolver,
            secrets=self.egress_secrets,
            egress_log=self.egress_log,
            notebook_tools=self.notebook_tools,
            registry=self.tools,
            builtins=self.builtins,
            tool_catalog=self.tool_catalog,
            setup=self.setup_status,
            start_emulator=self.use_local_emulator,
            live=self.live,
            notebook_undone=self.live_sources.notebook_undone,
        )))

    def _make_builtins(self) -> BuiltinTools:
        """The built-in tool families of `builtin_families`, each made with this app as its parent (so its class's
        settings apply). An import string that fails, or names something else, is a setting error naming it."""
        families: list[BuiltinFamily] = []
        for name in self.builtin_families:
            fix = f"fix or remove {name!r} in c.CMAApp.builtin_families"
            try:
                cls = import_item(name)
            except Exception as exc:
                self.setting_errors.append(f"builtin_families: {name!r} cannot be imported ({type(exc).__name__}: {exc}); {fix}")
                continue
            if not (isinstance(cls, type) and issubclass(cls, BuiltinFamily)):
                self.setting_errors.append(f"builtin_families: {name!r} is not a BuiltinFamily subclass "
                                           f"(jupyter_cma.tools.builtin.base.BuiltinFamily); {fix}")
                continue
            try:
                families.append(cls(parent=self))
            except Exception as exc:
                self.setting_errors.append(f"builtin_families: {name!r} could not be made ({type(exc).__name__}: {exc}); {fix}")
        agent_builtins = lambda agent_id: (self.store.agent(agent_id) or {}).get("builtins") or {}  # noqa: E731
        try:
            return BuiltinTools(families, None, agent_builtins, close_timeout=self.stop_timeout / 2)
        except ValueError as exc:  # two families of one name, or one tool name offered twice
            self.setting_errors.append(f"builtin_families: {exc}; no built-in tools are offered until that is fixed")
            return BuiltinTools([], None, agent_builtins, close_timeout=self.stop_timeout / 2)

    def _chain_session_released(self) -> None:
        """When a session's sandbox is released (its state leaves serving), its built-ins release what they held.
        Chained after the live channel's listener of the store's transitions."""
        before = self.store.on_transition

        def on_transition(change: dict[str, Any]) -> None:
            try:
                if before is not None:
                    before(change)
            finally:
                if change.get("state") in RELEASED_STATES and change.get("from_state") not in RELEASED_STATES:
                    self.builtins.session_released(str(change["id"]))

        self.store.on_transition = on_transition

    def tool_catalog(self) -> dict[str, Any]:
        """The document of `GET cma/api/tools` (`tools/catalog.py`): every tier's standard tools, the built-in
        families with their availability, the notebook tools and the server's own tools."""
        return tool_catalog(tiers=self.sandbox_tiers, tier_status=self.tiers_status(), builtins=self.builtins,
                            notebook=[t.describe() for t in self.notebook_tools.tools()], server=self.tools.definitions(None))

    def _make_egress_resolver(self) -> PolicyResolver:
        """The egress policy resolver; a middleware that cannot load makes it deny everything (fail closed)."""
        try:
            middleware = load_middleware(self.egress_middleware)
            setup_error = None
        except PolicyError as exc:
            middleware, setup_error = [], str(exc)
            self.setting_errors.append(f"egress_middleware: {exc}")
        resolver = PolicyResolver(self.egress_policies, api_base_url=self.api_base_url, middleware=middleware, setup_error=setup_error)
        if resolver.setup_error and setup_error is None:
            self.setting_errors.append(f"egress: {resolver.setup_error}")
        return resolver

    def _make_client(self) -> AsyncAnthropic:
        from anthropic import AsyncAnthropic  # the SDK takes a while to import: only when the server starts

        # Without an API key the client still serves the worker flow (which uses
        # the environment key or the item's sessions token); control-plane calls
        # then fail with 401, and the status endpoint lists api_key as missing.
        key = self.credentials.api_key.reveal() if self.credentials.api_key else "no-api-key-configured"
        return AsyncAnthropic(api_key=key, base_url=self.api_base_url)

    def resolve_default_tier(self) -> str:
        if self.default_tier != "auto":
            return self.default_tier
        container = self.tier_probe.get("container", {})
        if container.get("available") and "container" in self.sandbox_tiers:
            return "container"
        return "kernel"

    def _on_webhook_event(self, data: dict[str, Any], created_at: str | None = None) -> None:
        """React to a verified, new delivery. Only schedules work: the answer must not wait."""
        event_type = data.get("type")
        if event_type == "session.status_run_started" and self.dispatcher is not None and self.effective_mode == "webhook":
            self.dispatcher.request_drain()
        if isinstance(data.get("id"), str):
            self.sessions.note_status(data["id"], str(event_type), created_at)

    def _load_credentials(self) -> tuple[Credentials, list[str]]:
        """Read each secret; a bad secret file is reported and treated as missing (fail closed)."""
        errors: list[str] = []

        def read(name: str, env_var: str, file: str | None) -> Any:
            try:
                return load_secret(env_var, file)
            except SecretFileError as exc:
                errors.append(f"{name}: {exc}")
                return None

        creds = Credentials(
            api_key=read("api_key", self.api_key_env, self.api_key_file),
            environment_key=read("environment_key", self.environment_key_env, self.environment_key_file),
            webhook_secret=read("webhook_secret", self.webhook_secret_env, self.webhook_secret_file),
        )
        return creds, errors

    @property
    def effective_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "webhook" if self.credentials.webhook_secret is not None else "poll"

    def missing_settings(self) -> list[str]:
        """Names of settings this server needs and lacks (never their values)."""
        missing = []
        if not self.environment_id:
            missing.append("environment_id")
        if self.credentials.environment_key is None:
            missing.append("environment_key")
        if self.credentials.api_key is None:
            missing.append("api_key")
        if self.effective_mode == "webhook" and self.credentials.webhook_secret is None:
            missing.append("webhook_secret")
        return missing

    def status(self) -> dict[str, Any]:
        missing = self.missing_settings()
        return {
            "version": __version__,
            "mode": self.effective_mode,
            "api_base_url": self.api_base_url,
            "environment_id": self.environment_id or None,
            "ready": not missing and not self.setting_errors,
            "missing": missing,
            "errors": self.setting_errors,
            "tiers": self.tiers_status(),
            "default_tier": self.resolve_default_tier(),
            "sessions": self.sessions.status(),
            "dispatch": None if self.dispatcher is None else {"drains": self.dispatcher.drains, "claimed": self.dispatcher.claimed},
            "webhooks": {"accepted": self.webhooks.accepted, "duplicates": self.webhooks.duplicates, "rejected": self.webhooks.rejected},
            "egress": self._egress_status(),
            "live": {**self.live.status(), **self.live_relay.status()},
        }

    def notify_status_changed(self) -> None:
        """Tell the live channel's views that setup or configuration changed (`status.changed`): they refetch
        `GET status` and `GET setup`."""
        self.live_sources.status_changed()

    def _egress_status(self) -> dict[str, Any]:
        policies = self.egress_policies.list()
        secrets_error = None
        try:
            secrets: int | None = len(self.egress_secrets.list())
        except SecretStoreError as exc:  # a broken secrets file must not break the status page
            secrets, secrets_error = None, str(exc)
        return {
            "policies": len(policies),
            "corrupt_policies": [p.id for p in policies if isinstance(p, CorruptPolicy)],
            "secrets": secrets,
            "secrets_error": secrets_error,
            "middleware": list(self.egress_middleware),
            "enforced": self.egress_proxy.running,
            "proxy": self.egress_proxy.status(),
        }

    # ------------------------------------------------------------------ setup

    def setup_status(self) -> dict[str, Any]:
        """The document of `GET cma/api/setup`: every check with its fix (names, never values), and the emulator."""
        status = self.status()
        sources = {
            "api_key": CredentialSource(self.api_key_env, "api_key_file", self.api_key_file),
            "environment_key": CredentialSource(self.environment_key_env, "environment_key_file", self.environment_key_file),
            "webhook_secret": CredentialSource(self.webhook_secret_env, "webhook_secret_file", self.webhook_secret_file),
        }
        checks = setup_checks(SetupInput.from_status(status, sources=sources, base_url=self.serverapp.base_url))
        return setup_document(status, checks, emulator=self._emulator_state(), can_start_emulator=self._emulator_refusal() is None)

    def _emulator_state(self) -> dict[str, Any]:
        emulator = self.local_emulator
        if emulator is not None:
            return {"running": emulator.running, "owned": True, "url": emulator.url}
        # An API on loopback is an emulator someone else runs (`jupyter cma lab`, a test): there, not ours.
        host = urlsplit(self.api_base_url).hostname or ""
        local = self.environment_id and host in ("127.0.0.1", "localhost", "::1")
        return {"running": bool(local), "owned": False, "url": self.api_base_url if local else None}

    def _emulator_refusal(self) -> str | None:
        """Why the local emulator may not replace this server's configuration, or None when it may."""
        if self.local_emulator is not None:
            return None  # ours: running (answered again) or dead (started again)
        if self.environment_id or self.dispatcher is not None:
            return (f"this server is configured for the environment {self.environment_id} at {self.api_base_url}; the local "
                    "emulator would replace that. To try the emulator, start a server without c.CMAApp.environment_id "
                    "(and $ANTHROPIC_ENVIRONMENT_ID), or run `jupyter cma lab`")
        return None

    async def use_local_emulator(self) -> dict[str, Any]:
        """Start the built-in emulator as a loopback process this server owns and serve it, then answer `setup_status()`.

        It becomes this server's API: base URL, environment id, API key and environment key, poll mode — the
        SDK client, the session manager's worker settings, the dispatcher and its poll loop, the egress
        policy's system allowance (the proxy's engine restarts with it) and the container tier's API URL.
        Called again, it answers the same emulator (or starts a new one if it died). EmulatorRefused when
        the server is configured for another API; EmulatorStartError when the emulator does not start.
        """
        async with self._emulator_lock:
            if self.local_emulator is not None and self.local_emulator.running:
                return self.setup_status()
            refusal = self._emulator_refusal()
            if refusal is not None:
                raise EmulatorRefused(refusal)
            if self.local_emulator is not None:
                await self.local_emulator.stop(self.stop_timeout)  # died: its state went with it; a new one takes over
            emulator = LocalEmulator(log=self.log)
            info = await emulator.start()
            self.local_emulator = emulator  # owned from here on: stop_extension stops it, whatever happens next
            await self._serve_api(info)
            self.log.info("jupyter-cma: serving the local emulator's environment %s at %s (poll mode)", info.environment_id, info.base_url)
        self.notify_status_changed()  # every open view refetches GET status and GET setup
        return self.setup_status()

    async def _serve_api(self, info: EmulatorInfo) -> None:
        """Point everything initialize_settings built from the API settings at `info`'s API (see use_local_emulator)."""
        old_url, had_api_key = self.api_base_url, self.credentials.api_key is not None
        if self._emulator_poll is not None:  # a previous emulator of ours: its loop goes first
            self._emulator_poll.cancel()
            await asyncio.gather(self._emulator_poll, return_exceptions=True)
            self._emulator_poll = None
        if self.dispatcher is not None:
            await self.dispatcher.close()
        self.api_base_url = info.base_url
        self.environment_id = info.environment_id
        self.mode = "poll"  # the emulator sends no webhooks here: nothing needs a public URL
        self.credentials = Credentials(api_key=info.api_key, environment_key=info.environment_key,
                                       webhook_secret=self.credentials.webhook_secret)
        # Errors about the credentials it replaced no longer apply.
        self.setting_errors[:] = [e for e in self.setting_errors if not e.startswith(("api_key:", "environment_key:"))]
        # The client every handler and loop holds: the same object, now for the emulator.
        self.client.api_key = info.api_key.reveal()
        self.client.base_url = info.base_url
        self.sessions.worker = WorkerSettings(client=self.client, environment_key=info.environment_key, max_idle=self.idle_release_seconds)
        # The worker's own API calls are allowed toward the API host only (fail closed): the server's resolver and
        # the engine's, which takes its settings when it starts, so it starts again.
        fresh = self._make_egress_resolver_for(info.base_url)
        self.egress_resolver.system, self.egress_resolver.setup_error = fresh.system, fresh.setup_error
        self.egress_proxy.api_base_url = info.base_url
        for tier in self.sandbox_tiers.values():
            if getattr(tier, "api_base_url", None) == old_url:  # set by this server, not by the operator
                tier.api_base_url = info.base_url  # type: ignore[attr-defined]
        self.dispatcher = Dispatcher(client=self.client, environment_id=info.environment_id, environment_key=info.environment_key,
                                     route=self.sessions.route, reclaim_older_than_ms=self.reclaim_older_than_ms)
        if not self._extension_started:
            return  # _start_jupyter_server_extension starts the engine, the poll loop and the reaper with these settings
        if self.egress_proxy.available:
            await self.egress_proxy.stop()  # serves no sandbox yet: nothing was dispatched before
            await self.egress_proxy.start()
        self._emulator_poll = self.background.spawn(self.dispatcher.poll_forever())
        if self.reap_interval > 0 and not had_api_key:
            self.background.spawn(self._every(self.reap_interval, self._reap_ended))

    def _make_egress_resolver_for(self, api_base_url: str) -> PolicyResolver:
        try:
            middleware, setup_error = load_middleware(self.egress_middleware), None
        except PolicyError as exc:
            middleware, setup_error = [], str(exc)
        return PolicyResolver(self.egress_policies, api_base_url=api_base_url, middleware=middleware, setup_error=setup_error)

    # ------------------------------------------------------------------ background tasks

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        self._extension_started = True  # from now on, use_local_emulator starts what it configures itself
        url = server_url(serverapp)
        if url:  # the kernels this server starts find it there (an address, not a credential)
            os.environ[SERVER_URL_ENV] = url
        serverapp.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        released = self.sessions.recover()
        if released:
            self.log.info("jupyter-cma: released %d session(s) left serving by a previous process", len(released))
        await self.egress_proxy.start()
        for tier in self.sandbox_tiers.values():
            if self.egress_proxy.ca_bundle.exists() and not tier.ca_bundle:
                tier.ca_bundle = str(self.egress_proxy.ca_bundle)  # an operator's own bundle wins
        for tier in self.sandbox_tiers.values():
            await tier.start()
        assert self.builtins.egress is not None
        await self.builtins.start(ServerParts(
            store=self.store, client=lambda: self.client, environment_id=lambda: self.environment_id,
            contents_manager=serverapp.contents_manager, root_dir=str(serverapp.root_dir), policies=self.egress_resolver,
            secrets=self.egress_secrets, data_dir=Path(self.data_dir), egress=self.builtins.egress,
        ))
        self.background.spawn(self._every(self.tier_probe_interval, self._probe_tiers))
        self.background.spawn(self._every(3600.0, self._prune))
        if self.reap_interval > 0 and self.credentials.api_key is not None:
            self.background.spawn(self._every(self.reap_interval, self._reap_ended))
        if self.dispatcher is None:
            self.log.warning("jupyter-cma: not serving work: %s missing", ", ".join(self.missing_settings()) or "settings")
        elif self.effective_mode == "webhook":
            self.dispatcher.request_drain()  # work queued while this server was down
            self.background.spawn(self.dispatcher.safety_drains(self.safety_drain_interval))
        else:
            self.background.spawn(self.dispatcher.poll_forever())

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` now and then every `seconds`; a failing run is logged, not fatal."""
        while True:
            try:
                await job()
            except Exception:
                self.log.exception("jupyter-cma: background job %s failed", getattr(job, "__name__", job))
            await asyncio.sleep(seconds)

    async def _probe_tiers(self) -> None:
        self.tier_probe = await asyncio.to_thread(probe_tiers)

    def tiers_status(self) -> dict[str, dict[str, Any]]:
        """What the machine can run (the periodic probe), with each tier's own view of now on top."""
        tiers = {name: dict(self.tier_probe.get(name) or {"available": None, "reason": "probing"}) for name in ("container", "kernel")}
        for name, tier in self.sandbox_tiers.items():
            tiers.setdefault(name, {}).update(tier.status())  # e.g. the isolation kernels get; the image and the warm pool
        return tiers

    async def _reap_ended(self) -> None:
        from anthropic import NotFoundError

        async def ended(session_id: str) -> bool:
            try:
                session = await self.client.beta.sessions.retrieve(session_id)
            except NotFoundError:
                return True  # deleted
            except Exception:
                return False  # unknown now: ask again next time
            return session.status == "terminated" or getattr(session, "archived_at", None) is not None

        reaped = await self.sessions.reap_ended(ended)
        if reaped:
            self.log.info("jupyter-cma: reaped %d session(s) that ended upstream: %s", len(reaped), ", ".join(reaped))

    async def _prune(self) -> None:
        removed = self.store.prune_deliveries(time.time() - self.webhook_retention_days * 86400)
        if removed:
            self.log.info("jupyter-cma: pruned %d webhook deliveries", removed)
        removed = self.egress_log.prune(self.egress_log_retention_days)
        if removed:
            self.log.info("jupyter-cma: pruned %d egress log records", removed)
        # The email built-ins' mail log is egress too, kept as long; a reply to pruned mail starts a new session.
        removed = self.store.prune_mail(time.time() - self.egress_log_retention_days * 86400)
        if removed:
            self.log.info("jupyter-cma: pruned %d mail records", removed)

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        self.notebook_tools.on_kernel_event(data)

    def _notebook_tool_changed(self, tool: NotebookTool) -> None:
        """A notebook tool was defined again with another schema or description: the agents given it get it too."""
        self.background.spawn(refresh_agents(self.client, self.store, tool))

    async def stop_extension(self) -> None:
        self.serverapp.event_logger.remove_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        self.live.close()  # each live socket's sender closes it (1001)
        await self.live_relay.close(self.stop_timeout)
        await self.background.close(self.stop_timeout)
        try:
            await asyncio.wait_for(self._release_all(), self.stop_timeout)
        except asyncio.TimeoutError:
            self.log.warning("jupyter-cma: sandboxes did not all stop within %ss", self.stop_timeout)
        if self.local_emulator is not None:  # after the sandboxes: their workers stop their work items through it
            await self.local_emulator.stop(self.stop_timeout)
        self.store.close()

    async def _release_all(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.close()
        await self.sessions.close()
        for tier in self.sandbox_tiers.values():
            await tier.close()
        await self.builtins.close()  # bounded; before the proxy stops, so their sockets detach from a running engine
        await self.egress_proxy.stop()
        await self.notebook_tools.close()
        await self.client.close()


def server_url(serverapp: Any) -> str | None:
    """The server's own URL as a process on this machine reaches it (loopback for a wildcard address); None for a
    server on a Unix socket."""
    if getattr(serverapp, "sock", ""):
        return None
    ip = serverapp.ip or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "[::1]"}.get(ip, f"[{ip}]" if ":" in ip else ip)
    scheme = "https" if serverapp.certfile else "http"
    return f"{scheme}://{host}:{serverapp.port}{serverapp.base_url}"
