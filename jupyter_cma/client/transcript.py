"""A session's events as a transcript: items (messages, tool calls with their results, errors), grouped in turns,
and rendered as text or as HTML for a notebook's output.

Shared by `Session` (its `transcript()`, `repr` and `_repr_html_`), `Session.wait(display=True)` and the `%%cma`
magic. It reads events as the REST API gives them (`GET cma/api/sessions/{id}/events`: plain JSON, oldest
first) and imports only the standard library: it runs in users' kernels.

The HTML escapes every text it shows and carries no script: an event's text is the model's or a tool's, and a
notebook renders HTML outputs as trusted.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Item", "TurnState", "items", "last_turn_text", "render_html", "render_text", "turn_state"]

ItemKind = Literal["user", "agent", "thinking", "tool", "error", "stop", "terminated"]

# Event types that answer a tool call, and the field naming the call they answer.
_RESULT_KEYS = {
    "user.tool_result": "tool_use_id",
    "user.custom_tool_result": "custom_tool_use_id",
    "agent.tool_result": "tool_use_id",
    "agent.mcp_tool_result": "mcp_tool_use_id",
}
_CALLS = {"agent.tool_use": "builtin", "agent.custom_tool_use": "custom", "agent.mcp_tool_use": "mcp"}
# Stop reasons that end a turn normally, or that are not an end at all.
_NOT_AN_END = {"requires_action"}
_BOOKKEEPING = {"session.usage", "session.updated"}
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]*$")
_MAX_TEXT = 20_000  # characters of one tool result or message shown in HTML; the rest is cut, saying so


@dataclass
class Item:
    """One entry of a transcript.

    `kind`: `user` / `agent` (a message: `text`), `thinking`, `tool` (a call: `name`, `input`, and once answered
    `result` — content blocks — and `is_error`; `pending` until then), `error` (a `session.error`: `text`),
    `stop` (a turn that ended otherwise than `end_turn`: `text` is the stop reason), `terminated`.
    `turn` counts user messages: items before the first one are turn 0.
    """

    kind: ItemKind
    turn: int
    text: str = ""
    name: str | None = None
    input: Any = None
    result: list[dict[str, Any]] | None = None
    is_error: bool = False
    tool_type: str | None = None  # builtin, custom (notebook and server tools are custom) or mcp
    event_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """A tool call with no result yet."""
        return self.kind == "tool" and self.result is None

    @property
    def result_text(self) -> str:
        """The text blocks of a tool call's result, joined ('' before it is answered)."""
        return blocks_text(self.result or [])


def blocks_text(content: Any) -> str:
    """The text of content blocks (a string stays as it is); other blocks are named in brackets."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if not isinstance(block, Mapping):
            parts.append(str(block))
        elif block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "search_result":
            parts.append(blocks_text(block.get("content")))
        else:
            parts.append(f"[{block.get('type', 'block')}]")
    return "\n".join(parts)


def items(events: Iterable[Mapping[str, Any]]) -> list[Item]:
    """The transcript of a session's events (oldest first): each call holds the result that answered it."""
    out: list[Item] = []
    calls: dict[str, Item] = {}
    turn = 0
    for event in events:
        kind = event.get("type")
        if kind == "user.message":
            turn += 1
            out.append(Item("user", turn, blocks_text(event.get("content")), event_id=event.get("id")))
        elif kind == "agent.message":
            out.append(Item("agent", turn, blocks_text(event.get("content")), event_id=event.get("id")))
        elif kind == "agent.thinking":
            out.append(Item("thinking", turn, event_id=event.get("id")))
        elif kind in _CALLS:
            call = Item("tool", turn, name=str(event.get("name") or "?"), input=event.get("input"),
                        tool_type=_CALLS[kind], event_id=event.get("id"),
                        extra={"server": event.get("mcp_server_name")} if kind == "agent.mcp_tool_use" else {})
            out.append(call)
            if event.get("id"):
                calls[str(event["id"])] = call
        elif kind in _RESULT_KEYS:
            call = calls.get(str(event.get(_RESULT_KEYS[kind])))
            if call is not None and call.result is None:  # the first answer stands, as upstream
                content = event.get("content")
                call.result = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
                call.is_error = bool(event.get("is_error"))
        elif kind == "user.tool_confirmation" and event.get("result") not in (None, "allow"):
            call = calls.get(str(event.get("tool_use_id")))
            if call is not None and call.result is None:
                call.result = [{"type": "text", "text": str(event.get("deny_message") or "denied")}]
                call.is_error = True
        elif kind == "session.error":
            error = event.get("error") or {}
            retry = (error.get("retry_status") or {}).get("type")
            text = str(error.get("message") or error.get("type") or "error")
            out.append(Item("error", turn, text, event_id=event.get("id"), extra={"retry_status": retry}))
        elif kind == "session.status_idle":
            reason = (event.get("stop_reason") or {}).get("type")
            if reason and reason != "end_turn" and reason not in _NOT_AN_END:
                details = event.get("stop_details") or {}
                out.append(Item("stop", turn, str(reason), event_id=event.get("id"),
                                extra={"explanation": details.get("explanation") or details.get("category")}))
        elif kind in ("session.status_terminated", "session.deleted"):
            out.append(Item("terminated", turn, str(kind), event_id=event.get("id")))
    return out


