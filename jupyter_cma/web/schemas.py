"""What each REST route accepts: one pydantic model per JSON body and per query string.

A handler reads its input through `CMAHandler.body(Model)` / `CMAHandler.query(Model)`
(`web/base.py`), which parse the body with `jsonbody.read_json` and validate here,
so a field of the wrong type or out of range is a 400 naming the field and what it
takes, before anything goes to Anthropic's API or into the store. Bodies are validated
strictly (`"5"` is not a number, unknown fields are refused, so a misspelt field is not
silently ignored); query strings are text, so their numbers are parsed from it.

What depends on this server's configuration (the tiers, their instance sizes) and the
egress policy documents (`egress/policy/document.py`, which validates its own) are checked by
the handlers after these models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
)

from ..egress.log import DECISIONS
from ..live import KINDS as LIVE_KINDS

__all__ = [
    "DEFAULT_MODEL", "ID_PATTERN", "SESSION_STATES", "AgentCreate", "AgentPatch", "AgentsQuery", "Body", "DecideBody", "DeliveriesQuery",
    "EgressLogQuery", "EmptyBody", "EventsQuery", "LiveSubscribe", "NotebookEditsQuery", "Query", "SecretPut", "SessionCreate", "SessionsQuery", "explain", "one_of",
]

ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"  # also the route table's pattern for ids in paths
_ID = re.compile(ID_PATTERN)
SESSION_STATES = ("claimed", "starting", "running", "idle", "sleeping", "resumed", "stopped", "failed", "ended")  # as Store.transition sets them
DEFAULT_MODEL = "claude-sonnet-4-5"
INT64_MAX = 2**63 - 1
LIVE_MAX_SESSIONS = 20  # sessions one live subscriber may watch (each costs the server an upstream stream)


def _an_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError("must be an id: 1-128 letters, digits, '_' or '-'")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def one_of(values: Iterable[str]) -> AfterValidator:
    """A validator for a text field whose allowed values are known at run time (e.g. egress/log.py's DECISIONS)."""
    allowed = tuple(values)

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {list(allowed)}")
        return value

    return AfterValidator(check)


def _comma_separated(value: Any) -> Any:
    return [part for part in value.split(",") if part] if isinstance(value, str) else value


Id = Annotated[str, AfterValidator(_an_id)]
NonBlank = Annotated[str, AfterValidator(_not_blank)]
# The API's limits on metadata (docs/cma-api-contract.md): at most 16 pairs, keys up to 64, values up to 512 characters.
Metadata = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], Annotated[str, StringConstraints(max_length=512)]],
    Field(max_length=16),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=0)]
# An upstream page cursor is opaque; this bounds what is passed on to a URL-safe token.
Cursor = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_=+/.:-]{1,1024}$")]
# An RFC 3339 time as the API writes processed_at, e.g. 2026-12-05T08:30:00.123456Z.
Stamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")]


class Body(BaseModel):
    """Base of the JSON bodies: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Query(BaseModel):
    """Base of the query strings: values are text, numbers are parsed from it; unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class EmptyBody(Body):
    """Routes that take no fields: no body, or `{}`."""


# ---------------------------------------------------------------------- agents


class InputSchema(BaseModel):
    """A custom tool's `input_schema`: a JSON Schema object; its own keywords are passed on as given."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    type: Literal["object"]
    properties: dict[str, Any] | None = None  # each a schema: an object, or true/false
    required: list[str] | None = None


class CustomTool(Body):
    """A custom tool the agent may call (the SDK's BetaManagedAgentsCustomToolParams)."""

    type: Literal["custom"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")] = Field(
        description="1-128 letters, digits, '_' or '-'")
    description: str
    input_schema: InputSchema


class NotebookToolRef(Body):
    """A tool a notebook kernel registered (`@cma.tool`), given to an agent by its kernel and name."""

    kernel_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F-]{1,64}$")] = Field(
        description="the id of a kernel of this server (GET cma/api/tools lists the notebook tools)")
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(
        description="1-64 letters, digits, '_' or '-'")


class NotebookToolPut(Body):
    """`PUT cma/api/kernels/{kernel_id}/tools/{name}`: what `@cma.tool` registers for its kernel."""

    description: str = Field(description="the tool's description, a string")
    input_schema: InputSchema
    timeout: float | None = Field(None, gt=0, le=140, description="seconds a call may take, more than 0 and at most 140 (the "
                                  "worker gives each tool call 150 s)")


class ModelConfig(Body):
    """A model with settings (the SDK's BetaManagedAgentsModelConfigParams); the API checks the values."""

    id: Annotated[NonBlank, StringConstraints(max_length=256)]
    effort: str | dict[str, str] | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None


