"""The egress engine: mitmproxy with jupyter-cma's policy in its hooks, in a process of its own.

`EgressProxy` (egress/proxy.py) starts it as::

    <engine python> -m jupyter_cma.egress.engine --control-fd N

from a Python environment of its own (mitmproxy pins versions of tornado,
h11 and cryptography that the Jupyter server must not share), watches it and
starts it again when it dies. The engine opens no listening socket itself:
over the control channel (a SOCK_SEQPACKET pair) the server sends the
settings, then each sandbox's *listening* Unix socket (SCM_RIGHTS) with who
that sandbox serves. The socket a connection arrives on is the sandbox's
identity; nothing the sandbox sends can claim another. Because the server
keeps the listening sockets, connections made while the engine restarts wait
in the socket's backlog instead of failing.

Every connection goes through mitmproxy's regular (forward) proxy layers with
these hooks, in this order:

1. `http_connect` / `requestheaders`: rate limit, then the policy decides on
   the requested *name* (no DNS yet). A CONNECT target is the destination of
   everything inside the tunnel; a request inside whose `Host` names another
   host is refused (421). A plain request's absolute URI is the destination;
   its `Host` must agree (421), and is rewritten from the URI.
2. Resolve → check → pin: the name is resolved once, every address must be
   globally routable (no loopback, private, link-local/metadata, CGNAT,
   unique-local, multicast, reserved, nor those embedded in IPv4-mapped,
   -compatible, NAT64 or 6to4 forms) unless the policy routes the name to an
   operator-declared private service. The request is re-targeted to the
   checked address, so nothing resolves it again (DNS rebinding).
3. `server_connect`: the last gate. An upstream connection opens only to an
   address step 2 approved for this client connection; anything else is
   refused. The TLS SNI toward upstream is forced to the CONNECT name.
4. `tls_clienthello`: a tunnel stays a plain byte pipe unless a rule needs
   to see inside (an injection, a method/path rule, the API placeholder
   swap); a ClientHello whose SNI names another host than the CONNECT is
   cut off.
5. Injections replace the client's header of that name, toward their exact
   target only; the worker's placeholder is swapped for the session's real
   token only on the calls its worker makes for its own work item (the
   system allowance, `policy.WorkerScope`); a request to the API host that
   carries the placeholder and is not one of them is refused
   (`api:outside-worker-scope`). The scope learns the session's skills and
   memory stores from the API's answer to the worker's retrieve of its session.
6. One log record per request goes back to the server, and exactly one: a
   refusal (a limit, a parse failure, a policy) is one `denied` record naming
   what refused it, and nothing of a refused request is logged again. A plain
   tunnel and a WebSocket are one record each, written when they end (bytes
   both ways); the engine reports each when it opens, so that the server can
   write the record of one still open when the engine dies (`EgressProxy`).
   Whatever a limit cuts (a connection's time, idleness, a WebSocket message
   too large, a body too large) is recorded `denied` with that limit's rule.

The internal route: a plain-http request to `cma.internal` (port 80, GET or
POST) is answered by the server's tool registry, never by an upstream. It is
recognised right after the rate limit and bypasses the policy: no decision,
no DNS, no approved address (so `server_connect` could not open anything for
it). Its body (at most 1 MiB) is read whole, then the `request` hook sends it
over the control channel with the *sandbox id of the socket* the connection
came in on; the server finds the session from its own attachment of that
socket, never from anything in the request, and answers. A CONNECT to the
name, another port or https is refused.

Any exception in a hook refuses the request (fail closed): mitmproxy would
otherwise log the error and carry on. Limits: header bytes and time, body
size, WebSocket message size, idle and total connection time, connections
per sandbox and in all, requests per second per sandbox.

Only the standard library, mitmproxy (and wsproto, its WebSocket library),
and the light modules of jupyter_cma (egress.policy, egress.secrets,
egress.channel, egress.log.clean_path, store) are imported here: the
engine's environment has nothing else, and `EgressProxy` puts only
jupyter_cma itself on its path.

The modules
-----------
`Engine` (core) is mitmproxy's master plus one addon, assembled from parts
that share its state, one module each:

- `hooks`: the mitmproxy hooks, where the policy decides (steps 1 to 5).
- `internal_route`: calls to cma.internal, answered by the server.
- `records`: the one log record per request (step 6).
- `refusals`: `Refused`, `fail_closed`, and how a refusal is answered.
- `serving`: the attached sockets' servers, a connection handed to mitmproxy.
- `control`: the engine's end of the control channel.
- `sweeper`: the time limits, and plain tunnels re-decided after a policy change.

and what they use: `addresses` (resolve, check, pin), `connections`
(`AttachedSandbox`, `Conn`, `Tunnel`), `streams` (counting reader and writer),
`layers` (`ClosedLayer`, `BoundedWebsocketLayer`), `limits`, `names`.
`__main__` is the process's entry point.
"""

from __future__ import annotations

from .core import Engine

__all__ = ["Engine"]