# ---------------------------------------------------------------------- where the latest turn stands


@dataclass(frozen=True)
class TurnState:
    """Where a session stands after its latest user message.

    `state`: `none` (no user message yet), `running`, `requires_action` (the session waits for tool results:
    `waiting_for` names the calls), `done` (idle with `end_turn`), `stopped` (idle with another stop reason:
    `reason`), `error` (a `session.error` that is not being retried: `reason` is its message) or `terminated`.
    """

    state: Literal["none", "running", "requires_action", "done", "stopped", "error", "terminated"]
    user_messages: int
    reason: str = ""
    waiting_for: tuple[str, ...] = ()


def turn_state(events: list[Mapping[str, Any]]) -> TurnState:
    """Where the latest turn stands: the last event decides, counting only what came after the last user message."""
    last_user = max((i for i, e in enumerate(events) if e.get("type") == "user.message"), default=-1)
    users = sum(1 for e in events if e.get("type") == "user.message")
    if last_user < 0:
        return TurnState("none", 0)
    since = events[last_user + 1:]
    for event in since:
        if event.get("type") in ("session.status_terminated", "session.deleted"):
            return TurnState("terminated", users, "the session was terminated")
    for event in since:
        if event.get("type") == "session.error":
            error = event.get("error") or {}
            if (error.get("retry_status") or {}).get("type") != "retrying":
                return TurnState("error", users, str(error.get("message") or error.get("type") or "session error"))
    # The turn's end is the last event: anything after an idle (a result, a resumption) means it runs again.
    # Bookkeeping events that may follow an idle (usage, metadata) say nothing about the turn.
    telling = [e for e in since if e.get("type") not in _BOOKKEEPING]
    last = telling[-1] if telling else None
    if last is not None and last.get("type") == "session.status_idle":
        reason = (last.get("stop_reason") or {}).get("type") or ""
        if reason == "end_turn":
            return TurnState("done", users, reason)
        if reason == "requires_action":
            names = {str(e.get("id")): str(e.get("name")) for e in since if e.get("type") in _CALLS}
            ids = (last.get("stop_reason") or {}).get("event_ids") or []
            return TurnState("requires_action", users, reason, tuple(names.get(str(i), str(i)) for i in ids))
        details = last.get("stop_details") or {}
        explanation = details.get("explanation") or details.get("category")
        return TurnState("stopped", users, f"{reason}: {explanation}" if explanation else reason)
    return TurnState("running", users)


