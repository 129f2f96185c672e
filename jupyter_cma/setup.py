"""Setup, said plainly: what this server lacks to serve sessions, and the exact fix for each.

`setup_checks(SetupInput)` is a pure function: from what the app knows (its status document, read by
`SetupInput.from_status`, and where each credential is read from) to one `Check` per thing a session
needs — the credentials, the Docker engine, the sandbox image, bubblewrap, the egress proxy's engine and
the settings themselves. `GET cma/api/setup` (`web/setup.py`) answers `setup_document(...)`: the checks,
whether the server is ready, and whether the local emulator can be started.

A check names settings, environment variables, files and commands — never a secret's value: the status
document holds none, and nothing here reads one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]

CHECK_IDS = ("environment_id", "environment_key", "api_key", "webhook_secret", "docker", "sandbox_image",
             "bubblewrap", "egress_engine", "settings")

DOCS_CREDENTIALS = "docs/settings.md#where-the-credentials-come-from"
DOCS_SETTINGS = "docs/settings.md"
DOCS_CONTAINER = "docs/container-tier.md"
DOCS_IMAGE = "docs/container-tier.md#the-sandbox-image"
DOCS_ISOLATION = "docs/kernel-tier.md#isolation"
DOCS_ENGINE = "docs/egress-proxy.md#the-engine"


class EmulatorRefused(Exception):
    """The local emulator cannot be started here: the server is configured for another API (the message says what to change)."""


@dataclass(frozen=True)
class CredentialSource:
    """Where the server reads one credential from: an environment variable, or a file named by a setting."""

    env: str  # e.g. ANTHROPIC_API_KEY
    file_setting: str  # e.g. api_key_file (a CMAApp setting)
    file: str | None = None  # the file that setting names, when set


DEFAULT_SOURCES: Mapping[str, CredentialSource] = {
    "api_key": CredentialSource("ANTHROPIC_API_KEY", "api_key_file"),
    "environment_key": CredentialSource("ANTHROPIC_ENVIRONMENT_KEY", "environment_key_file"),
    "webhook_secret": CredentialSource("ANTHROPIC_WEBHOOK_SIGNING_KEY", "webhook_secret_file"),
}
# What each credential looks like, for the command of its fix: a shape, never a value.
SHAPES = {"api_key": "sk-ant-api…", "environment_key": "sk-ant-envkey…", "webhook_secret": "whsec_…"}


@dataclass(frozen=True)
class SetupInput:
    """What the checks are made from. `from_status` reads it from the app's status document; tests build it."""

    mode: str = "poll"  # "poll" | "webhook" (the effective mode)
    missing: frozenset[str] = frozenset()  # names of missing settings (status "missing")
    errors: tuple[str, ...] = ()  # setting errors (status "errors")
    sources: Mapping[str, CredentialSource] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    default_tier: str = "kernel"  # the tier agents without one get now (status "default_tier")
    docker: bool | None = None  # a Docker engine answered; None: not probed yet
    docker_reason: str | None = None
    image: str | None = None  # the sandbox image's tag
    image_id: str | None = None  # set once the image is there (built or found)
    image_error: str | None = None
    kernel: bool | None = None  # the kernel tier can run kernels; None: not probed yet
    isolation: str | None = None  # what kernels get: "bubblewrap" | "none"
    isolation_setting: str = "auto"  # KernelTier.isolation
    isolation_reason: str | None = None
    isolation_error: str | None = None
    egress_engine: str = "stopped"  # "running" | "stopped" | "not installed"
    egress_error: str | None = None
    base_url: str = "/"  # the Jupyter server's base URL, for the webhook route named in a fix

    @classmethod
    def from_status(cls, status: Mapping[str, Any], *, sources: Mapping[str, CredentialSource] | None = None,
                    base_url: str = "/") -> SetupInput:
        """The input from `CMAApp.status()` (the document of `GET cma/api/status`)."""
        tiers = status.get("tiers") or {}
        container = tiers.get("container") or {}
        kernel = tiers.get("kernel") or {}
        proxy = (status.get("egress") or {}).get("proxy") or {}
        return cls(
            mode=str(status.get("mode") or "poll"),
            missing=frozenset(status.get("missing") or ()),
            errors=tuple(str(e) for e in status.get("errors") or ()),
            sources=dict(sources or DEFAULT_SOURCES),
            default_tier=str(status.get("default_tier") or "kernel"),
            docker=container.get("available"),
            docker_reason=container.get("reason"),
            image=container.get("image"),
            image_id=container.get("image_id"),
            image_error=container.get("image_error"),
            kernel=kernel.get("available"),
            isolation=kernel.get("isolation"),
            isolation_setting=str(kernel.get("setting") or "auto"),
            isolation_reason=kernel.get("reason"),
            isolation_error=kernel.get("error"),
            egress_engine=str(proxy.get("engine") or "stopped"),
            egress_error=proxy.get("error"),
            base_url=base_url,
        )


