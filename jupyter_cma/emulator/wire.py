"""What every emulated resource shares on the wire: ids, timestamps, the error
shape, cursor pagination, `created_at[...]` filters and metadata.

These are the API's conventions, not any one resource's, so each resource
module (and `http.py`) takes them from here rather than from one another.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timezone
from typing import Any, Callable


def now_iso() -> str:
    """RFC 3339 UTC with microseconds, the format every timestamp here uses."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class ApiError(Exception):
    """An error response in the API's shape: `{"type":"error","error":{...}}`."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        error_code: str | None = None,
        details: dict[str, Any] | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.details = dict(details or {})
        if error_code:
            self.details["error_code"] = error_code
        self.should_retry = should_retry

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"type": "error", "error": error}


def bad_request(message: str, **kw: Any) -> ApiError:
    return ApiError(400, "invalid_request_error", message, **kw)


def not_found(kind: str, id_: str, code: str | None = None) -> ApiError:
    return ApiError(404, "not_found_error", f"No such {kind}: {id_}", error_code=code)


def conflict(message: str) -> ApiError:
    # The SDK retries 409 unless told not to; these conflicts never resolve by retrying.
    return ApiError(409, "conflict_error", message, should_retry=False)


# --------------------------------------------------------------------------- lists: pages, limits, created_at filters


def paginate(items: list[Any], limit: int, page: str | None) -> tuple[list[Any], str | None]:
    """Cursor pagination over a list; the cursor is an opaque offset."""
    start = 0
    if page:
        try:
            start = int(base64.urlsafe_b64decode(page.encode()).decode().removeprefix("o:"))
        except (ValueError, UnicodeDecodeError):
            raise bad_request("page is not a cursor this API returned; pass next_page unchanged") from None
    chunk = items[start : start + limit]
    end = start + len(chunk)
    nxt = base64.urlsafe_b64encode(f"o:{end}".encode()).decode() if end < len(items) else None
    return chunk, nxt


def clamp_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"limit must be an integer between 1 and {maximum}") from None
    if not 1 <= value <= maximum:
        raise bad_request(f"limit must be between 1 and {maximum}")
    return value


def compare_stamp(stamp: str, op: str, value: str) -> bool:
    """One `created_at[op]=value` filter of a list, applied to `stamp`."""
    ops: dict[str, Callable[[str, str], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    if op not in ops:
        raise bad_request(f"unknown comparison {op!r}; use gt, gte, lt or lte")
    return ops[op](_normal_stamp(stamp), _normal_stamp(value))


def _normal_stamp(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- metadata


def merge_metadata(patch: dict[str, Any], current: dict[str, str]) -> dict[str, str]:
    """`current` with `patch` applied: an empty or null value deletes its key."""
    if not isinstance(patch, dict):
        raise bad_request("metadata must be an object of string values", error_code="invalid_metadata")
    merged = dict(current)
    for key, value in patch.items():
        if value is None or value == "":
            merged.pop(key, None)
        elif not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise bad_request("metadata values must be strings (keys ≤ 64, values ≤ 512 characters)", error_code="invalid_metadata")
        else:
            merged[key] = value
    if len(merged) > 16:
        raise bad_request("metadata holds at most 16 pairs", error_code="invalid_metadata")
    return merged