def _model_kind(value: Any) -> str | None:
    return "name" if isinstance(value, str) else "config" if isinstance(value, (dict, ModelConfig)) else None


AgentModel = Annotated[
    Annotated[Annotated[NonBlank, StringConstraints(max_length=256)], Tag("name")] | Annotated[ModelConfig, Tag("config")],
    Discriminator(_model_kind, custom_error_type="model_kind",
                  custom_error_message='expected a model name such as "claude-sonnet-4-5", or {"id": …, "speed"?, "effort"?}'),
]


# An agent's built-in tool families: family name → its settings (each family checks its own; GET cma/api/tools shows
# every family's settings schema).
BuiltinName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Builtins = Annotated[dict[BuiltinName, dict[str, Any]], Field(max_length=32)]
BUILTINS_EXAMPLE = '{"web_fetch": {}, "notebook": {"mode": "edit", "paths": ["reports/**"]}}'


class AgentCreate(Body):
    """`POST cma/api/agents`."""

    name: Annotated[NonBlank, StringConstraints(max_length=256)] = Field(description="a non-empty string of at most 256 characters")
    tier: str | None = Field(None, description="a tier of this server (GET cma/api/status lists them); default: the server's")
    size: str | None = Field(None, description="an instance size of the agent's tier (GET cma/api/status)")
    model: AgentModel | None = Field(None, description=f'a model name, or {{"id": …}} (default "{DEFAULT_MODEL}")')
    system: str | None = Field(None, description="the system prompt, a string")
    description: str | None = Field(None, description="a string")
    metadata: Metadata | None = Field(None, description="at most 16 string values under keys of 1-64 characters")
    tools: list[CustomTool] = Field(
        default_factory=list, max_length=256,
        description='custom tools only: [{"type": "custom", "name", "description", "input_schema": {"type": "object", …}}]')
    notebook_tools: list[NotebookToolRef] = Field(
        default_factory=list, max_length=256,
        description='tools notebook kernels registered with @cma.tool: [{"kernel_id", "name"}]; they run in that kernel')
    builtins: Builtins = Field(
        default_factory=dict,
        description=f"built-in tool families to enable, each with its settings: {BUILTINS_EXAMPLE} (GET cma/api/tools lists them)")


class AgentPatch(Body):
    """`PATCH cma/api/agents/{id}`: at least one of these."""

    tier: str | None = Field(None, description="a tier of this server, or null for the server's default")
    size: str | None = Field(None, description="an instance size of the agent's tier")
    notebook_tools: list[NotebookToolRef] | None = Field(
        None, max_length=256, description='the agent\'s notebook tools, all of them: [{"kernel_id", "name"}] ([] for none)')
    builtins: Builtins | None = Field(
        None, description=f"the agent's built-in tool families, all of them: {BUILTINS_EXAMPLE} ({{}} for none)")


class AgentsQuery(Query):
    """`GET cma/api/agents`."""

    limit: int = Field(20, ge=1, le=100, description="an integer from 1 to 100")
    page: Cursor | None = Field(None, description="the previous page's next_page, unchanged")


# ---------------------------------------------------------------------- sessions


class SessionCreate(Body):
    """`POST cma/api/sessions`."""

    agent_id: Id = Field(description="the id of an agent (create one with POST cma/api/agents)")
    message: NonBlank | None = Field(None, description="the first message, non-empty text")
    title: str | None = Field(None, description="a string")
    metadata: Metadata | None = Field(
        None, description='string values such as {"team": "ml"} (at most 16, keys of 1-64 characters); egress policies can match on them')


class SessionMessage(Body):
    """`POST cma/api/sessions/{id}/messages`: a user message to the session."""

    text: NonBlank = Field(description="the message, non-empty text")


class SessionsQuery(Query):
    """`GET cma/api/sessions`."""

    status: Annotated[list[Annotated[str, one_of(SESSION_STATES)]], BeforeValidator(_comma_separated)] = Field(
        default_factory=list, description="states, comma-separated")
    agent_id: Id | None = None
    tier: str | None = Field(None, description="a tier of this server")
    limit: int = Field(50, ge=1, le=500, description="an integer from 1 to 500")
    before: FiniteFloat | None = Field(None, description="a number: the previous page's next_before")


class EventsQuery(Query):
    """`GET cma/api/sessions/{id}/events`."""

    limit: int = Field(100, ge=1, le=1000, description="an integer from 1 to 1000")
    page: Cursor | None = Field(None, description="the previous page's next_page, unchanged")
    after: Stamp | None = Field(None, description="an event's processed_at (RFC 3339): only events processed after it, oldest first")