@dataclass(frozen=True)
class Check:
    """One thing a session needs: whether it is there and, when not, the problem and the exact fix.

    `severity` is how bad it is when not ok: "error" (sessions cannot be served, or not as configured) or
    "warning" (they can, with less: no container tier, no network). `command` is the one line to run or
    put in the config; `docs` a page of the project's documentation.
    """

    id: str
    ok: bool
    severity: Severity
    title: str
    problem: str | None = None
    fix: str | None = None
    command: str | None = None
    docs: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "severity": self.severity, "title": self.title, "problem": self.problem,
                "fix": self.fix, "command": self.command, "docs": self.docs}


def setup_checks(facts: SetupInput) -> list[Check]:
    """Every check of `CHECK_IDS` that applies (webhook_secret in webhook mode only), in that order."""
    checks = [_environment_id(facts)]
    checks.append(_credential(facts, "environment_key", "Environment key", "environment key",
                              "the worker's credential for your self-hosted environment's work queue"))
    checks.append(_credential(facts, "api_key", "API key", "API key", "the control-plane credential, for creating agents and sessions"))
    if facts.mode == "webhook":
        checks.append(_credential(facts, "webhook_secret", "Webhook signing secret", "webhook signing secret",
                                  "what verifies the webhook deliveries"))
    checks += [_docker(facts), _sandbox_image(facts), _bubblewrap(facts), _egress_engine(facts), _settings(facts)]
    return checks


def setup_document(status: Mapping[str, Any], checks: list[Check], *, emulator: Mapping[str, Any],
                   can_start_emulator: bool) -> dict[str, Any]:
    """The answer of `GET cma/api/setup`: ready, mode, the emulator, and the checks."""
    return {
        "ready": bool(status.get("ready")),
        "mode": status.get("mode"),
        "emulator": {"running": bool(emulator.get("running")), "owned": bool(emulator.get("owned")), "url": emulator.get("url")},
        "can_start_emulator": can_start_emulator,
        "checks": [c.to_json() for c in checks],
    }


# ---------------------------------------------------------------------- the checks


def _environment_id(facts: SetupInput) -> Check:
    title = "Environment id"
    if "environment_id" not in facts.missing:
        return Check("environment_id", True, "error", title)
    return Check(
        "environment_id", False, "error", title,
        problem="No environment id is set, so this server serves no environment: no session can reach it.",
        fix="Create a self-hosted environment in the Console and give its id to the server: "
            "c.CMAApp.environment_id = \"env_…\" in jupyter_server_config.py (or --CMAApp.environment_id=env_…, "
            "or $ANTHROPIC_ENVIRONMENT_ID), then restart the server. Or try it with the local emulator.",
        command="export ANTHROPIC_ENVIRONMENT_ID=env_…",
        docs=DOCS_SETTINGS,
    )


def _credential(facts: SetupInput, name: str, title: str, noun: str, what: str) -> Check:
    if name not in facts.missing:
        return Check(name, True, "error", title)
    source = facts.sources.get(name) or DEFAULT_SOURCES[name]
    if source.file:
        problem = (f"The {noun} ({what}) is not available: the file {source.file} named by "
                   f"c.CMAApp.{source.file_setting} cannot be used (the settings check says why).")
    else:
        problem = f"The {noun} ({what}) is not set: the server reads it from ${source.env}, which is empty."
    fix = (f"Put it in the server's environment as {source.env} (or in a file only you can read, mode 0600, named by "
           f"c.CMAApp.{source.file_setting}), then restart the server. Or try it with the local emulator.")
    if name == "webhook_secret":
        fix = (f"Register {facts.base_url}cma/webhooks as a webhook for your environment's session events in the Console "
               f"and put its signing secret in the server's environment as {source.env} (or in a 0600 file named by "
               f"c.CMAApp.{source.file_setting}), then restart the server; or poll instead: c.CMAApp.mode = \"poll\".")
    command = f"chmod 600 {source.file}" if source.file else f"export {source.env}={SHAPES[name]}"
    return Check(name, False, "error", title, problem=problem, fix=fix, command=command, docs=DOCS_CREDENTIALS)


def _docker(facts: SetupInput) -> Check:
    title = "Docker engine"
    # Without Docker, sessions still run on the kernel tier; it is an error only when nothing else can serve them,
    # or when the container tier is the one sessions are meant to get.
    needed = facts.default_tier == "container" or facts.kernel is False
    severity: Severity = "error" if needed else "warning"
    if facts.docker:
        return Check("docker", True, severity, title)
    fix = ("Start a Docker engine this server's user can reach (or point the server at one: $DOCKER_HOST or "
           "c.ContainerTier.docker_url); the server looks again every minute.")
    if facts.docker is None:
        return Check("docker", False, severity, title, problem="The Docker engine has not been checked yet (the server checks it "
                     "when it starts and every minute).", fix=None, command=None, docs=DOCS_CONTAINER)
    reason = f" ({_detail(facts.docker_reason)})" if facts.docker_reason else ""
    effect = "sessions run on the kernel tier instead" if not needed else "no sandbox tier can serve sessions"
    return Check("docker", False, severity, title,
                 problem=f"No Docker engine answers{reason}, so the container tier cannot run: {effect}.",
                 fix=fix, command="sudo systemctl start docker", docs=DOCS_CONTAINER)