def last_turn_text(events: list[Mapping[str, Any]]) -> str:
    """The text of the agent's messages after the last user message, joined by blank lines."""
    last_user = max((i for i, e in enumerate(events) if e.get("type") == "user.message"), default=-1)
    texts = [blocks_text(e.get("content")) for e in events[last_user + 1:] if e.get("type") == "agent.message"]
    return "\n\n".join(t for t in texts if t)


# ---------------------------------------------------------------------- text


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in (text.splitlines() or [""]))


def render_text(transcript: list[Item], *, header: str = "") -> str:
    """The transcript as plain text (a session's `repr`, a terminal's view)."""
    lines = [header] if header else []
    for item in transcript:
        if item.kind == "user":
            lines.append(_indent(item.text, "user  ▸ ").rstrip())
        elif item.kind == "agent":
            lines.append(_indent(item.text, "agent ▸ ").rstrip())
        elif item.kind == "thinking":
            lines.append("agent ▸ (thinking)")
        elif item.kind == "tool":
            lines.append(f"tool  ▸ {item.name}({_json(item.input)})")
            if item.pending:
                lines.append("        … waiting for the result")
            else:
                mark = "✗ " if item.is_error else "→ "
                lines.append(_indent(item.result_text or "(no text)", "        " + mark).rstrip())
        elif item.kind == "error":
            lines.append(f"error ▸ {item.text}")
        elif item.kind == "stop":
            explanation = item.extra.get("explanation")
            lines.append(f"stop  ▸ the turn ended: {item.text}" + (f" ({explanation})" if explanation else ""))
        elif item.kind == "terminated":
            lines.append("end   ▸ the session was terminated")
    return "\n".join(lines)


# ---------------------------------------------------------------------- HTML

_STYLE = {
    "box": "font-family:var(--jp-ui-font-family,sans-serif);font-size:13px;line-height:1.4;max-width:100%",
    "head": "color:#666;margin-bottom:4px",
    "user": "background:#eef4ff;border-left:3px solid #4a78d0;padding:4px 8px;margin:4px 0;white-space:pre-wrap",
    "agent": "background:#f4f4f4;border-left:3px solid #888;padding:4px 8px;margin:4px 0;white-space:pre-wrap",
    "tool": "border:1px solid #ddd;border-radius:3px;padding:4px 8px;margin:4px 0",
    "tool_error": "border:1px solid #d33;background:#fff0f0;border-radius:3px;padding:4px 8px;margin:4px 0",
    "pre": "margin:2px 0;padding:4px;background:#fafafa;white-space:pre-wrap;max-height:24em;overflow:auto",
    "pre_error": "margin:2px 0;padding:4px;background:#ffe3e3;color:#900;white-space:pre-wrap;max-height:24em;overflow:auto",
    "error": "background:#ffe3e3;border-left:3px solid #d33;color:#900;padding:4px 8px;margin:4px 0",
    "muted": "color:#888;font-style:italic;margin:2px 0",
    "img": "max-width:100%;max-height:32em;display:block;margin:2px 0",
}


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cut(text: str) -> str:
    if len(text) <= _MAX_TEXT:
        return text
    return text[:_MAX_TEXT] + f"\n… ({len(text) - _MAX_TEXT} more characters; session.events has all of it)"


