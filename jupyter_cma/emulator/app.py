"""`jupyter cma emulator`: run the emulated Managed Agents API on loopback.

On start it prints ONE JSON line to stdout (`base_url`, `api_key`,
`environment_id`, `environment_key`, and `webhook_secret` when webhooks are
on), then serves until SIGINT/SIGTERM. Scripts read that line; people read the
log on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Float, Integer, List, Type, Unicode
from traitlets.config import Application

from .brains import BRAINS
from .http import make_application
from .service import Service
from .turns import Brain
from .webhooks import WebhookSender, new_webhook_secret

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class BrainType(Type):
    """A `Type` trait that also takes the short names in `BRAINS` ("demo", "scripted")."""

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, str):
            value = BRAINS.get(value, value)
        return super().validate(obj, value)


class Emulator:
    """The emulator as an object: start it on the running loop, stop it, read its info.

    `EmulatorApp` wraps this for the command line; tests and notebooks may use
    it directly.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        brain: Brain,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_retry_delays: tuple[float, ...] = (1, 2, 4, 8, 16, 32),
        lease_ttl: float = 120.0,
        api_key: str | None = None,
        environment_name: str = "emulator",
        ping_interval: float = 15.0,
        model_delay: float = 0.0,
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.brain = brain
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.webhook_retry_delays = webhook_retry_delays
        self.lease_ttl = lease_ttl
        self.api_key = api_key
        self.environment_name = environment_name
        self.ping_interval = ping_interval
        self.model_delay = model_delay
        self.log_requests = log_requests
        self.info: dict[str, Any] = {}
        self.service: Service | None = None
        self._server: HTTPServer | None = None

    async def start(self) -> dict[str, Any]:
        sender = None
        if self.webhook_url:
            self.webhook_secret = self.webhook_secret or new_webhook_secret()
            sender = WebhookSender(self.webhook_url, self.webhook_secret, retry_delays=self.webhook_retry_delays)
        service = Service(brain=self.brain, webhooks=sender, lease_ttl=self.lease_ttl, api_key=self.api_key, model_delay=self.model_delay)
        self.service = service
        env = service.create_environment({"name": self.environment_name, "config": {"type": "self_hosted"}})
        environment_key = service.mint_environment_key(env["id"])
        sockets = bind_sockets(self.port, self.host)
        port = sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.info = {
            "base_url": f"http://{host}:{port}",
            "api_key": service.api_key,
            "environment_id": env["id"],
            "environment_key": environment_key,
        }
        if sender is not None:
            self.info["webhook_url"] = self.webhook_url
            self.info["webhook_secret"] = self.webhook_secret
        self.info["brain"] = f"{type(self.brain).__module__}.{type(self.brain).__name__}"
        self.info["lease_ttl_seconds"] = self.lease_ttl
        app = make_application(service, self.info, ping_interval=self.ping_interval, log_requests=self.log_requests)
        self._server = HTTPServer(app, idle_connection_timeout=300)
        self._server.add_sockets(sockets)
        service.start()
        return self.info

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self.service is not None:
            await self.service.close()
            if self.service.webhooks is not None:
                await self.service.webhooks.close()
        if self._server is not None:
            await asyncio.wait_for(self._server.close_all_connections(), 5)


class EmulatorApp(Application):
    """A loopback stand-in for the Managed Agents API that the unmodified SDK runs against."""

    name = "jupyter-cma-emulator"
    description = "Run a local emulator of the Claude Managed Agents API (environments, work queue, sessions, events, agents, skills, webhooks)."

    host = Unicode("127.0.0.1", help="Address to listen on (default 127.0.0.1). Only loopback is allowed unless allow_remote is set.").tag(config=True)
    port = Integer(0, help="Port to listen on (default 0: a free port, reported in the JSON line).").tag(config=True)
    allow_remote = Bool(False, help="Allow a non-loopback host (default False). The emulator has no TLS and weak, printed credentials.").tag(config=True)
    webhook_url = Unicode(None, allow_none=True, help="Deliver signed webhooks to this URL (default: none, webhooks off).").tag(config=True)
    webhook_secret = Unicode(
        None,
        allow_none=True,
        help="Signing secret in whsec_<base64> form (default: generated when webhook_url is set). "
        "Also read from JUPYTER_CMA_EMULATOR_WEBHOOK_SECRET.",
    ).tag(config=True)
    webhook_retry_delays = List(Float(), default_value=[1, 2, 4, 8, 16, 32], help="Seconds to wait before each webhook retry (default 1,2,4,8,16,32; then give up).").tag(config=True)
    brain_class = BrainType(
        default_value="jupyter_cma.emulator.brains.DemoBrain",
        klass=Brain,
        help="The emulated model: 'demo' (default; the README scenario plus scripts), 'scripted' (scripts only), or a dotted Brain subclass.",
    ).tag(config=True)
    lease_ttl = Float(120.0, help="Work-item lease TTL in seconds (default 120). A lease with no heartbeat for this long is re-queued.").tag(config=True)
    api_key = Unicode(None, allow_none=True, help="The API key to accept (default: generated; also read from JUPYTER_CMA_EMULATOR_API_KEY).").tag(config=True)
    ping_interval = Float(15.0, help="Seconds between `event: ping` frames on idle event streams (default 15).").tag(config=True)
    model_delay = Float(0.0, help="Seconds each emulated model request takes (default 0), for demos that should feel real.").tag(config=True)
    log_requests = Bool(False, help="Log every HTTP request to stderr (default False).").tag(config=True)

    aliases = {
        "host": "EmulatorApp.host",
        "port": "EmulatorApp.port",
        "webhook-url": "EmulatorApp.webhook_url",
        "brain": "EmulatorApp.brain_class",
        "lease-ttl": "EmulatorApp.lease_ttl",
        "model-delay": "EmulatorApp.model_delay",
        "log-level": "Application.log_level",
    }
    flags = {
        "log-requests": ({"EmulatorApp": {"log_requests": True}}, "Log every HTTP request to stderr."),
        "allow-remote": ({"EmulatorApp": {"allow_remote": True}}, "Allow listening on a non-loopback address."),
    }

    def start(self) -> None:
        if self.host not in LOOPBACK_HOSTS and not self.allow_remote:
            self.log.critical("refusing to listen on %s: the emulator is for loopback; pass --allow-remote to override", self.host)
            self.exit(2)
        asyncio.run(self._serve())

    def make_emulator(self) -> Emulator:
        return Emulator(
            host=self.host,
            port=self.port,
            brain=self.brain_class(),
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret or os.environ.get("JUPYTER_CMA_EMULATOR_WEBHOOK_SECRET"),
            webhook_retry_delays=tuple(self.webhook_retry_delays),
            lease_ttl=self.lease_ttl,
            api_key=self.api_key or os.environ.get("JUPYTER_CMA_EMULATOR_API_KEY"),
            ping_interval=self.ping_interval,
            model_delay=self.model_delay,
            log_requests=self.log_requests,
        )

    async def _serve(self) -> None:
        emulator = self.make_emulator()
        info = await emulator.start()
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        self.log.info("emulator serving %s (brain %s)", info["base_url"], info["brain"])
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        await emulator.stop()


main = EmulatorApp.launch_instance