class DeliveriesQuery(Query):
    """`GET cma/api/webhooks`."""

    limit: int = Field(50, ge=1, le=500, description="an integer from 1 to 500")
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="the previous page's next_before, a positive integer")


# ---------------------------------------------------------------------- egress


class DecideBody(Body):
    """`POST cma/api/egress/decide`."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=8192)] = Field(
        description="the request's absolute URL, such as https://pypi.org/simple/ (https://host:port for a CONNECT)")
    method: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z-]{0,31}$")] = Field(
        "GET", description="an HTTP method such as GET, POST or CONNECT")
    session_id: Id | None = None
    agent_id: Id | None = None
    metadata: Metadata | None = Field(None, description="string values, like a session's metadata")
    websocket: bool = Field(False, description="true or false")


class SecretPut(Body):
    """`PUT cma/api/egress/secrets/{name}`; the value's own rules are egress/secrets.py's."""

    value: str = Field(description="the secret, a string")


class EgressLogQuery(Query):
    """`GET cma/api/egress/log`."""

    session_id: Id | None = None
    agent_id: Id | None = None
    host: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(None, description="a host name")
    decision: Annotated[str, one_of(DECISIONS)] | None = None
    since: FiniteFloat | None = Field(None, description="a Unix time")
    until: FiniteFloat | None = Field(None, description="a Unix time")
    format: Literal["json", "jsonl"] = Field("json", description="json or jsonl")
    limit: int = Field(100, ge=1, le=1000, description="an integer from 1 to 1000")
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="the previous page's next_before, a positive integer")
    after: int | None = Field(None, ge=0, le=INT64_MAX, description="a row's id: only rows with a larger id, oldest first")


class NotebookEditsQuery(Query):
    """`GET cma/api/notebook-edits`."""

    session_id: Id | None = None
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        None, description="a notebook's path relative to the server's root")
    limit: int = Field(100, ge=1, le=1000, description="an integer from 1 to 1000")



class MailQuery(Query):
    """`GET cma/api/mail`."""

    session_id: Id | None = None
    limit: int = Field(100, ge=1, le=1000, description="an integer from 1 to 1000")

# ---------------------------------------------------------------------- live channel


class LiveEgressFilter(Body):
    """The `egress` part of a live `subscribe` message."""

    session_id: Id | None = Field(None, description="a session id: egress rows of that session only")


class LiveSubscribe(Body):
    """A client's message on `cma/api/live`: the filter that replaces the current one."""

    op: Literal["subscribe"] = Field(description='"subscribe"')
    kinds: list[Annotated[str, one_of(LIVE_KINDS)]] | None = Field(
        None, max_length=len(LIVE_KINDS), description=f"null for every kind, or a list of {list(LIVE_KINDS)}")
    sessions: list[Id] | None = Field(
        None, max_length=LIVE_MAX_SESSIONS,
        description=f"session ids whose session.event messages are wanted, at most {LIVE_MAX_SESSIONS}")
    egress: LiveEgressFilter | None = Field(None, description='null, or {"session_id": …} for that session\'s egress rows only')


# ---------------------------------------------------------------------- messages


# The discriminated union's tags appear in error locations; a message names the field without them.
_UNION_TAGS = {("model", "name"), ("model", "config")}


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def explain(model: type[BaseModel], exc: ValidationError, *, limit: int = 3) -> str:
    """One message for a failed validation: the first problem of each field (up to `limit` fields), each naming
    where it is and, from the field's description, what the field takes."""
    firsts: dict[str, tuple[tuple[int | str, ...], Any]] = {}
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(error["loc"])
        if loc[:2] in _UNION_TAGS:
            loc = loc[:1] + loc[2:]
        firsts.setdefault(str(loc[0]) if loc else "", (loc, error))
    problems = []
    for top, (loc, error) in list(firsts.items())[:limit]:
        field = _where(loc) or "the body"
        info = model.model_fields.get(top)
        # The model's union and a Literal's message say what is expected already.
        says_it = len(loc) == 1 and error["type"] in ("model_kind", "literal_error")
        expected = f" (expected {info.description})" if info is not None and info.description and not says_it else ""
        if error["type"] == "missing":
            problems.append(f"{field} is required{expected}")
        elif error["type"] == "extra_forbidden" and len(loc) == 1:
            fields = ", ".join(model.model_fields)
            problems.append(f"{field} is not a field here; the fields are {fields}" if fields
                            else f"{field} is not a field here: this route takes no body fields (send {{}} or nothing)")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message[:1].lower()}{message[1:]}{expected}")
    if len(firsts) > limit:
        problems.append(f"and problems with {len(firsts) - limit} more fields")
    return "; ".join(problems)
