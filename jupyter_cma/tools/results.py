"""What a notebook-defined tool's return value becomes for the model: a tool result Anthropic's API accepts.

A tool defined in a notebook cell runs in the notebook's kernel, and this
module runs there too, so it imports the standard library only. pandas,
matplotlib, numpy, PIL, IPython and pydantic objects are recognised through
`sys.modules`: a value can only be one of theirs if its library is already
loaded, so nothing is ever imported to look at a value, and subclasses (a
GeoDataFrame, a SubFigure) are recognised too.

`to_content(value)` gives either a string or a list of content blocks
(`{"type": "text", "text": ...}` and base64 `{"type": "image", ...}`);
`error_text(exc)` gives what a tool that raised says to the model. A value
that cannot become a tool result raises `ToolResultError`, whose message tells
the notebook user what to return instead.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import enum
import io
import json
import pathlib
import re
import sys
from typing import Any

__all__ = [
    "FRAME_COLS",
    "FRAME_ROWS",
    "IMAGE_TYPES",
    "MAX_ERROR_CHARS",
    "MAX_IMAGES",
    "MAX_IMAGE_BASE64",
    "MAX_TEXT_CHARS",
    "ToolResultError",
    "error_text",
    "to_content",
]

MAX_TEXT_CHARS = 100_000  # characters of text in one result (all its text blocks together), like a python call's output
MAX_IMAGE_BASE64 = 5 * 1024 * 1024  # Anthropic's per-image limit, which it measures on the base64 string
MAX_IMAGES = 20  # image blocks in one result
MAX_ERROR_CHARS = 5_000  # characters of a tool error's message
MAX_IMAGE_EDGE = 1568  # px; Claude scales a longer edge down to this, so more pixels only cost bytes
FRAME_ROWS = 50  # rows of a DataFrame or Series shown (the first and last half)
FRAME_COLS = 20  # columns of a DataFrame shown (the first and last half)
FRAME_COLWIDTH = 80  # characters of one cell shown
SMALL_ARRAY = 1_000  # elements of a numpy array sent whole, as JSON
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

_BLOCK_TYPES = ("text", "image")
_BLOCK_KEYS = {"text": {"type", "text", "cache_control"}, "image": {"type", "source", "cache_control"}}
_SOURCE_KEYS = {"type", "media_type", "data"}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_BLOCK_SHAPE = ('{"type": "text", "text": "..."} or {"type": "image", "source": {"type": "base64", '
                '"media_type": "image/png", "data": "<base64>"}}')
_AS_DATA = "if this list is data and not content blocks, return it inside a dict, such as {\"rows\": [...]}"


class ToolResultError(ValueError):
    """A tool's return value cannot become a tool result; the message says what to return instead."""


def to_content(value: Any) -> str | list[dict[str, Any]]:
    """The tool result for a tool function's return value: a string, or a list of content blocks.

    - `str`: as is.
    - A list of content blocks (dicts whose "type" is "text" or "image"; a
      list counts as blocks when any item has one of those types): checked
      and returned as a list (a single such dict is taken as a list of one).
      Image sources must be base64, of a PNG, JPEG, GIF or WebP whose bytes
      match its media_type; text must not be blank (the API refuses both).
    - PNG, JPEG, GIF or WebP `bytes` (recognised by their first bytes): one
      image block. Other bytes raise: decode them or return an image.
    - A matplotlib Figure, SubFigure or Axes: its whole figure as PNG
      (`bbox_inches="tight"`, at the figure's own dpi, lowered so that the
      longer edge stays within 1568 px, which Claude scales to anyway); the
      figure is left open. A PIL image: PNG. An `IPython.display.Image`: its
      data. Any other object with `_repr_png_` or `_repr_jpeg_`: that image.
    - A pandas DataFrame or Series: a header line (rows × columns, what is
      shown) and its `to_string`, at most 50 rows (the first and last 25) and
      20 columns of cells cut at 80 characters. A numpy array of at most 1,000
      elements: its `tolist()` as JSON; a larger one: shape, dtype and a
      summarised repr.
    - `None`: the text "None" - the function ran and returned nothing, said
      the way the Python its author wrote says it.
    - Dicts, lists, numbers, bools and the types below: JSON, compact
      (`json.dumps` with `ensure_ascii=False` and no indent: fewer tokens for
      the same data, more of it within the cap, and the model reads compact
      JSON as well as indented). Converted on the way: numpy scalars and
      arrays, datetimes, dates and times (ISO 8601), timedeltas, paths,
      Decimal, UUID (as strings), enums (their value), sets (sorted lists),
      dataclasses (their fields), pydantic models (`model_dump(mode="json")`),
      pandas NA (null); anything else inside the data as its repr. A top-level
      value that converts to a string (a datetime, a Path) is that string,
      unquoted. A namedtuple returned as such is a dict of its fields (inside
      other data, json writes it as a list).
    - A tuple: when any part is more than data (an image, figure, frame,
      array, content blocks, bytes, or an object shown by its repr), the
      blocks of each part in order (blank strings left out), e.g.
      `return fig, "caption"` or `return df, fig`; otherwise JSON, as a list.
    - Anything else: `repr(value)`.

    Text is capped at `MAX_TEXT_CHARS` characters for the whole result (the
    beginning is kept) with a one-line note of how much was cut. An image over
    `MAX_IMAGE_BASE64` base64 bytes, or more than `MAX_IMAGES` images, raise
    `ToolResultError`. So does a malformed content block, naming what is wrong.
    """
    if isinstance(value, str):
        return _cap_text(value, MAX_TEXT_CHARS)
    blocks = _blocks(value)
    images = sum(1 for block in blocks if block["type"] == "image")
    if images > MAX_IMAGES:
        raise ToolResultError(
            f"the tool returned {images} images; at most {MAX_IMAGES} fit in one tool result: return fewer, "
            "or draw them as subplots of one figure (plt.subplots)")
    blocks = _cap_blocks(blocks)
    if not images and not _looks_like_blocks(value) and len(blocks) <= 1:
        return blocks[0]["text"] if blocks else ""
    return blocks