def _sandbox_image(facts: SetupInput) -> Check:
    title = "Sandbox image"
    severity: Severity = "error" if facts.default_tier == "container" else "warning"
    tag = f" {facts.image}" if facts.image else ""
    build = "jupyter cma build-image"
    if facts.image_id and not facts.image_error:
        return Check("sandbox_image", True, severity, title)
    if not facts.docker:  # the image's own error then only repeats that Docker does not answer
        return Check("sandbox_image", False, severity, title,
                     problem=f"The sandbox image{tag} cannot be looked for until a Docker engine answers; container "
                             "sessions need it.",
                     fix=f"Start the Docker engine first; the server then builds the image itself (ImageSettings.auto_build), "
                         f"or build it with `{build}`.", command=build, docs=DOCS_IMAGE)
    if facts.image_error:
        return Check("sandbox_image", False, severity, title,
                     problem=f"The sandbox image{tag} is not ready: {facts.image_error}",
                     fix=f"Build it with `{build}` (offline by default; add --online on a machine with a registry), "
                         "then restart the server.", command=build, docs=DOCS_IMAGE)
    return Check("sandbox_image", False, severity, title,
                 problem=f"The sandbox image{tag} is being looked for or built; container sessions wait for it.",
                 fix=f"Wait for the build (the server's log shows its progress), or build it yourself with `{build}`.",
                 command=build, docs=DOCS_IMAGE)


def _bubblewrap(facts: SetupInput) -> Check:
    title = "Kernel isolation (bubblewrap)"
    severity: Severity = "error" if facts.default_tier == "kernel" else "warning"
    install = "sudo apt-get install bubblewrap"
    if facts.isolation_setting == "none":
        return Check("bubblewrap", False, "warning", title,
                     problem="Kernel sessions run without isolation (c.KernelTier.isolation = \"none\"): the agent's code runs "
                             "as this server's user and sees everything it can.",
                     fix="Install bubblewrap and remove the KernelTier.isolation setting (its default, auto, isolates every "
                         "kernel), then restart the server.", command=install, docs=DOCS_ISOLATION)
    if facts.kernel and facts.isolation == "bubblewrap":
        return Check("bubblewrap", True, severity, title)
    if facts.kernel is False:
        why = facts.isolation_error or facts.isolation_reason or "bubblewrap does not work here"
        return Check("bubblewrap", False, severity, title,
                     problem=f"Kernel sessions are refused: kernels run isolated or not at all, and {why}",
                     fix="Install bubblewrap and allow unprivileged user namespaces (Debian and Ubuntu do by default; "
                         "sysctl kernel.unprivileged_userns_clone=1 elsewhere); the server looks again every minute.",
                     command=install, docs=DOCS_ISOLATION)
    return Check("bubblewrap", False, severity, title,
                 problem="Kernel isolation has not been checked yet (the server checks it when it starts).",
                 docs=DOCS_ISOLATION)


def _egress_engine(facts: SetupInput) -> Check:
    title = "Egress proxy engine"
    # The container tier's worker reaches the API only through the proxy; the kernel tier serves sessions without it,
    # but their sandboxes have no network at all (fail closed).
    severity: Severity = "error" if facts.default_tier == "container" else "warning"
    install = "jupyter cma install-egress-engine"
    if facts.egress_engine == "running":
        return Check("egress_engine", True, severity, title)
    if facts.egress_engine == "not installed":
        return Check("egress_engine", False, severity, title,
                     problem="The egress proxy's engine is not installed: sandboxes have no network access at all, and the "
                             "container tier cannot serve sessions.",
                     fix=f"Install it with `{install}` (mitmproxy, in an environment of its own), then restart the server.",
                     command=install, docs=DOCS_ENGINE)
    why = f" ({facts.egress_error})" if facts.egress_error else " yet"
    return Check("egress_engine", False, severity, title,
                 problem=f"The egress proxy's engine is not running{why}: sandboxes have no network access until it does.",
                 fix="The server starts it again by itself; if it keeps stopping, read the server's log (lines starting "
                     "\"egress engine:\"), and reinstall it if needed.", command=install, docs=DOCS_ENGINE)


def _settings(facts: SetupInput) -> Check:
    title = "Settings"
    if not facts.errors:
        return Check("settings", True, "error", title)
    n = len(facts.errors)
    return Check("settings", False, "error", title,
                 problem=f"{n} setting{'s' if n > 1 else ''} cannot be used: " + "; ".join(facts.errors),
                 fix="Correct each setting named (in jupyter_server_config.py, the command line or the environment), "
                     "then restart the server.", command=None, docs=DOCS_SETTINGS)


def _detail(reason: str) -> str:
    """The probe's reason without what the check says anyway ("no Docker engine answers: X; start one …" → "X")."""
    prefix = "no Docker engine answers: "
    detail = reason[len(prefix):] if reason.startswith(prefix) else reason
    return detail.split("; start one", 1)[0]
