"""Egress control: policies (what a sandbox may reach) and secrets (what the proxy injects).

`policy` holds the model, its storage through `Store`, and resolution
(`PolicyResolver.resolve(context) -> EffectivePolicy`, then
`EffectivePolicy.decide(method, scheme, host, port, path) -> Decision`);
`secrets` holds the named secrets the proxy injects. Enforcement (the proxy
and the sandboxes' network isolation) builds on these.
"""

from .policy import (
    Decision,
    EffectivePolicy,
    EgressRequest,
    HostPattern,
    Injection,
    Policy,
    PolicyConflict,
    PolicyError,
    PolicyResolver,
    PolicyStore,
    PrivateService,
    SessionContext,
    load_middleware,
)
from .secrets import SecretInfo, SecretStore, SecretStoreError, SecretValueError

__all__ = [
    "Decision",
    "EffectivePolicy",
    "EgressRequest",
    "HostPattern",
    "Injection",
    "Policy",
    "PolicyConflict",
    "PolicyError",
    "PolicyResolver",
    "PolicyStore",
    "PrivateService",
    "SecretInfo",
    "SecretStore",
    "SecretStoreError",
    "SecretValueError",
    "SessionContext",
    "load_middleware",
]