def error_text(exc: BaseException) -> str:
    """What a tool that raised `exc` says to the model: "<ExceptionType>: <message>", or the type alone.

    The type is named as Python's own traceback names it (module-qualified
    unless it is a builtin or defined in the notebook); the message is
    `str(exc)` with any notes added by `add_note`, without ANSI colours,
    capped at `MAX_ERROR_CHARS`. No traceback: the model needs what went
    wrong, not the tool's internals.
    """
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the error itself
        message = ""
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        message = "\n".join([message, *(note for note in notes if isinstance(note, str))]).strip("\n")
    message = _ANSI.sub("", message)
    if not message.strip():
        return name
    return _cap_text(f"{name}: {message}", MAX_ERROR_CHARS)


# ---- dispatch -------------------------------------------------------------------------------------

def _blocks(value: Any) -> list[dict[str, Any]]:
    """`value` as content blocks (text not yet capped)."""
    if isinstance(value, str):
        return [_text(value)]
    if value is None:
        return [_text("None")]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [_bytes_image(bytes(value))]
    if _looks_like_blocks(value):
        return _checked_blocks(value if isinstance(value, list) else [value])
    if isinstance(value, tuple) and not _is_namedtuple(value):
        if all(_is_data(part) for part in value):
            return [_text(_json_text(list(value)))]
        return [block for part in value if not (isinstance(part, str) and not part.strip())
                for block in _blocks(part)]
    rich = _rich_blocks(value)
    if rich is not None:
        return rich
    if _is_data(value):
        return [_text(_json_text(value))]
    image = _repr_image(value)
    if image is not None:
        return [image]
    return [_text(_repr(value))]


def _rich_blocks(value: Any) -> list[dict[str, Any]] | None:
    """Blocks for a value of a library this module knows (figure, image, frame, array), else None."""
    mpl_figure = sys.modules.get("matplotlib.figure")
    mpl_axes = sys.modules.get("matplotlib.axes")
    if (mpl_figure is not None and isinstance(value, mpl_figure.FigureBase)) or (
            mpl_axes is not None and isinstance(value, mpl_axes.Axes)):
        return [_figure_image(value, mpl_figure)]
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(value, pil.Image):
        return [_pil_image(value)]
    ipython = sys.modules.get("IPython.core.display")
    if ipython is not None and isinstance(value, getattr(ipython, "Image", ())):
        return [_ipython_image(value)]
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return [_text(_frame_text(value))]
    if pandas is not None and isinstance(value, pandas.Series):
        return [_text(_series_text(value))]
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return [_text(_array_text(value, numpy))]
    return None


def _is_data(value: Any) -> bool:
    """True for what becomes JSON text: plain data and the types `_json_default` converts."""
    if value is None or isinstance(value, (str, bool, int, float, dict, list)):
        return not _looks_like_blocks(value)
    if isinstance(value, tuple):
        return _is_namedtuple(value)
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, pathlib.PurePath, enum.Enum, set,
                          frozenset, *_stdlib_strings())):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        return True
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return True
    pandas = sys.modules.get("pandas")
    return pandas is not None and value is pandas.NA