def _block_html(block: Any, error: bool) -> str:
    pre = _STYLE["pre_error" if error else "pre"]
    if not isinstance(block, Mapping):
        return f'<pre style="{pre}">{_esc(_cut(str(block)))}</pre>'
    kind = block.get("type")
    if kind == "text":
        return f'<pre style="{pre}">{_esc(_cut(str(block.get("text", ""))))}</pre>'
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            media, data = str(source.get("media_type", "")), str(source.get("data", ""))
            # Only an image type and base64 characters go into the attribute: nothing else can ride along.
            if media in _IMAGE_TYPES and _BASE64.match(data) and _valid_base64(data):
                return f'<img style="{_STYLE["img"]}" alt="image" src="data:{media};base64,{"".join(data.split())}">'
            return f'<div style="{_STYLE["muted"]}">[an image of type {_esc(media or "?")} that cannot be shown]</div>'
        if source.get("type") == "url" and str(source.get("url", "")).startswith(("https://", "http://")):
            return f'<img style="{_STYLE["img"]}" alt="image" src="{_esc(source["url"])}">'
        return f'<div style="{_STYLE["muted"]}">[image: {_esc(_json(source))}]</div>'
    if kind == "document":
        source = block.get("source") or {}
        title = block.get("title") or "document"
        body = source.get("data") if source.get("type") == "text" else _json(source)
        return (f'<details><summary>{_esc(title)}</summary>'
                f'<pre style="{pre}">{_esc(_cut(str(body)))}</pre></details>')
    if kind == "search_result":
        return (f'<div>{_esc(block.get("title") or "")} <code>{_esc(block.get("source") or "")}</code></div>'
                f'<pre style="{pre}">{_esc(_cut(blocks_text(block.get("content"))))}</pre>')
    return f'<pre style="{pre}">{_esc(_cut(_json(block)))}</pre>'


def _valid_base64(data: str) -> bool:
    try:
        base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _item_html(item: Item) -> str:
    if item.kind == "user":
        return f'<div style="{_STYLE["user"]}"><b>user</b>\n{_esc(_cut(item.text))}</div>'
    if item.kind == "agent":
        return f'<div style="{_STYLE["agent"]}"><b>agent</b>\n{_esc(_cut(item.text))}</div>'
    if item.kind == "thinking":
        return f'<div style="{_STYLE["muted"]}">agent is thinking</div>'
    if item.kind == "tool":
        style = _STYLE["tool_error" if item.is_error else "tool"]
        where = {"builtin": "", "custom": "", "mcp": f' (MCP {_esc(item.extra.get("server") or "")})'}.get(item.tool_type or "", "")
        head = f'<b>tool</b> <code>{_esc(item.name)}</code>{where}'
        call = f'<pre style="{_STYLE["pre"]}">{_esc(_cut(json.dumps(item.input, indent=2, ensure_ascii=False, default=str)))}</pre>'
        if item.pending:
            result = f'<div style="{_STYLE["muted"]}">waiting for the result…</div>'
        else:
            label = '<b style="color:#c00">error</b>' if item.is_error else "result"
            blocks = "".join(_block_html(b, item.is_error) for b in item.result or []) or \
                f'<div style="{_STYLE["muted"]}">(empty)</div>'
            result = f"<div>{label}</div>{blocks}"
        return f'<div style="{style}">{head}<div>input</div>{call}{result}</div>'
    if item.kind == "error":
        retry = item.extra.get("retry_status")
        note = f" ({_esc(retry)})" if retry else ""
        return f'<div style="{_STYLE["error"]}"><b>session error</b>{note}: {_esc(item.text)}</div>'
    if item.kind == "stop":
        explanation = item.extra.get("explanation")
        more = f" — {_esc(explanation)}" if explanation else ""
        return f'<div style="{_STYLE["error"]}"><b>the turn ended</b>: {_esc(item.text)}{more}</div>'
    if item.kind == "terminated":
        return f'<div style="{_STYLE["error"]}"><b>the session was terminated</b></div>'
    return ""


def render_html(transcript: list[Item], *, header: str = "", footer: str = "") -> str:
    """The transcript as HTML: messages, each tool call with its input and result (text in <pre>, images shown,
    errors highlighted), every text escaped, no script."""
    head = f'<div style="{_STYLE["head"]}">{_esc(header)}</div>' if header else ""
    foot = f'<div style="{_STYLE["muted"]}">{_esc(footer)}</div>' if footer else ""
    body = "".join(_item_html(i) for i in transcript)
    if not transcript:
        body = f'<div style="{_STYLE["muted"]}">no messages yet</div>'
    return f'<div class="jupyter-cma-transcript" style="{_STYLE["box"]}">{head}{body}{foot}</div>'
