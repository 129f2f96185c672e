"""What a notebook tool returns, as the tool result Anthropic's API takes: text, or content blocks.

Runs in users' kernels (`tools/notebook.py`): it imports pandas, matplotlib, PIL or numpy only when the
value is one of theirs (known by its type's module), so defining a tool stays cheap.

- `str` → as is (capped at `MAX_TEXT_CHARS`, with a note saying how much was cut);
- content blocks (`[{"type": "text", …}, {"type": "image", …}]`) → as they are, checked;
- PNG/JPEG/GIF/WebP `bytes`, a matplotlib figure (or axes), a PIL image, `IPython.display.Image`, anything
  with `_repr_png_`/`_repr_jpeg_` → an image block;
- a pandas DataFrame or Series → a text table of at most `MAX_ROWS` rows and `MAX_COLUMNS` columns, under a
  line with its shape;
- `None` → the text "None" (the tool ran and returned nothing; the model should see that it ran);
- JSON-able data (dicts, lists, numbers, bools; numpy scalars and arrays, datetimes, paths, sets,
  dataclasses and pydantic models converted) → JSON text, indented by 2 so a model reads nested data
  easily;
- a tuple → the blocks of each item in order (`return fig, "the caption"`);
- anything else → its `repr`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
from pathlib import PurePath
from typing import Any

__all__ = ["MAX_IMAGES", "MAX_IMAGE_BYTES", "MAX_TEXT_CHARS", "ToolResultError", "error_text", "to_content"]

MAX_TEXT_CHARS = 100_000
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Anthropic's limit per image
MAX_IMAGES = 20
MAX_ROWS, MAX_COLUMNS = 50, 20
MAX_ERROR_CHARS = 4_000
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"))


class ToolResultError(ValueError):
    """A return value that cannot be a tool result; the message says what to return instead."""


def to_content(value: Any) -> str | list[dict[str, Any]]:
    """The tool result for a tool's return value: a string, or a list of content blocks."""
    if isinstance(value, str):
        return _capped(value)
    if isinstance(value, tuple):
        blocks = [b for item in value for b in _blocks(item)]
        return _checked_count(blocks)
    if _is_blocks(value):
        return _checked_blocks(value)
    blocks = _blocks(value)
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return blocks[0]["text"]
    return _checked_count(blocks)


def error_text(exc: BaseException) -> str:
    """What a tool error tells the model: the exception's type and message, no traceback."""
    message = str(exc).strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " …"


# ---------------------------------------------------------------------- one value → blocks


def _blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [_text(_capped(value))]
    image = _image(value)
    if image is not None:
        return [image]
    module = type(value).__module__.split(".")[0]
    if module == "pandas" and type(value).__name__ in ("DataFrame", "Series"):
        return [_text(_table(value))]
    if value is None:
        return [_text("None")]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise ToolResultError(f"the tool returned {len(bytes(value))} bytes that are not a PNG, JPEG, GIF or WebP image: "
                              "decode them to text (e.g. data.decode()) or return an image")
    try:
        return [_text(_capped(json.dumps(value, ensure_ascii=False, indent=2, default=_jsonable, allow_nan=False)))]
    except (TypeError, ValueError):
        return [_text(_capped(repr(value)))]


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _capped(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n[… {len(text) - MAX_TEXT_CHARS:,} more characters cut: return less, or a summary]"


def _table(frame: Any) -> str:
    if type(frame).__name__ == "Series":
        shape = f"Series {frame.name!r}: {len(frame):,} values" if frame.name is not None else f"Series: {len(frame):,} values"
        shown = f" (showing {MAX_ROWS})" if len(frame) > MAX_ROWS else ""
        return f"{shape}{shown}\n{frame.to_string(max_rows=MAX_ROWS)}"
    rows, columns = frame.shape
    cut = []
    if rows > MAX_ROWS:
        cut.append(f"{MAX_ROWS} rows")
    if columns > MAX_COLUMNS:
        cut.append(f"{MAX_COLUMNS} columns")
    shown = f" (showing {' and '.join(cut)})" if cut else ""
    body = frame.to_string(max_rows=MAX_ROWS, max_cols=MAX_COLUMNS)
    return _capped(f"DataFrame: {rows:,} rows × {columns:,} columns{shown}\n{body}")


def _jsonable(value: Any) -> Any:
    """json.dumps's fallback for the common types that have an obvious JSON form."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        if hasattr(value, "tolist"):
            return value.tolist()  # scalars and arrays alike
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump") and module != "builtins":
        return value.model_dump(mode="json")
    raise TypeError(type(value).__name__)


# ---------------------------------------------------------------------- images


def _image(value: Any) -> dict[str, Any] | None:
    """An image block for an image-like value; None when it is not one."""
    data: bytes | None = None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if _media_type(data) is None:
            return None
    else:
        module = type(value).__module__.split(".")[0]
        name = type(value).__name__
        if module == "matplotlib" and name in ("Figure", "SubFigure") or (module == "matplotlib" and hasattr(value, "get_figure")):
            figure = value if name in ("Figure", "SubFigure") else value.get_figure()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
            data = buffer.getvalue()
        elif module == "PIL" and hasattr(value, "save"):
            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            data = buffer.getvalue()
        elif module == "IPython" and name == "Image" and isinstance(getattr(value, "data", None), bytes):
            data = value.data
        else:
            for method in ("_repr_png_", "_repr_jpeg_"):
                render = getattr(value, method, None)
                if callable(render):
                    rendered = render()
                    if isinstance(rendered, str):
                        rendered = base64.b64decode(rendered)
                    if isinstance(rendered, bytes) and rendered:
                        data = rendered
                        break
    if data is None:
        return None
    media_type = _media_type(data)
    if media_type is None:
        raise ToolResultError("the tool returned an image in a format the API does not take: return PNG, JPEG, GIF or WebP")
    if len(data) > MAX_IMAGE_BYTES:
        raise ToolResultError(f"the tool returned a {len(data) / 1e6:.1f} MB image; the limit is {MAX_IMAGE_BYTES // 2**20} MB per "
                              "image: return a smaller one (e.g. a lower dpi, or fewer pixels)")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}}


def _media_type(data: bytes) -> str | None:
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# ---------------------------------------------------------------------- content blocks


def _is_blocks(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(b, dict) and "type" in b for b in value)


def _checked_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise ToolResultError(f"content block {i} is a text block without a string 'text'")
        elif kind == "image":
            source = block.get("source")
            if not (isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str)
                    and source.get("media_type") in ("image/png", "image/jpeg", "image/gif", "image/webp")):
                raise ToolResultError(f"content block {i} is an image block without a base64 source of a PNG, JPEG, GIF "
                                      "or WebP media_type")
        else:
            raise ToolResultError(f"content block {i} has type {kind!r}; a tool result holds 'text' and 'image' blocks")
    return _checked_count(blocks)


def _checked_count(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    images = sum(1 for b in blocks if b["type"] == "image")
    if images > MAX_IMAGES:
        raise ToolResultError(f"the tool returned {images} images; at most {MAX_IMAGES} fit in one result")
    return blocks
