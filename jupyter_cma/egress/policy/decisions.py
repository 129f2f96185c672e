"""Decisions: one request as the policy sees it (`EgressRequest`), what to do with it (`Decision`), and middleware.

The operator's middleware (`CMAApp.egress_middleware`) sees each request and
its decision after the policies decided, and may replace it; `load_middleware`
imports it by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import PolicyError
from .hosts import DEFAULT_PORTS, SCHEME_FAMILY, display_host, normalize_host, parse_port
from .rules import HTTP_METHOD

if TYPE_CHECKING:
    from .rules import Injection, PrivateService
    from .scopes import SessionContext

@dataclass(frozen=True)
class Decision:
    """What the proxy does with one request.

    `rule` names the deciding rule in words a person can follow back to a
    policy (`policy:pol_…:deny:*.evil.com`, `system:api-host`,
    `default:no-policy`, `error:…`). A deny carries the HTTP `status` to answer
    and a `reason` to show the sandbox. Injections name secrets, never values.
    """

    action: Literal["allow", "deny"]
    rule: str
    injections: tuple[Injection, ...] = ()
    private_service: PrivateService | None = None
    status: int | None = None
    reason: str = ""
    policy_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @classmethod
    def allow(cls, rule: str, reason: str = "", **kw: Any) -> Decision:
        return cls("allow", rule, reason=reason, **kw)

    @classmethod
    def deny(cls, rule: str, reason: str, status: int = 403, **kw: Any) -> Decision:
        return cls("deny", rule, status=status, reason=reason, **kw)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "rule": self.rule,
            "reason": self.reason,
            "status": self.status,
            "policy_id": self.policy_id,
            "injections": [i.to_json() for i in self.injections],
            "private_service": self.private_service.to_json() if self.private_service else None,
        }


@dataclass(frozen=True)
class EgressRequest:
    """One request as the policy sees it: canonical host, explicit port, upper-case method.

    `path` is None for a CONNECT (the tunnel's requests are decided one by one).
    """

    context: SessionContext
    method: str
    scheme: str
    host: str
    port: int
    path: str | None
    websocket: bool = False

    @property
    def target(self) -> str:
        return f"{SCHEME_FAMILY[self.scheme]}://{display_host(self.host)}:{self.port}"

    @classmethod
    def parse(cls, context: SessionContext, method: object, scheme: object, host: object, port: object, path: object, websocket: bool = False) -> EgressRequest:
        if not isinstance(method, str) or not HTTP_METHOD.fullmatch(method.upper()):
            raise PolicyError(f"method {method!r} is not an HTTP method")
        if not isinstance(scheme, str) or scheme.lower() not in DEFAULT_PORTS:
            raise PolicyError(f"scheme {scheme!r} is not one of http, https, ws, wss")
        scheme = scheme.lower()
        canonical = normalize_host(host)
        port_value = DEFAULT_PORTS[scheme] if port is None else parse_port(port)
        if path is not None and not isinstance(path, str):
            raise PolicyError("path must be a string (or None for CONNECT)")
        method = method.upper()
        return cls(context, method, scheme, canonical, port_value, path, bool(websocket) or scheme in ("ws", "wss"))


# A middleware: `hook(request, decision) -> Decision | None`. Called after the
# policy decided (never for the system allowance, an unparseable request or a
# fail-closed error); None keeps the decision, a Decision replaces it (use
# `dataclasses.replace(decision, …)` to modify one). It runs on the proxy's
# request path: keep it fast and free of blocking I/O. Raising, or returning
# anything else, denies the request (`error:middleware:<name>`).
Middleware = Callable[[EgressRequest, Decision], "Decision | None"]


@dataclass(frozen=True)
class NamedMiddleware:
    name: str
    hook: Middleware


def load_middleware(names: Sequence[str]) -> list[NamedMiddleware]:
    """Import `package.module.callable` (or `package.module:callable`) for each name; PolicyError says which failed."""
    loaded = []
    for name in names:
        module_name, sep, attr = name.partition(":")
        if not sep:
            module_name, _, attr = name.rpartition(".")
        if not module_name or not attr:
            raise PolicyError(f"egress middleware {name!r} must be a dotted name such as 'mypackage.hooks.check'")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except Exception as exc:  # ImportError, AttributeError, or the module's own error
            raise PolicyError(f"egress middleware {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if not callable(target):
            raise PolicyError(f"egress middleware {name!r} is not callable")
        loaded.append(NamedMiddleware(name, target))
    return loaded