def _stdlib_strings() -> tuple[type, ...]:
    """Decimal and UUID, when loaded: shown as their strings (not imported here, to keep this module cheap)."""
    types = []
    for module, name in (("decimal", "Decimal"), ("uuid", "UUID")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            types.append(getattr(loaded, name))
    return tuple(types)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and isinstance(getattr(value, "_fields", None), tuple)


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__: say so rather than fail the call
        return f"<{type(value).__name__} object: its repr raised {error_text(exc)}>"


# ---- text ----------------------------------------------------------------------------------------

def _cap_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + _cut_note(len(text) - limit, len(text), limit)


def _cut_note(cut: int, total: int, limit: int = MAX_TEXT_CHARS) -> str:
    return f"\n[… {cut:,} more characters cut: this text had {total:,}, at most {limit:,} are kept]"


def _cap_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text blocks within `MAX_TEXT_CHARS` together: the first ones kept, the rest cut with a note."""
    budget = MAX_TEXT_CHARS
    capped: list[dict[str, Any]] = []
    for block in blocks:
        if block["type"] != "text":
            capped.append(block)
            continue
        text = block["text"]
        if len(text) <= budget:
            budget -= len(text)
            capped.append(block)
            continue
        kept = text[:budget]
        note = _cut_note(len(text) - budget, len(text))
        capped.append({**block, "text": kept + note if kept else note.lstrip("\n")})
        budget = 0
    return capped


# ---- JSON ----------------------------------------------------------------------------------------

def _json_text(value: Any) -> str:
    converted = _json_default(value) if not isinstance(value, (dict, list, str, int, float)) and value is not None \
        else value
    if isinstance(converted, str):  # a Path or a datetime reads better unquoted
        return converted
    try:
        return json.dumps(converted, ensure_ascii=False, default=_json_default)
    except TypeError:  # keys json refuses (Timestamps from a groupby, tuples): convert them, then retry
        pass
    except (ValueError, RecursionError):  # a circular structure: repr marks the cycle with ...
        return _repr(value)
    try:
        return json.dumps(_with_json_keys(converted, 0), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return _repr(value)


def _json_default(o: Any) -> Any:
    """What json.dumps does not know, as something it does (unknown objects as their repr)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(o, (numpy.datetime64, numpy.timedelta64)):
            return str(o)  # .item() of a nanosecond datetime64 is a bare int
        if isinstance(o, numpy.generic):
            return o.item()
        if isinstance(o, numpy.ndarray):
            return o.tolist()
    pandas = sys.modules.get("pandas")
    if pandas is not None and o is pandas.NA:
        return None
    if isinstance(o, (datetime.date, datetime.time)):  # datetime and pandas' Timestamp are dates
        return o.isoformat()
    if isinstance(o, (datetime.timedelta, pathlib.PurePath, complex, *_stdlib_strings())):
        return str(o)
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (set, frozenset)):
        try:
            return sorted(o)
        except TypeError:  # mixed types: a stable order all the same
            return sorted(o, key=repr)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        # Its fields, one level: json recurses, and asdict would deep-copy every value first.
        return {field.name: getattr(o, field.name) for field in dataclasses.fields(o)}
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(o, pydantic.BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, tuple) and _is_namedtuple(o):
        return o._asdict()
    if isinstance(o, (bytes, bytearray)):
        try:
            return bytes(o).decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(o):,} bytes>"
    return _repr(o)


