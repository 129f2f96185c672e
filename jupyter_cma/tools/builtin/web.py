"""The web built-ins: `web_fetch` (a page as markdown) and `call_service` (a private service of the session's policy).

Both run in the Jupyter server and reach the network only through `ToolEgress`, as the session that calls
them: the session's egress policy decides each request (each redirect hop too), the egress log gets the
rows under the session's id, and the policy's injections add their secrets on the way out. A refusal comes
back to the model as a tool error naming the policy's rule and reason.

`web_fetch` turns HTML into markdown with trafilatura (main content, boilerplate such as navigation and
footers left out); other text is passed through; both are capped. `call_service` calls a name the operator
declared under the policy's `private_services`, never an arbitrary URL: the injected credentials reach the
service, and what it answers is scrubbed of them (`ToolEgress.scrub`, best effort) in case it echoes them.
Both tools' results pass through that scrub: a page too can reflect what a request carried.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from traitlets import Int, Unicode

from ..._version import __version__
from ...egress.policy.hosts import DEFAULT_PORTS, display_host
from ...egress.policy.rules import FORBIDDEN_INJECTION_HEADERS, HTTP_METHOD
from .base import BuiltinFamily, CallContext, Content, ServerParts, ToolError, ToolSpec
from .egress import EgressRefused, public_url

if TYPE_CHECKING:
    from ...egress.policy.resolution import EffectivePolicy
    from ...egress.policy.rules import PrivateService

REDIRECTS = (301, 302, 303, 307, 308)
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Content types passed through as text besides text/*.
TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-javascript",
              "application/ld+json", "application/rss+xml", "application/atom+xml", "application/x-ndjson",
              "application/yaml", "application/x-yaml", "application/toml", "application/csv", "application/sql")
DEFAULT_USER_AGENT = f"jupyter-cma/{__version__} (built-in tool; fetches on behalf of an agent session)"
# The answer's headers call_service shows; everything else (cookies, the server's internals) stays out.
SHOWN_HEADERS = ("content-type", "content-length", "content-encoding", "content-language", "location", "retry-after",
                 "etag", "last-modified", "cache-control", "expires", "link", "allow", "www-authenticate",
                 "x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _bind_scrub(parts: ServerParts) -> None:
    """`ToolEgress.scrub` reads the session's injections: give it the server's resolver and secrets if nobody has."""
    if parts.egress.policies is None or parts.egress.secrets is None:
        parts.egress.bind(policies=parts.policies, secrets=parts.secrets)


def _is_text(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in TEXT_TYPES or content_type.endswith(("+json", "+xml"))


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _charset(response: httpx.Response) -> str | None:
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", response.headers.get("content-type", ""), re.I)
    return match.group(1) if match else None


def _decode(data: bytes, charset: str | None) -> str:
    for encoding in (charset, "utf-8"):
        if encoding:
            try:
                return data.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                continue
    return data.decode("latin-1")


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The (decoded) body up to `limit` bytes, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _cap(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


def _net_error(exc: httpx.HTTPError, what: str) -> ToolError:
    """A transport failure in words (never the request's headers)."""
    if isinstance(exc, httpx.TimeoutException):
        return ToolError(f"{what} timed out ({type(exc).__name__}); try again, or a smaller page")
    if isinstance(exc, httpx.ProxyError):
        return ToolError(f"the egress proxy could not open a connection for {what} ({exc}); check the URL and try again")
    return ToolError(f"{what} failed: {type(exc).__name__}: {str(exc)[:300] or 'no answer'}")


def _extract(html: str | bytes, url: str) -> tuple[str | None, str, bool]:
    """(title, markdown, whether main content was found) of an HTML page; runs in a worker thread."""
    import trafilatura
    from lxml import html as lxml_html

    title = None
    try:
        tree = lxml_html.fromstring(html)
        # The page's own <title> first (trafilatura's metadata prefers a lone <h1>), then trafilatura's guess.
        title = " ".join((tree.findtext(".//title") or "").split()) or None
        if title is None:
            meta = trafilatura.extract_metadata(tree, default_url=url, extensive=False)
            title = meta.title if meta is not None else None
    except Exception:  # an unparseable page still gets trafilatura's own attempt below
        pass
    markdown = trafilatura.extract(html, url=url, output_format="markdown", include_links=True, include_tables=True,
                                   include_formatting=True, include_comments=False)
    if markdown and markdown.strip():
        return title, markdown.strip(), True
    text = trafilatura.html2txt(html) if html else ""  # no main content found: the page's text as it is
    return title, (text or "").strip(), False


class WebFetchTools(BuiltinFamily):
    """`web_fetch(url, max_chars?)`: a page through the session's egress policy, as markdown with its title and final URL."""

    name = "web_fetch"
    title = "Web fetch"
    summary = ("Fetches a web page as markdown (or text as it is) through the session's egress policy; runs in the "
               "Jupyter server, so each request, redirects included, is decided and logged as the session's.")
    requires = "the egress engine (hosts must be allowed by the session's egress policy)"

    max_download_bytes = Int(5 * 1024 * 1024, config=True, help="Most bytes of a page web_fetch downloads; the rest "
                             "is not read (default 5 MiB).")
    max_chars = Int(50_000, config=True, help="Most characters a web_fetch result holds, and the largest max_chars a "
                    "call may ask for; longer pages are cut with a note (default 50000).")
    max_redirects = Int(5, config=True, help="Redirects web_fetch follows, each through the session's egress policy; "
                        "one more is an error (default 5).")
    user_agent = Unicode(DEFAULT_USER_AGENT, config=True, help="The User-Agent header of web_fetch's requests "
                         "(default: jupyter-cma/<version> (built-in tool; …)).")

    async def start(self, parts: ServerParts) -> None:
        await super().start(parts)
        _bind_scrub(parts)

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("trafilatura") is None:  # not imported here: importing it takes half a second
            return "the trafilatura package is not installed; run `pip install 'trafilatura>=2.0,<3'` and restart the server"
        if self.parts is None:
            return "the server has not started its built-in tools"
        return self.parts.egress.unavailable()

    def tools(self, settings: Mapping[str, Any]) -> list[ToolSpec]:
        return [ToolSpec("web_fetch", (
            "Fetch a web page over http or https and return its main content as markdown, with its title and final "
            "URL (redirects are followed). Text that is not HTML (JSON, CSV, plain text) is returned as it is; images "
            "and other binary content are not. The request goes through this session's egress policy: a host it does "
            f"not allow is refused, with the reason. Results are cut at {self.max_chars} characters unless max_chars asks "
            "for fewer."), {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "The page's http:// or https:// URL."},
                "max_chars": {"type": "integer", "minimum": 1, "maximum": self.max_chars,
                              "description": f"At most this many characters of content (default and most: {self.max_chars})."},
            },
            "required": ["url"],
            "additionalProperties": False,
        })]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Content:
        if tool != "web_fetch":
            raise ToolError(f"the web_fetch built-in has no tool {tool!r}; call web_fetch")
        url = _check_url(input.get("url"))
        limit = input.get("max_chars", self.max_chars)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ToolError(f"max_chars must be a positive integer (at most {self.max_chars}); leave it out for the default")
        limit = min(limit, self.max_chars)
        socket_path = await ctx.egress.socket_path(ctx.session_id)
        try:
            async with ctx.egress.http_client(ctx.session_id, socket_path, timeout=self.timeout) as client:
                page = await self._fetch(client, url, limit)
        except ToolError as error:
            # A redirect's Location, a reason phrase: what a site answered may reflect what the request carried.
            raise ToolError(ctx.egress.scrub(ctx.session_id, str(error))) from None
        return ctx.egress.scrub(ctx.session_id, page)

    async def _fetch(self, client: httpx.AsyncClient, url: str, limit: int) -> str:
        # Connection: close: a call's client goes with the call, so the proxy's connection upstream should go too
        # (a kept-alive one would stay open in the engine until the upstream or the proxy's idle timeout ends it).
        headers = {"User-Agent": self.user_agent, "Connection": "close",
                   "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.5"}
        current, hops = url, 0
        while True:
            try:
                async with client.stream("GET", current, headers=headers) as response:
                    if response.status_code in REDIRECTS and response.headers.get("location"):
                        hops += 1
                        if hops > self.max_redirects:
                            raise ToolError(f"{url} redirected more than {self.max_redirects} times (last to {current}); "
                                            "fetch the last URL directly if it is the page you want")
                        current = _check_url(str(response.url.join(response.headers["location"])), redirect_from=current)
                        continue
                    return await self._page(response, url, current, limit)
            except EgressRefused as refused:
                if current != url:
                    raise ToolError(f"{refused} (reached by a redirect from {url})") from None
                raise
            except httpx.HTTPError as exc:
                raise _net_error(exc, f"fetching {current}") from None

    async def _page(self, response: httpx.Response, url: str, final: str, limit: int) -> str:
        status = response.status_code
        if status >= 400 or status < 200 or status in REDIRECTS:
            raise ToolError(f"{final} answered HTTP {status} {response.reason_phrase}".rstrip()
                            + ("" if status >= 400 else " without a page"))
        media = _media_type(response)
        if media and media not in HTML_TYPES and not _is_text(media):
            size = response.headers.get("content-length")
            raise ToolError(f"{final} is {media}{f' ({size} bytes)' if size else ''}, not a page or text; web_fetch "
                            "returns pages and text only")
        data, cut_download = await _read_capped(response, self.max_download_bytes)
        charset = _charset(response)
        is_html = media in HTML_TYPES or (not media and data.lstrip()[:1] == b"<")
        title: str | None = None
        if is_html:
            # trafilatura detects the encoding of bytes itself when the answer names none.
            html: str | bytes = _decode(data, charset) if charset else data
            title, content, main = await asyncio.to_thread(_extract, html, final)
            if not content:
                content = "(the page has no readable text)"
            elif not main:
                content = "(no main content found; the page's text follows)\n\n" + content
        else:
            content = _decode(data, charset)
        content, cut = _cap(content, limit)
        lines = [f"Title: {title}" if title else "Title: (none)", f"URL: {final}"]
        if final != url:
            lines.append(f"Requested: {url}")
        lines.append(f"Content-Type: {media or 'unknown'}")
        out = "\n".join(lines) + "\n\n" + content
        notes = []
        if cut:
            notes.append(f"cut at {limit} characters" + ("" if limit >= self.max_chars else
                                                            f"; ask with a larger max_chars (at most {self.max_chars}) for more"))
        if cut_download:
            notes.append(f"the download stopped at {self.max_download_bytes} bytes (WebFetchTools.max_download_bytes)")
        if notes:
            out += "\n\n[" + "; ".join(notes) + "]"
        return out


