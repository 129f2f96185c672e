"""A notebook tool's return value as a tool result (`jupyter_cma.tools.results`), with real pandas, matplotlib,
numpy, PIL and IPython objects."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import io
import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections import namedtuple
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pydantic  # noqa: E402
import pytest  # noqa: E402
from IPython.display import Image as IPythonImage  # noqa: E402
from PIL import Image  # noqa: E402

from jupyter_cma.tools import results  # noqa: E402
from jupyter_cma.tools.results import (  # noqa: E402
    MAX_IMAGE_BASE64,
    MAX_IMAGES,
    MAX_TEXT_CHARS,
    ToolResultError,
    error_text,
    to_content,
)


def png_bytes(size: tuple[int, int] = (32, 24), color: str = "red", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "blue").save(buffer, format="JPEG")
    return buffer.getvalue()


def decoded(block: dict[str, Any]) -> Image.Image:
    """The image an image block holds, opened with PIL (which fails on a broken file)."""
    assert block["type"] == "image" and block["source"]["type"] == "base64"
    image = Image.open(io.BytesIO(base64.b64decode(block["source"]["data"], validate=True)))
    image.load()
    return image


def image_block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                        "data": base64.b64encode(data).decode()}}


@pytest.fixture
def figure():
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1, 3, 2])
    ax.set_title("sales")
    yield fig
    plt.close(fig)


# ---- text and plain values --------------------------------------------------------------------------

def test_a_string_is_itself():
    assert to_content("hello") == "hello"
    assert to_content("") == ""
    assert to_content("naïve ✓") == "naïve ✓"


def test_a_long_string_is_cut_with_a_note_of_how_much():
    text = "a" * (MAX_TEXT_CHARS + 23_456)
    result = to_content(text)
    assert isinstance(result, str)
    kept, note = result.split("\n", 1)
    assert kept == "a" * MAX_TEXT_CHARS
    assert "\n" not in note and "23,456" in note and f"{len(text):,}" in note
    assert to_content("b" * MAX_TEXT_CHARS) == "b" * MAX_TEXT_CHARS


def test_none_numbers_and_bools():
    assert to_content(None) == "None"
    assert to_content(3) == "3"
    assert to_content(2.5) == "2.5"
    assert to_content(True) == "true"
    assert to_content([]) == "[]"
    assert to_content({}) == "{}"


def test_data_is_compact_json():
    value = {"name": "Zoë", "scores": [1, 2.5, None], "nested": {"ok": True}}
    result = to_content(value)
    assert result == '{"name": "Zoë", "scores": [1, 2.5, null], "nested": {"ok": true}}'
    assert json.loads(result) == value


def test_nested_data_with_datetimes_numpy_and_more_converts():
    class Colour(enum.Enum):
        RED = "red"

    value = {
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9),
        "day": datetime.date(2024, 5, 6),
        "at": datetime.time(7, 8),
        "took": datetime.timedelta(minutes=90),
        "stamp": pd.Timestamp("2024-01-02 03:04:05"),
        "missing": pd.NA,
        "rows": {"count": np.int64(7), "mean": np.float32(1.5), "flag": np.bool_(True)},
        "series": np.arange(3),
        "np_when": np.datetime64("2024-01-02T03:04:05.000000000"),
        "path": pathlib.Path("/data/x.csv"),
        "tags": {"b", "a", "c"},
        "price": decimal.Decimal("1.10"),
        "id": uuid.UUID(int=1),
        "colour": Colour.RED,
        "events": [{"at": datetime.datetime(2020, 1, 1)}],
    }
    parsed = json.loads(to_content(value))
    assert parsed == {
        "when": "2024-05-06T07:08:09", "day": "2024-05-06", "at": "07:08:00", "took": "1:30:00",
        "stamp": "2024-01-02T03:04:05", "missing": None,
        "rows": {"count": 7, "mean": 1.5, "flag": True}, "series": [0, 1, 2],
        "np_when": "2024-01-02T03:04:05.000000000", "path": "/data/x.csv", "tags": ["a", "b", "c"],
        "price": "1.10", "id": "00000000-0000-0000-0000-000000000001", "colour": "red",
        "events": [{"at": "2020-01-01T00:00:00"}],
    }


def test_keys_json_refuses_are_converted():
    value = {pd.Timestamp("2024-01-01"): 1, np.int64(3): 2, ("a", 1): 3}
    assert json.loads(to_content(value)) == {"2024-01-01T00:00:00": 1, "3": 2, "('a', 1)": 3}


def test_a_top_level_value_that_converts_to_a_string_is_unquoted():
    assert to_content(datetime.datetime(2024, 1, 2, 3, 4)) == "2024-01-02T03:04:00"
    assert to_content(pathlib.Path("/data/x.csv")) == "/data/x.csv"
    assert to_content(np.int64(4)) == "4"
    assert to_content(np.float64(0.25)) == "0.25"
    assert to_content(np.bool_(False)) == "false"
    assert to_content({3, 1, 2}) == "[1, 2, 3]"
    assert to_content({1, "a"}) in ('[1, "a"]', '["a", 1]')


def test_dataclasses_pydantic_models_and_namedtuples():
    @dataclasses.dataclass
    class Point:
        x: int
        seen: datetime.date

    class Order(pydantic.BaseModel):
        id: int
        placed: datetime.datetime
        tags: list[str]

    Stats = namedtuple("Stats", "mean std")
    assert json.loads(to_content(Point(1, datetime.date(2020, 1, 2)))) == {"x": 1, "seen": "2020-01-02"}
    assert json.loads(to_content([Point(2, datetime.date(2021, 1, 1))])) == [{"x": 2, "seen": "2021-01-01"}]
    order = Order(id=5, placed=datetime.datetime(2024, 1, 1, 12), tags=["a"])
    assert json.loads(to_content(order)) == {"id": 5, "placed": "2024-01-01T12:00:00", "tags": ["a"]}
    assert json.loads(to_content({"order": order})) == {"order": {"id": 5, "placed": "2024-01-01T12:00:00", "tags": ["a"]}}
    assert json.loads(to_content(Stats(np.float64(1.5), 0.5))) == {"mean": 1.5, "std": 0.5}


def test_unknown_objects_are_their_repr():
    class Thing:
        def __repr__(self) -> str:
            return "<Thing 7>"

    assert to_content(Thing()) == "<Thing 7>"
    assert json.loads(to_content({"thing": Thing()})) == {"thing": "<Thing 7>"}
    assert to_content(range(3)) == "range(0, 3)"
    assert to_content(Thing).startswith("<class ")


def test_a_broken_repr_is_reported_not_raised():
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr today")

    assert to_content(Broken()) == "<Broken object: its repr raised RuntimeError: no repr today>"


def test_a_circular_structure_is_its_repr():
    loop: list[Any] = [1]
    loop.append(loop)
    assert to_content(loop) == "[1, [...]]"


def test_a_huge_repr_is_capped():
    result = to_content(list(range(60_000)))
    assert isinstance(result, str) and len(result) < MAX_TEXT_CHARS + 200
    assert result.startswith("[0, 1, 2") and "more characters cut" in result


# ---- pandas and numpy -------------------------------------------------------------------------------

def test_a_small_dataframe_is_a_whole_table():
    frame = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"], "sales": [10, 20, 30]})
    result = to_content(frame)
    assert isinstance(result, str)
    lines = result.splitlines()
    assert lines[0] == "DataFrame: 3 rows × 2 columns"
    assert lines[1:] == frame.to_string().splitlines()


def test_a_10000_row_dataframe_shows_its_first_and_last_rows():
    frame = pd.DataFrame({f"c{i}": np.arange(10_000) * i for i in range(7)})
    result = to_content(frame)
    lines = result.splitlines()
    assert lines[0] == "DataFrame: 10,000 rows × 7 columns (showing the first and last 25 rows)"
    assert lines[1].split() == [f"c{i}" for i in range(7)]
    body = lines[2:]
    assert len(body) == 51 and body[25].lstrip().startswith("...")
    assert body[0].split()[0] == "0" and body[-1].split()[0] == "9999"
    assert body[-1].split()[1:] == [str(9999 * i) for i in range(7)]


def test_a_wide_dataframe_shows_20_columns_and_cuts_long_cells():
    frame = pd.DataFrame({f"col{i}": ["x" * 200] * 3 for i in range(30)})
    result = to_content(frame)
    first, header = result.splitlines()[:2]
    assert first == "DataFrame: 3 rows × 30 columns (showing the first and last 10 columns)"
    assert header.split() == [*(f"col{i}" for i in range(10)), "...", *(f"col{i}" for i in range(20, 30))]
    assert "x" * 200 not in result and "x" * 70 in result


def test_a_series_is_a_table_with_its_name_and_dtype():
    assert to_content(pd.Series([1.5, 2.5], name="price")).splitlines() == [
        "Series 'price': 2 rows, dtype float64", "0    1.5", "1    2.5"]
    long = to_content(pd.Series(np.arange(5_000)))
    assert long.splitlines()[0] == "Series: 5,000 rows, dtype int64 (showing the first and last 25 rows)"
    assert len(long.splitlines()) == 1 + 51


def test_a_dataframe_in_a_tuple_keeps_its_table():
    frame = pd.DataFrame({"a": [1, 2]})
    assert to_content(("two rows:", frame)) == [
        {"type": "text", "text": "two rows:"},
        {"type": "text", "text": "DataFrame: 2 rows × 1 columns\n" + frame.to_string()}]


def test_a_small_array_is_json():
    assert to_content(np.arange(4)) == "[0, 1, 2, 3]"
    assert json.loads(to_content(np.array([[1.5, 2.0], [3.0, 4.0]]))) == [[1.5, 2.0], [3.0, 4.0]]
    assert to_content(np.array(["a", "b"])) == '["a", "b"]'
    assert to_content(np.array(3)) == "3"
    assert json.loads(to_content(np.array(["2024-01-01"], dtype="datetime64[D]"))) == ["2024-01-01"]


def test_a_large_array_is_summarised_even_when_print_options_say_not_to():
    array = np.arange(100_000).reshape(1_000, 100)
    with np.printoptions(threshold=sys.maxsize):
        result = to_content(array)
    lines = result.splitlines()
    assert lines[0] == "ndarray of shape (1000, 100), dtype int64:"
    assert "..." in result and len(result) < 2_000
    assert lines[1].startswith("[[    0,     1,     2, ...")


# ---- images -----------------------------------------------------------------------------------------

def test_png_and_jpeg_bytes_are_image_blocks():
    png = png_bytes((32, 24))
    [block] = to_content(png)
    assert block == image_block(png, "image/png")
    assert decoded(block).size == (32, 24)
    jpeg = jpeg_bytes((40, 30))
    [block] = to_content(bytearray(jpeg))
    assert block["source"]["media_type"] == "image/jpeg"
    assert decoded(block).format == "JPEG" and decoded(block).size == (40, 30)
    [block] = to_content(memoryview(png))
    assert block["source"]["media_type"] == "image/png"


def test_gif_and_webp_bytes_are_recognised():
    buffer = io.BytesIO()
    Image.new("P", (5, 5)).save(buffer, format="GIF")
    [block] = to_content(buffer.getvalue())
    assert block["source"]["media_type"] == "image/gif" and decoded(block).size == (5, 5)
    webp = b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(8)  # the header is what tells the type
    [block] = to_content(webp)
    assert block["source"]["media_type"] == "image/webp"


def test_other_bytes_are_refused_with_what_to_do():
    with pytest.raises(ToolResultError, match=r"11 bytes that are not a PNG, JPEG, GIF or WebP image.*decode"):
        to_content(b"hello world")
    with pytest.raises(ToolResultError):
        to_content(b"")


def test_a_figure_is_a_png_of_its_size_and_stays_open(figure):
    [block] = to_content(figure)
    assert block["source"]["media_type"] == "image/png"
    image = decoded(block)
    assert image.format == "PNG"
    # bbox_inches="tight": the drawn area plus matplotlib's 0.1-inch pad, at the figure's dpi.
    bbox = figure.get_tightbbox(figure.canvas.get_renderer())
    expected = ((bbox.width + 0.2) * figure.dpi, (bbox.height + 0.2) * figure.dpi)
    assert abs(image.size[0] - expected[0]) <= 2 and abs(image.size[1] - expected[1]) <= 2
    assert 300 <= image.size[0] <= 420 and 220 <= image.size[1] <= 320  # about 4 × 3 inches at 100 dpi
    assert plt.fignum_exists(figure.number), "the user's figure is not closed"
    assert figure.axes[0].get_title() == "sales"
    assert to_content(figure) == [block], "saving it again gives the same image"


def test_an_axes_is_its_figure(figure):
    assert to_content(figure.axes[0]) == to_content(figure)


def test_a_big_figure_stays_within_the_edge_claude_sees():
    fig, ax = plt.subplots(figsize=(20, 10), dpi=150)
    fig.subplots_adjust(0, 0, 1, 1)  # the axes fill the figure, so the tight box is the figure
    ax.plot([1, 2])
    ax.set_axis_off()
    try:
        image = decoded(to_content(fig)[0])
    finally:
        plt.close(fig)
    dpi = 1568 / 20.2  # not 150: the longer edge would be 3,000 px
    assert abs(image.size[0] - 1568) <= 3 and abs(image.size[1] - 10.2 * dpi) <= 3
    assert fig.dpi == 150, "the figure's own dpi is left as it was"


def test_a_figure_with_a_caption_and_a_table():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["a", "b"], [1, 2])
    frame = pd.DataFrame({"a": [1]})
    try:
        result = to_content((fig, "revenue by region"))
        both = to_content((frame, fig))
    finally:
        plt.close(fig)
    assert [block["type"] for block in result] == ["image", "text"]
    assert result[1] == {"type": "text", "text": "revenue by region"}
    decoded(result[0])
    assert [block["type"] for block in both] == ["text", "image"]
    assert both[0]["text"].startswith("DataFrame: 1 rows × 1 columns")


def test_a_pil_image_is_a_png():
    [block] = to_content(Image.new("RGBA", (20, 10), (255, 0, 0, 128)))
    image = decoded(block)
    assert block["source"]["media_type"] == "image/png"
    assert image.format == "PNG" and image.size == (20, 10) and image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (255, 0, 0, 128)
    cmyk = decoded(to_content(Image.new("CMYK", (8, 8), (0, 255, 255, 0)))[0])
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (255, 0, 0)


def test_an_ipython_image_is_its_data():
    jpeg = jpeg_bytes()
    assert to_content(IPythonImage(data=jpeg)) == [image_block(jpeg, "image/jpeg")]
    png = png_bytes()
    assert to_content(IPythonImage(data=png, format="png")) == [image_block(png)]
    with pytest.raises(ToolResultError, match="embed=True"):
        to_content(IPythonImage(url="https://example.com/a.png"))


def test_objects_that_draw_themselves_as_png_or_jpeg():
    png, jpeg = png_bytes(), jpeg_bytes()

    class Chart:
        def _repr_png_(self) -> bytes:
            return png

    class Photo:
        def _repr_png_(self) -> None:
            return None

        def _repr_jpeg_(self) -> tuple[str, dict[str, Any]]:
            return base64.b64encode(jpeg).decode(), {"width": 40}

    class CannotDraw:
        def _repr_png_(self) -> bytes:
            raise RuntimeError("no LaTeX here")

        def __repr__(self) -> str:
            return "x**2"

    assert to_content(Chart()) == [image_block(png)]
    assert to_content(Photo()) == [image_block(jpeg, "image/jpeg")]
    assert to_content(CannotDraw()) == "x**2"


def test_an_image_over_5_mb_is_refused():
    big = b"\x89PNG\r\n\x1a\n" + bytes(4_000_000)
    assert len(base64.b64encode(big)) > MAX_IMAGE_BASE64
    with pytest.raises(ToolResultError, match=r"over Anthropic's limit of 5 MB.*smaller image"):
        to_content(big)
    # Just under the limit (which is measured on the base64 string) passes.
    fits = b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BASE64 // 4 * 3 - 8)
    assert len(base64.b64encode(fits)) == MAX_IMAGE_BASE64
    assert to_content(fits)[0]["source"]["media_type"] == "image/png"


def test_a_noisy_pil_image_over_5_mb_is_refused():
    noise = Image.frombytes("RGB", (1600, 1200), os.urandom(1600 * 1200 * 3))
    with pytest.raises(ToolResultError, match=r"the image \(as PNG\) is .* MB.*thumbnail"):
        to_content(noise)


def test_a_figure_over_5_mb_says_to_lower_its_dpi():
    fig, ax = plt.subplots(figsize=(15, 15), dpi=100)
    fig.subplots_adjust(0, 0, 1, 1)
    ax.imshow(np.random.default_rng(0).random((1500, 1500, 3)), interpolation="nearest")
    ax.set_axis_off()
    try:
        with pytest.raises(ToolResultError, match=r"the figure is .*lower dpi"):
            to_content(fig)
        assert plt.fignum_exists(fig.number)
    finally:
        plt.close(fig)


def test_at_most_20_images():
    png = png_bytes()
    assert len(to_content((png,) * MAX_IMAGES)) == MAX_IMAGES
    with pytest.raises(ToolResultError, match="21 images; at most 20.*subplots"):
        to_content((png,) * (MAX_IMAGES + 1))
    with pytest.raises(ToolResultError, match="21 images"):
        to_content([image_block(png)] * 21)


# ---- tuples -----------------------------------------------------------------------------------------

def test_a_tuple_of_data_is_a_json_list():
    assert to_content((1, 2)) == "[1, 2]"
    assert to_content(("a", {"b": np.int64(2)})) == '["a", {"b": 2}]'
    assert to_content(()) == "[]"


def test_a_tuple_with_more_than_data_is_each_part_in_order():
    png = png_bytes()
    result = to_content(("before", png, {"n": 1}, None, "  ", "after"))
    assert result == [
        {"type": "text", "text": "before"}, image_block(png), {"type": "text", "text": '{"n": 1}'},
        {"type": "text", "text": "None"}, {"type": "text", "text": "after"}]


def test_text_is_capped_across_a_whole_result():
    png = png_bytes()
    result = to_content(("a" * 80_000, png, "b" * 50_000, "c" * 10))
    assert [block["type"] for block in result] == ["text", "image", "text", "text"]
    assert result[0]["text"] == "a" * 80_000
    assert result[2]["text"].startswith("b" * 20_000 + "\n[… 30,000 more characters cut")
    assert result[3]["text"] == "[… 10 more characters cut: this text had 10, at most 100,000 are kept]"


# ---- content blocks ---------------------------------------------------------------------------------

def test_well_formed_content_blocks_are_returned_as_they_are():
    png = png_bytes()
    blocks = [{"type": "text", "text": "the chart:"}, image_block(png),
              {"type": "text", "text": "done", "cache_control": {"type": "ephemeral"}}]
    result = to_content(blocks)
    assert result == blocks and result is not blocks
    assert to_content([{"type": "text", "text": "one"}]) == [{"type": "text", "text": "one"}]
    assert to_content({"type": "text", "text": "a single block"}) == [{"type": "text", "text": "a single block"}]


def test_content_blocks_are_not_changed_when_cut():
    block = {"type": "text", "text": "z" * (MAX_TEXT_CHARS + 5)}
    [result] = to_content([block])
    assert len(block["text"]) == MAX_TEXT_CHARS + 5
    assert result["text"].startswith("z" * MAX_TEXT_CHARS + "\n[… 5 more characters cut")


def test_lists_and_dicts_of_data_with_a_type_key_stay_data():
    rows = [{"type": "fruit", "name": "apple"}, {"type": "veg", "name": "leek"}]
    assert json.loads(to_content(rows)) == rows
    assert json.loads(to_content({"type": "text", "body": "hi"})) == {"type": "text", "body": "hi"}
    assert json.loads(to_content({"type": "image", "url": "x"})) == {"type": "image", "url": "x"}


@pytest.mark.parametrize(("blocks", "message"), [
    ([{"type": "text", "text": "a"}, {"type": "fruit"}], r"content block 1 has type 'fruit'.*'text' or 'image'.*inside a dict"),
    ([{"type": "text", "text": "a"}, "b"], r"content block 1 is a str, not a dict"),
    ([{"type": "text"}], r"content block 0 \(text\) needs a 'text' string.*not None"),
    ([{"type": "text", "text": "  \n"}], r"content block 0 \(text\) needs a 'text' string that is not blank"),
    ([{"type": "text", "text": 5}], r"not 5"),
    ([{"type": "text", "text": "a", "txet": "b"}], r"content block 0 \(text\) has unknown keys \['txet'\]"),
    ([{"type": "image"}], r"content block 0 \(image\) needs a 'source' dict"),
    ([{"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}], r"only base64 sources.*bytes"),
    ([{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "Qk0="}}],
     r"media_type 'image/bmp'; it is one of \['image/png'"),
    ([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}],
     r"'data' is not valid base64.*b64encode"),
    ([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}], r"needs 'data'"),
    ([{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                   "data": base64.b64encode(b"not an image").decode()}}],
     r"not a PNG, JPEG, GIF or WebP image once decoded"),
    ([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x", "extra": 1}}],
     r"unknown source keys \['extra'\]"),
])
def test_malformed_blocks_say_what_is_wrong(blocks, message):
    with pytest.raises(ToolResultError, match=message):
        to_content(blocks)


def test_an_image_block_whose_media_type_does_not_match_its_data():
    with pytest.raises(ToolResultError, match=r"media_type says image/png but the data is image/jpeg; set media_type "
                                              r"to 'image/jpeg'"):
        to_content([image_block(jpeg_bytes(), "image/png")])


def test_an_oversized_image_block():
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(4_000_000)).decode()
    with pytest.raises(ToolResultError, match=r"content block 0 \(image\) has 5,333,344 base64 bytes, over"):
        to_content([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}])


def test_tool_result_error_is_a_value_error():
    assert issubclass(ToolResultError, ValueError)


# ---- errors -----------------------------------------------------------------------------------------

class QuotaExceeded(Exception):
    pass


def test_error_text_is_the_type_and_message():
    assert error_text(ZeroDivisionError("division by zero")) == "ZeroDivisionError: division by zero"
    assert error_text(ValueError()) == "ValueError"
    assert error_text(ValueError("   ")) == "ValueError"
    assert error_text(KeyError("region")) == "KeyError: 'region'"
    assert error_text(FileNotFoundError(2, "No such file or directory", "sales.csv")) == (
        "FileNotFoundError: [Errno 2] No such file or directory: 'sales.csv'")
    assert error_text(pd.errors.ParserError("bad line 3")) == "pandas.errors.ParserError: bad line 3"
    assert error_text(QuotaExceeded("try tomorrow")) == f"{__name__}.QuotaExceeded: try tomorrow"


def test_error_text_of_a_notebook_defined_exception_has_no_module():
    notebook_error = type("NotReady", (Exception,), {"__module__": "__main__"})
    assert error_text(notebook_error("load the data first")) == "NotReady: load the data first"
    assert error_text(ToolResultError("return less")) == "jupyter_cma.tools.results.ToolResultError: return less"


def test_error_text_keeps_notes_and_drops_colours_and_tracebacks():
    try:
        try:
            raise ValueError("\x1b[31mbad value\x1b[0m")
        except ValueError as inner:
            inner.add_note("while reading row 3")
            raise
    except ValueError as exc:
        assert exc.__traceback__ is not None
        assert error_text(exc) == "ValueError: bad value\nwhile reading row 3"


def test_error_text_is_capped():
    text = error_text(RuntimeError("x" * 50_000))
    assert text.startswith("RuntimeError: xxx") and len(text) < results.MAX_ERROR_CHARS + 200
    assert text.endswith("more characters cut: this text had 50,014, at most 5,000 are kept]")


def test_error_text_survives_a_broken_str():
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert error_text(Weird()).endswith("Weird")


# ---- import cost ------------------------------------------------------------------------------------

def test_importing_and_converting_plain_values_loads_no_data_library():
    code = """
import sys, datetime, json
from jupyter_cma.tools.results import to_content, error_text
heavy = ("pandas", "matplotlib", "numpy", "PIL", "IPython", "pydantic")
loaded = lambda: sorted(m for m in sys.modules if m.split(".")[0] in heavy)
after_import = loaded()
server = sorted(m for m in sys.modules if m.startswith("jupyter_cma") and m not in (
    "jupyter_cma", "jupyter_cma._version", "jupyter_cma.tools", "jupyter_cma.tools.results"))
to_content({"a": [1, 2.5, None], "when": datetime.date(2024, 1, 1)}); to_content("x"); to_content(None)
to_content((1, "a")); to_content(object()); error_text(ValueError("v"))
print(json.dumps({"after_import": after_import, "after_use": loaded(), "server": server}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"after_import": [], "after_use": [], "server": []}
