"""What a python call gives back to the agent: its nbformat outputs as tool-result content, or the SDK's ToolError.

Text (stdout, stderr, the value of the last expression, tracebacks without
their ANSI colours) is joined and capped at `OUTPUT_LIMIT` characters,
keeping the tail (the end of the output and the traceback matter most);
images (PNG, JPEG, GIF, WebP) become image blocks, at most `MAX_IMAGES` of at
most `IMAGE_LIMIT` base64 bytes each, in output order.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .process import Execution

OUTPUT_LIMIT = 100 * 1024  # characters of text a python result carries (the tail is kept), like the SDK's bash
IMAGE_LIMIT = 5 * 1024 * 1024  # base64 bytes of one image block (the SDK's read tool cap)
MAX_IMAGES = 10  # image blocks per python result
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _tool_error(content: Any) -> Exception:
    from anthropic.lib.tools import ToolError

    return ToolError(content)


def _plain_error(ex: Execution) -> str:
    if ex.error is None:
        return ex.detail or ex.status
    return _ANSI.sub("", f"{ex.error['ename']}: {ex.error['evalue']}")


def _text_of(output: dict[str, Any]) -> str | None:
    kind = output["output_type"]
    if kind == "stream":
        return output["text"]
    if kind == "error":
        return _ANSI.sub("", "\n".join(output["traceback"])) or f"{output['ename']}: {output['evalue']}"
    data = output.get("data", {})
    if "text/plain" in data:
        return _joined(data["text/plain"])
    for mime in ("text/markdown", "text/html", "text/latex", "image/svg+xml"):
        if mime in data:
            return _joined(data[mime])
    for mime, value in data.items():
        if mime.endswith("json"):
            return json.dumps(value)
    return None


def _joined(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _tool_content(outputs: list[dict[str, Any]], *, as_blocks: bool = False, note: str | None = None) -> Any:
    """Outputs as tool-result content: text (capped, tail kept) and image blocks, in output order.

    Returns a plain string when there is only text (and not `as_blocks`);
    `note` (why the call ended) goes first.
    """
    blocks: list[dict[str, Any]] = []
    images = 0

    def add_text(text: str) -> None:
        if not text:
            return
        if blocks and blocks[-1]["type"] == "text":
            previous = blocks[-1]["text"]
            blocks[-1]["text"] = previous + ("" if previous.endswith("\n") else "\n") + text
        else:
            blocks.append({"type": "text", "text": text})

    for output in outputs:
        data = output.get("data", {})
        image = next((m for m in IMAGE_TYPES if m in data), None) if output["output_type"] != "stream" else None
        if image is not None:
            payload = "".join(_joined(data[image]).split())
            if len(payload) > IMAGE_LIMIT:
                add_text(f"[{image} image of {len(payload)} base64 bytes omitted: over the {IMAGE_LIMIT}-byte limit]")
            elif images >= MAX_IMAGES:
                add_text(f"[{image} image omitted: more than {MAX_IMAGES} images in one call]")
            else:
                images += 1
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": image, "data": payload}})
            continue
        text = _text_of(output)
        if text:
            add_text(text)

    # Cap the text, keeping the tail (the end of the output and the traceback matter most).
    budget = OUTPUT_LIMIT
    kept: list[dict[str, Any]] = []
    truncated = False
    for block in reversed(blocks):
        if block["type"] != "text":
            kept.append(block)
            continue
        if truncated:
            continue
        text = block["text"]
        if len(text) > budget:
            text = "[output truncated]\n" + text[len(text) - budget:]
            truncated = True
        budget -= len(text)
        kept.append({"type": "text", "text": text})
    blocks = list(reversed(kept))
    if note:
        blocks.insert(0, {"type": "text", "text": note + ("\n\noutput before it stopped:" if blocks else "")})
    if not as_blocks and all(b["type"] == "text" for b in blocks):
        return "\n".join(b["text"] for b in blocks)
    return blocks or [{"type": "text", "text": "(no output)"}]