def _check_url(value: object, *, redirect_from: str | None = None) -> str:
    """A URL web_fetch may request (`public_url`'s rules), without its fragment (never sent)."""
    try:
        checked = public_url(value)  # type: ignore[arg-type]  # anything but a str is refused there
    except ToolError as error:
        if redirect_from is not None:
            raise ToolError(f"{redirect_from} redirected to {str(value)[:200]!r}, which web_fetch does not follow: {error}") from None
        raise ToolError(f"web_fetch: {error}") from None
    return str(httpx.URL(checked).copy_with(fragment=None))


class ServiceTools(BuiltinFamily):
    """`call_service(name, method, path, body?, headers?)`: a private service of the session's egress policy, through it."""

    name = "call_service"
    title = "Private services"
    summary = ("Calls a private service the operator declared in the session's egress policy, by name; the policy's "
               "injected credentials are added by the egress proxy and never shown. Runs in the Jupyter server.")
    requires = "the egress engine, and private services in the session's egress policy"

    max_request_bytes = Int(1024 * 1024, config=True, help="Largest request body call_service sends (default 1 MiB).")
    max_download_bytes = Int(5 * 1024 * 1024, config=True, help="Most bytes of a service's answer call_service reads "
                             "(default 5 MiB).")
    max_chars = Int(50_000, config=True, help="Most characters of a service's answer body in a call_service result; "
                    "longer bodies are cut with a note (default 50000).")
    user_agent = Unicode(DEFAULT_USER_AGENT, config=True, help="The User-Agent header of call_service's requests, unless "
                         "the call sets one (default: jupyter-cma/<version> (built-in tool; …)).")

    async def start(self, parts: ServerParts) -> None:
        await super().start(parts)
        _bind_scrub(parts)

    def unavailable(self) -> str | None:
        if self.parts is None:
            return "the server has not started its built-in tools"
        return self.parts.egress.unavailable()

    def tools(self, settings: Mapping[str, Any]) -> list[ToolSpec]:
        return [ToolSpec("call_service", (
            "Call a private service declared by the operator in this session's egress policy, by its name (such as "
            "warehouse.internal), with an HTTP method and a path (which may hold a query string). Credentials the "
            "policy injects for that service are added on the way and never shown to you; do not send your own. Returns "
            "the answer's status, selected headers and body (JSON parsed when it is JSON). An unknown name is answered "
            "with the names this session may call."), {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The private service's name as declared in the egress policy."},
                "method": {"type": "string", "description": "The HTTP method, such as GET or POST."},
                "path": {"type": "string", "description": "The path, starting with /, with any query string."},
                "body": {"description": "The request body: a JSON object or array (sent as application/json), or a string."},
                "headers": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Extra request headers (no credentials: the policy adds those)."},
            },
            "required": ["name", "method", "path"],
            "additionalProperties": False,
        })]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Content:
        if tool != "call_service":
            raise ToolError(f"the call_service built-in has no tool {tool!r}; call call_service")
        if self.parts is None:
            raise ToolError("the server has not started its built-in tools; try again shortly")
        policies = self.parts.policies
        effective = policies.resolve(policies.context_for(ctx.session_id))
        if effective.error is not None:
            raise ToolError(f"this session's egress policy cannot be used: {effective.error[1]}")
        service = self._service(effective, input.get("name"))
        method = str(input.get("method") or "").strip().upper()
        if not HTTP_METHOD.fullmatch(method) or method == "CONNECT":
            raise ToolError(f"method must be an HTTP method such as GET, POST, PUT, PATCH or DELETE; got {str(input.get('method'))[:40]!r}")
        scheme, port = self._endpoint(effective, service)
        url = self._url(scheme, service.name, port, input.get("path"))
        headers = self._headers(input.get("headers"))
        content = self._body(input.get("body"), headers)
        socket_path = await ctx.egress.socket_path(ctx.session_id)
        what = f"{method} {service.name_text}{_path_of(url)}"

        def scrub(text: str) -> str:
            # A service that echoes its request (an error page, a debug endpoint) must not hand the model the credential.
            return ctx.egress.scrub(ctx.session_id, text)

        async with ctx.egress.http_client(ctx.session_id, socket_path, timeout=self.timeout) as client:
            try:
                async with client.stream(method, url, headers=headers, content=content) as response:
                    data, cut_download = await _read_capped(response, self.max_download_bytes)
                    return self._answer(response, data, cut_download, scrub)
            except httpx.HTTPError as exc:
                raise _net_error(exc, what) from None

    def _service(self, effective: EffectivePolicy, name: object) -> PrivateService:
        record = effective.deciding
        services = record.policy.private_services if record is not None else ()
        wanted = name.strip().lower().rstrip("/") if isinstance(name, str) else ""
        for service in services:
            if wanted in (service.name_text.lower(), display_host(service.name).lower()):
                return service
        if not services:
            raise ToolError("this session's egress policy declares no private services, so there is nothing to call; an "
                            "operator adds them under private_services of the policy (docs/egress.md)")
        names = ", ".join(sorted(s.name_text for s in services))
        raise ToolError(f"no private service named {str(name)[:100]!r} in this session's egress policy; the available ones are: {names}")

    @staticmethod
    def _endpoint(effective: EffectivePolicy, service: PrivateService) -> tuple[str, int]:
        """The scheme and port to call: as declared; for a name declared without a scheme, the scheme its injection
        targets (so the credential reaches it), else plain http."""
        if service.scheme is not None:
            return service.scheme, service.port or DEFAULT_PORTS[service.scheme]
        record = effective.deciding
        inject = record.policy.inject if record is not None else ()
        for scheme in ("https", "http"):
            port = service.port or DEFAULT_PORTS[scheme]
            if any(rule.applies(scheme, service.name, port) for rule in inject):
                return scheme, port
        return "http", service.port or DEFAULT_PORTS["http"]

    @staticmethod
    def _url(scheme: str, host: str, port: int, path: object) -> str:
        if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
            raise ToolError(f"path must start with a single / (such as /v1/items?limit=10); got {str(path)[:200]!r}")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path) or "#" in path:
            raise ToolError("path must not hold spaces, control characters or a #fragment; percent-encode them")
        authority = display_host(host) + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")
        url = f"{scheme}://{authority}{path}"
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ToolError(f"path {path[:200]!r} does not make a valid URL ({exc})") from None
        if parsed.raw_host.decode("ascii").lower().strip("[]") != host.lower():  # nothing in the path may change where it goes
            raise ToolError(f"path {path[:200]!r} would change the request's host; send only a path and query")
        return url

    def _headers(self, given: object) -> dict[str, str]:
        if given is None:
            given = {}
        if not isinstance(given, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            raise ToolError('headers must be an object of header names to string values, such as {"Accept": "application/json"}')
        headers = {"User-Agent": self.user_agent, "Connection": "close"}  # one request per call (see WebFetchTools._fetch)
        for key, value in given.items():
            if key.lower() in FORBIDDEN_INJECTION_HEADERS or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", key):
                raise ToolError(f"header {key[:64]!r} cannot be set by call_service (framing, routing or not a header name); leave it out")
            if any(c in value for c in "\r\n\0"):
                raise ToolError(f"header {key!r} holds a line break; send one line")
            headers[key] = value
        return headers

    def _body(self, body: object, headers: dict[str, str]) -> bytes | None:
        if body is None:
            return None
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif isinstance(body, str):
            data = body.encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "text/plain; charset=utf-8"
        else:
            data = json.dumps(body).encode()  # a number or a boolean: JSON text
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        if len(data) > self.max_request_bytes:
            raise ToolError(f"the body is {len(data)} bytes; call_service sends at most {self.max_request_bytes}")
        return data

    def _answer(self, response: httpx.Response, data: bytes, cut_download: bool, scrub: Callable[[str], str]) -> str:
        media = _media_type(response)
        headers = {k: scrub(response.headers[k]) for k in SHOWN_HEADERS if k in response.headers}
        body: Any
        notes = []
        if not data:
            body = ""
        elif media and not _is_text(media) and media not in HTML_TYPES:
            body = None
            notes.append(f"the body is {len(data)} bytes of {media}, not shown")
        else:
            text = scrub(_decode(data, _charset(response)))
            body = text
            if media == "application/json" or media.endswith("+json"):
                try:
                    body = json.loads(text)
                except ValueError:
                    pass
            if not isinstance(body, str) and len(json.dumps(body)) > self.max_chars:
                body = text  # too large to show whole: cut as text below
            if isinstance(body, str):
                body, cut = _cap(body, self.max_chars)
                if cut:
                    notes.append(f"the body is cut at {self.max_chars} characters")
        if cut_download:
            notes.append(f"the answer was read up to {self.max_download_bytes} bytes (ServiceTools.max_download_bytes)")
        answer: dict[str, Any] = {"status": response.status_code, "reason": scrub(response.reason_phrase), "headers": headers,
                                  "body": body}
        if notes:
            answer["notes"] = notes
        # Again on the whole: parsing JSON undoes escapes the scrub above may not know (a value written as \u0022…).
        return scrub(json.dumps(answer, indent=1, ensure_ascii=False))


def _path_of(url: str) -> str:
    parsed = httpx.URL(url)
    return parsed.raw_path.decode("ascii", "replace")
