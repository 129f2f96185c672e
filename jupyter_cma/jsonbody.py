"""Reading a JSON request body strictly, the one way every route does it.

The REST handlers (`web/base.py`) and the webhook ingest (`control/webhooks.py`)
both call `read_json`. Python's `json` module alone accepts more than JSON and
fails in more ways than `ValueError`: it takes `NaN`, `Infinity` and numbers
that overflow to infinity, keeps the last of duplicate keys, decodes bytes with
`surrogatepass`, takes integers of any width, and raises `RecursionError` on a
body nested a thousand levels deep. Here every such body is refused with a `JSONBodyError` that says what to
send instead, so a handler answers 4xx and never 500::

    try:
        payload = read_json(body, max_bytes=MAX_JSON_BYTES)
    except JSONBodyError as exc:
        return exc.status, {"message": exc.message}
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "JSONBodyError", "read_json"]

# Deeper than any document this API takes (a policy or an agent's input schema nests a handful of
# levels); the bound keeps the depth walk and everything after it far from Python's recursion limit.
MAX_DEPTH = 64
# What a REST body may weigh: an agent with 256 custom tools and long prompts fits many times over.
MAX_JSON_BYTES = 4 * 1024 * 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class JSONBodyError(ValueError):
    """A body that is not acceptable JSON; `status` is 400, or 413 when it is too large."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Refused(ValueError):
    """Raised from inside the parser's hooks: the message is ours, not the parser's."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf without passing through parse_constant
        raise _Refused("a number is too large; numbers must fit a 64-bit float")
    return value


def _integer(text: str) -> int:
    # Messages never quote the client's values (a secret may be among them). Checked on the text first: Python refuses to convert 4,300 digits or more (with advice meant for us,
    # not for the client), and SQLite stores nothing wider than 64 bits.
    value = int(text) if len(text) <= 20 else None
    if value is None or not INT64_MIN <= value <= INT64_MAX:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits does not fit 64 bits")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON; send a number or null")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # which key is looked for only when there is one
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the key {key[:64]!r} appears twice in one object; send each key once")
            seen.add(key)
    return obj


def _check_tree(value: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings that are not Unicode text (unpaired surrogates).

    Iterative, so the check itself cannot run out of stack; only containers and strings are visited.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise JSONBodyError(f"the body nests arrays and objects deeper than {MAX_DEPTH} levels; flatten it")
        children = node.items() if isinstance(node, dict) else ((None, v) for v in node)
        for key, child in children:
            if key is not None:
                _check_text(key)
            if isinstance(child, (dict, list, str)):
                stack.append((child, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # "\ud800" escapes decode to lone surrogates, which no store, log or upstream request can encode.
        raise JSONBodyError("a string holds an unpaired UTF-16 surrogate escape (such as \\ud800); send valid Unicode text") from None


def read_json(body: bytes | str, *, max_bytes: int | None = MAX_JSON_BYTES) -> Any:
    """The JSON value of `body`, or JSONBodyError saying what is wrong with it.

    Args:
        body: the raw request body (bytes are decoded as strict UTF-8; a BOM is refused).
        max_bytes: the largest body accepted, a larger one is refused with status 413; None when the
            caller has bounded the body already (the webhook route streams it against its own limit).
    """
    size = len(body) if isinstance(body, bytes) else len(body.encode("utf-8", "surrogatepass"))
    if max_bytes is not None and size > max_bytes:
        raise JSONBodyError(f"the body is larger than {max_bytes} bytes; send less", status=413)
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONBodyError("the body is not UTF-8 text; send JSON encoded as UTF-8") from None
    else:
        text = body
    if not text.strip():
        raise JSONBodyError("the body is empty; send a JSON document")
    try:
        value = json.loads(text, parse_float=_finite, parse_int=_integer, parse_constant=_constant, object_pairs_hook=_unique)
    except _Refused as exc:
        raise JSONBodyError(f"the body is not acceptable JSON: {exc}") from None
    except RecursionError:
        raise JSONBodyError(f"the body nests arrays and objects deeper than {MAX_DEPTH} levels; flatten it") from None
    except ValueError as exc:  # JSONDecodeError
        raise JSONBodyError(f"the body is not valid JSON ({exc}); send a JSON document") from None
    _check_tree(value)
    return value