def _with_json_keys(value: Any, depth: int) -> Any:
    """`value` converted throughout, dict keys included (json.dumps never passes keys to default=)."""
    if depth > 200:
        raise RecursionError("nested too deeply")
    if isinstance(value, dict):
        return {_json_key(key): _with_json_keys(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not _is_namedtuple(value):
        return [_with_json_keys(item, depth + 1) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _with_json_keys(_json_default(value), depth + 1)


def _json_key(key: Any) -> Any:
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    converted = _json_default(key)
    return converted if converted is None or isinstance(converted, (str, int, float, bool)) else str(key)


# ---- pandas and numpy ----------------------------------------------------------------------------

def _shown(rows: int, cols: int | None) -> str:
    parts = []
    if rows > FRAME_ROWS:
        parts.append(f"the first and last {FRAME_ROWS // 2} rows")
    if cols is not None and cols > FRAME_COLS:
        parts.append(f"the first and last {FRAME_COLS // 2} columns")
    return f" (showing {' and '.join(parts)})" if parts else ""


def _frame_text(frame: Any) -> str:
    rows, cols = frame.shape
    header = f"{type(frame).__name__}: {rows:,} rows × {cols:,} columns{_shown(rows, cols)}"
    table = frame.to_string(max_rows=FRAME_ROWS, max_cols=FRAME_COLS, max_colwidth=FRAME_COLWIDTH)
    return f"{header}\n{table}"


def _series_text(series: Any) -> str:
    rows = len(series)
    name = "" if series.name is None else f" {series.name!r}"
    header = f"{type(series).__name__}{name}: {rows:,} rows, dtype {series.dtype}{_shown(rows, None)}"
    return f"{header}\n{series.to_string(max_rows=FRAME_ROWS)}"


def _array_text(array: Any, numpy: Any) -> str:
    if array.size <= SMALL_ARRAY:
        try:
            return json.dumps(array.tolist(), ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError, RecursionError):
            pass
    # Explicit print options: the user's may say "never summarise" (threshold=sys.maxsize).
    body = numpy.array2string(array, threshold=SMALL_ARRAY, edgeitems=3, max_line_width=120, separator=", ")
    return f"{type(array).__name__} of shape {array.shape}, dtype {array.dtype}:\n{body}"


# ---- images --------------------------------------------------------------------------------------

def _sniff(data: bytes) -> str | None:
    """The media type of image bytes, from their first bytes; None if not PNG, JPEG, GIF or WebP."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _image_block(data: bytes, media_type: str, what: str, smaller: str) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode("ascii")
    if len(encoded) > MAX_IMAGE_BASE64:
        raise ToolResultError(
            f"{what} is {len(data) / 1e6:.1f} MB ({len(encoded):,} bytes as base64), over Anthropic's limit of "
            f"5 MB ({MAX_IMAGE_BASE64:,} base64 bytes) per image; return a smaller image: {smaller}")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": encoded}}


_SMALLER = "fewer pixels (img.thumbnail((1568, 1568)); Claude sees no more than that) or JPEG bytes for a photo"


def _bytes_image(data: bytes) -> dict[str, Any]:
    media_type = _sniff(data)
    if media_type is None:
        raise ToolResultError(
            f"the tool returned {len(data):,} bytes that are not a PNG, JPEG, GIF or WebP image; return text "
            "instead (such as data.decode('utf-8')), or the bytes of an image in one of those formats")
    return _image_block(data, media_type, "the image", _SMALLER)


def _figure_image(value: Any, mpl_figure: Any) -> dict[str, Any]:
    figure = value
    for _ in range(100):  # an Axes or a SubFigure → the Figure that holds it (only a Figure saves)
        if mpl_figure is not None and isinstance(figure, mpl_figure.Figure):
            break
        parent = getattr(figure, "figure", None)
        if parent is None or parent is figure:
            raise ToolResultError(f"the {type(value).__name__} the tool returned belongs to no figure; return a Figure")
        figure = parent
    width, height = figure.get_size_inches()
    # The tight box is about the figure plus savefig's 0.1-inch pad on each side.
    dpi = min(float(figure.dpi), MAX_IMAGE_EDGE / (max(width, height) + 0.2))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")  # the user's figure stays open
    return _image_block(buffer.getvalue(), "image/png", "the figure",
                        "save it at a lower dpi (fig.set_dpi(72)) or a smaller size (fig.set_size_inches(8, 6))")


def _pil_image(image: Any) -> dict[str, Any]:
    if image.mode not in _PNG_MODES:  # CMYK, YCbCr, F, … have no PNG form
        wanted = "RGBA" if "A" in image.mode.upper() or "transparency" in image.info else "RGB"
        try:
            image = image.convert(wanted)
        except ValueError:
            image = image.convert("L").convert(wanted)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _image_block(buffer.getvalue(), "image/png", "the image (as PNG)", _SMALLER)


def _ipython_image(image: Any) -> dict[str, Any]:
    data = image.data
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ToolResultError("the IPython Image the tool returned holds no image data (only a URL or a file name); "
                              "make it with embed=True, or return the image's bytes")
    media_type = _sniff(bytes(data))
    if media_type is None:
        raise ToolResultError("the IPython Image the tool returned is not a PNG, JPEG, GIF or WebP image; "
                              "return one in those formats (PIL: img.save(buffer, 'PNG'))")
    return _image_block(bytes(data), media_type, "the image", _SMALLER)


def _repr_image(value: Any) -> dict[str, Any] | None:
    """The image an object shows itself as in Jupyter (`_repr_png_`, `_repr_jpeg_`), else None."""
    for method in ("_repr_png_", "_repr_jpeg_"):
        render = getattr(value, method, None)
        if not callable(render):
            continue
        try:
            data = render()
        except Exception:  # it cannot draw itself now (a missing renderer): fall back to its repr
            continue
        if isinstance(data, tuple) and data:  # (data, metadata), as IPython allows
            data = data[0]
        if isinstance(data, str):  # IPython's convention: a str is already base64
            try:
                data = base64.b64decode(data)
            except (binascii.Error, ValueError):
                continue
        if isinstance(data, (bytes, bytearray)) and _sniff(bytes(data)) is not None:
            return _image_block(bytes(data), _sniff(bytes(data)) or "", f"the {type(value).__name__} image", _SMALLER)
    return None


# ---- content blocks ------------------------------------------------------------------------------

def _looks_like_blocks(value: Any) -> bool:
    """A list with any text/image block in it (checked strictly then), or one well-formed block as a dict."""
    if isinstance(value, list):
        return any(isinstance(item, dict) and item.get("type") in _BLOCK_TYPES for item in value)
    if isinstance(value, dict) and value.get("type") in _BLOCK_TYPES:
        try:
            _check_block(value, 0)
        except ToolResultError:
            return False  # a dict of data that happens to have a "type" key
        return True
    return False


def _checked_blocks(blocks: list[Any]) -> list[dict[str, Any]]:
    return [_check_block(block, index) for index, block in enumerate(blocks)]


def _check_block(block: Any, index: int) -> dict[str, Any]:
    """A copy of one content block, or ToolResultError naming what is wrong with it."""
    where = f"content block {index}"
    if not isinstance(block, dict):
        raise ToolResultError(f"{where} is a {type(block).__name__}, not a dict; each block is {_BLOCK_SHAPE} "
                              f"({_AS_DATA})")
    kind = block.get("type")
    if kind not in _BLOCK_TYPES:
        raise ToolResultError(f"{where} has type {kind!r}; a tool result's blocks are 'text' or 'image', "
                              f"such as {_BLOCK_SHAPE} ({_AS_DATA})")
    unknown = sorted(map(str, set(block) - _BLOCK_KEYS[kind]))
    if unknown:
        raise ToolResultError(f"{where} ({kind}) has unknown keys {unknown}; a {kind} block has only "
                              f"{sorted(_BLOCK_KEYS[kind])}")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ToolResultError(f"{where} (text) needs a 'text' string that is not blank (the API refuses "
                                  f"empty text blocks), not {_short(text)}")
        return dict(block)
    source = block.get("source")
    if not isinstance(source, dict):
        raise ToolResultError(f"{where} (image) needs a 'source' dict: {{'type': 'base64', 'media_type': "
                              f"'image/png', 'data': '<base64>'}}, not {_short(source)}")
    if source.get("type") != "base64":
        raise ToolResultError(f"{where} (image) has a source of type {source.get('type')!r}; only base64 sources "
                              "are accepted: return the image's bytes, a figure or a PIL image and it is encoded "
                              "for you")
    unknown = sorted(map(str, set(source) - _SOURCE_KEYS))
    if unknown:
        raise ToolResultError(f"{where} (image) has unknown source keys {unknown}; a base64 source has only "
                              f"{sorted(_SOURCE_KEYS)}")
    media_type, data = source.get("media_type"), source.get("data")
    if media_type not in IMAGE_TYPES:
        raise ToolResultError(f"{where} (image) has media_type {_short(media_type)}; it is one of {list(IMAGE_TYPES)}")
    if not isinstance(data, str) or not data:
        raise ToolResultError(f"{where} (image) needs 'data', the image's bytes as a base64 string "
                              f"(base64.b64encode(png_bytes).decode()), not {_short(data)}")
    if len(data) > MAX_IMAGE_BASE64:
        raise ToolResultError(f"{where} (image) has {len(data):,} base64 bytes, over Anthropic's limit of 5 MB "
                              f"({MAX_IMAGE_BASE64:,}) per image; return a smaller image: {_SMALLER}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ToolResultError(f"{where} (image): 'data' is not valid base64; encode the image's bytes with "
                              "base64.b64encode(png_bytes).decode()") from None
    actual = _sniff(raw)
    if actual is None:
        raise ToolResultError(f"{where} (image): 'data' is not a PNG, JPEG, GIF or WebP image once decoded")
    if actual != media_type:
        raise ToolResultError(f"{where} (image): media_type says {media_type} but the data is {actual}; "
                              f"set media_type to {actual!r}")
    return {**block, "source": dict(source)}


def _short(value: Any) -> str:
    text = _repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
