"""A notebook tool's definition from a plain function (`jupyter_cma.tools.schema`).

Each signature in CASES has its exact expected input schema, and each of those
schemas is also sent to the emulator as an agent's custom tool, which must
accept it (the emulator refuses what the API refuses: references, lookarounds,
backreferences). Then the refusals, and the conversion of the model's input
into the function's arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Iterator
from typing import Annotated, Any, Literal, NotRequired, Optional, TypedDict

import anthropic
import pydantic
import pytest
from pydantic import BaseModel, ConfigDict, Field

from jupyter_cma.tools.schema import ToolInputError, ToolSchemaError, ToolSignature
from tests.emulator_fixtures import EmulatorProcess

# --------------------------------------------------------------------------- types the tools take


class Color(enum.Enum):
    """A colour on the chart."""

    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    MID = 2
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


@dataclasses.dataclass
class Shape:
    """A polygon."""

    name: str
    points: list[Point]
    closed: bool = False


@dataclasses.dataclass
class Mark:
    color: Color
    note: str = ""


class Query(BaseModel):
    """What to search for."""

    text: str = Field(min_length=1, max_length=200, description="Words to look for.")
    code: str = Field(pattern=r"^[A-Z]{2}\d{2}$")
    limit: int = Field(10, ge=1, le=50)
    score: float = Field(0.5, gt=0, lt=1)


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str
    quantity: int = 1


class Row(TypedDict):
    id: int
    label: NotRequired[str]


class Batch(TypedDict):
    """Rows to insert together."""

    table: str
    rows: list[Row]


class Outline(TypedDict):
    title: str
    sections: list[Outline]


@dataclasses.dataclass
class Tree:
    value: int
    children: list[Tree]


class Chain(BaseModel):
    name: str
    next: Optional[Chain] = None


SENTINEL = object()

POINT = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number", "default": 0.0}}, "required": ["x"]}
COLOR = {"enum": ["red", "green", "blue"], "type": "string", "description": "A colour on the chart."}
QUERY = {
    "type": "object",
    "description": "What to search for.",
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 200, "description": "Words to look for."},
        "code": {"type": "string", "pattern": r"^[A-Z]{2}\d{2}$"},
        "limit": {"type": "integer", "default": 10, "minimum": 1, "maximum": 50},
        "score": {"type": "number", "default": 0.5, "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    },
    "required": ["text", "code"],
}


def obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


# --------------------------------------------------------------------------- the signatures


def plain_types(text: str, count: int, ratio: float, flag: bool) -> str:
    """Echo the four basic JSON types."""
    return f"{text} {count} {ratio} {flag}"


def with_defaults(query: str, limit: int = 10, exact: bool = False, sep: str = ",") -> str:
    """Search with defaults."""
    return query


def optional_typing(name: Optional[str] = None) -> str:
    """Greet someone, or everyone."""
    return name or "all"


def optional_pipe(limit: int | None) -> str:
    """A limit that may be null, but must be given."""
    return str(limit)


def literal_strs(mode: Literal["fast", "slow"] = "fast") -> str:
    """Pick a speed."""
    return mode


def literal_ints(level: Literal[1, 2, 3], kind: Literal["csv"]) -> str:
    """Pick a level."""
    return str(level)


def list_of_str(tags: list[str]) -> str:
    """Tag something."""
    return ",".join(tags)


def tuples(pair: tuple[int, str], many: tuple[float, ...], anything: tuple) -> str:  # type: ignore[type-arg]
    """Take tuples."""
    return str(pair)


def dict_floats(weights: dict[str, float]) -> str:
    """Weigh things by name."""
    return str(weights)


def str_enum(color: Color) -> str:
    """Paint."""
    return color.value


def int_enum_default(level: Level = Level.LOW) -> str:
    """Set a level."""
    return level.name


def dataclass_param(point: Point) -> str:
    """Click somewhere.

    Args:
        point: Where to click, in pixels.
    """
    return str(point)


def nested_dataclass_list(shapes: list[Shape]) -> str:
    """Draw shapes."""
    return str(shapes)


def pydantic_model(query: Query) -> str:
    """Run a query."""
    return query.text


def optional_model(query: Optional[Query] = None) -> str:
    """Run a query, or list everything."""
    return str(query)


def list_of_models(items: list[Item]) -> str:
    """Order items."""
    return str(items)


def typed_dict(row: Row) -> str:
    """Insert a row."""
    return str(row)


def nested_typed_dicts(batch: Batch | None) -> str:
    """Insert rows."""
    return str(batch)


def annotated_texts(city: Annotated[str, "The city, in English."], day: Annotated[datetime.date, "The day."]) -> str:
    """The weather."""
    return city


def annotated_fields(code: Annotated[str, Field(pattern=r"^[A-Z]{3}$")],
                     n: Annotated[int, Field(ge=1, le=100, description="How many.")] = 5,
                     x: Annotated[int, Field(title="Row count")] = 0) -> str:
    """Constrained values."""
    return code


def google_doc(path: str, encoding: str = "utf-8", strict: bool = True) -> str:
    """Read a text file.

    The whole file is read at once.

    Args:
        path: The file, relative to the
            working directory.
        encoding (str, optional): Its text encoding.

    Returns:
        The text.
    """
    return path


def numpy_doc(a: int, b: float) -> float:
    """Add two numbers.

    Parameters
    ----------
    a : int
        The first.
    b : float
        The second
        one.

    Returns
    -------
    float
        The sum.
    """
    return a + b


def annotation_beats_docstring(x: Annotated[int, "From the annotation."], y: int) -> int:
    """Both say something.

    Args:
        x: From the docstring.
        y: Only the docstring.
    """
    return x


def untyped(value, other=3, marker: object = SENTINEL):  # type: ignore[no-untyped-def]
    """Anything goes."""
    return value


def positional_only(a: int, /, b: int = 2) -> int:
    """Add."""
    return a + b


async def async_fetch(url: str, timeout: float = 10.0) -> str:
    """Fetch a page."""
    return url


def enum_in_dataclass(mark: Mark) -> str:
    """Mark a spot."""
    return str(mark)


CASES: list[tuple[Any, dict[str, Any]]] = [
    (plain_types, obj({"text": {"type": "string"}, "count": {"type": "integer"}, "ratio": {"type": "number"},
                       "flag": {"type": "boolean"}}, ["text", "count", "ratio", "flag"])),
    (with_defaults, obj({"query": {"type": "string"}, "limit": {"type": "integer", "default": 10},
                         "exact": {"type": "boolean", "default": False}, "sep": {"type": "string", "default": ","}},
                        ["query"])),
    (optional_typing, obj({"name": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}}, [])),
    (optional_pipe, obj({"limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}, ["limit"])),
    (literal_strs, obj({"mode": {"enum": ["fast", "slow"], "type": "string", "default": "fast"}}, [])),
    (literal_ints, obj({"level": {"enum": [1, 2, 3], "type": "integer"}, "kind": {"const": "csv", "type": "string"}},
                       ["level", "kind"])),
    (list_of_str, obj({"tags": {"type": "array", "items": {"type": "string"}}}, ["tags"])),
    (tuples, obj({"pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2,
                           "maxItems": 2},
                  "many": {"type": "array", "items": {"type": "number"}},
                  "anything": {"type": "array", "items": {}}}, ["pair", "many", "anything"])),
    (dict_floats, obj({"weights": {"type": "object", "additionalProperties": {"type": "number"}}}, ["weights"])),
    (str_enum, obj({"color": COLOR}, ["color"])),
    (int_enum_default, obj({"level": {"enum": [1, 2, 3], "type": "integer", "default": 1}}, [])),
    (dataclass_param, obj({"point": {**POINT, "description": "Where to click, in pixels."}}, ["point"])),
    (nested_dataclass_list, obj({"shapes": {"type": "array", "items": {
        "type": "object", "description": "A polygon.",
        "properties": {"name": {"type": "string"}, "points": {"type": "array", "items": POINT},
                       "closed": {"type": "boolean", "default": False}},
        "required": ["name", "points"]}}}, ["shapes"])),
    (pydantic_model, obj({"query": QUERY}, ["query"])),
    (optional_model, obj({"query": {"anyOf": [QUERY, {"type": "null"}], "default": None}}, [])),
    (list_of_models, obj({"items": {"type": "array", "items": obj({"sku": {"type": "string"},
                                                                   "quantity": {"type": "integer", "default": 1}},
                                                                  ["sku"])}}, ["items"])),
    (typed_dict, obj({"row": obj({"id": {"type": "integer"}, "label": {"type": "string"}}, ["id"])}, ["row"])),
    (nested_typed_dicts, obj({"batch": {"anyOf": [{
        "type": "object", "description": "Rows to insert together.",
        "properties": {"table": {"type": "string"},
                       "rows": {"type": "array", "items": obj({"id": {"type": "integer"}, "label": {"type": "string"}},
                                                              ["id"])}},
        "required": ["table", "rows"]}, {"type": "null"}]}}, ["batch"])),
    (annotated_texts, obj({"city": {"type": "string", "description": "The city, in English."},
                           "day": {"type": "string", "format": "date", "description": "The day."}}, ["city", "day"])),
    (annotated_fields, obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                            "n": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How many.",
                                  "default": 5},
                            "x": {"type": "integer", "title": "Row count", "default": 0}}, ["code"])),
    (google_doc, obj({"path": {"type": "string", "description": "The file, relative to the working directory."},
                      "encoding": {"type": "string", "default": "utf-8", "description": "Its text encoding."},
                      "strict": {"type": "boolean", "default": True}}, ["path"])),
    (numpy_doc, obj({"a": {"type": "integer", "description": "The first."},
                     "b": {"type": "number", "description": "The second one."}}, ["a", "b"])),
    (annotation_beats_docstring, obj({"x": {"type": "integer", "description": "From the annotation."},
                                      "y": {"type": "integer", "description": "Only the docstring."}}, ["x", "y"])),
    (untyped, obj({"value": {}, "other": {"default": 3}, "marker": {}}, ["value"])),
    (positional_only, obj({"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}}, ["a"])),
    (async_fetch, obj({"url": {"type": "string"}, "timeout": {"type": "number", "default": 10.0}}, ["url"])),
    (enum_in_dataclass, obj({"mark": obj({"color": COLOR, "note": {"type": "string", "default": ""}}, ["color"])},
                            ["mark"])),
]


def _id(case: tuple[Any, dict[str, Any]]) -> str:
    return case[0].__name__


@pytest.fixture(scope="module")
def api(emulator: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(api_key=emulator.api_key, base_url=emulator.base_url, max_retries=0)
    yield client
    client.close()


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_schema(case: tuple[Any, dict[str, Any]]) -> None:
    func, expected = case
    assert ToolSignature(func).input_schema == expected


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_the_emulator_accepts_the_schema(case: tuple[Any, dict[str, Any]], api: anthropic.Anthropic) -> None:
    func, expected = case
    tool = {"type": "custom", **ToolSignature(func).definition()}
    assert tool["input_schema"] == expected
    agent = api.beta.agents.create(name=f"schema {func.__name__}", model="claude-sonnet-4-5", tools=[tool])
    assert agent.to_dict()["tools"] == [tool]


def test_schemas_are_flat_and_free_of_name_titles() -> None:
    for func, _ in CASES:
        for node in _walk(ToolSignature(func).input_schema):
            if isinstance(node, dict):
                assert not {"$ref", "$defs", "definitions"} & set(node), func.__name__
                assert node.get("additionalProperties") not in (True, False), func.__name__
                assert node.get("title") in (None, "Row count"), func.__name__


def test_the_emulator_refuses_what_pydantic_emits_unflattened(api: anthropic.Anthropic) -> None:
    raw = pydantic.TypeAdapter(Shape).json_schema()  # Point is in $defs, referenced from Shape
    tool = {"type": "custom", "name": "raw", "description": "Unflattened.", "input_schema": raw}
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.beta.agents.create(name="raw", model="claude-sonnet-4-5", tools=[tool])
    assert "custom tool 'raw'" in str(caught.value) and "input_schema has $defs" in str(caught.value)


def test_definition_and_descriptions() -> None:
    sig = ToolSignature(google_doc)
    assert sig.definition() == {
        "name": "google_doc",
        "description": "Read a text file.\n\nThe whole file is read at once.\n\nReturns:\n    The text.",
        "input_schema": sig.input_schema,
    }
    assert ToolSignature(numpy_doc).description == "Add two numbers.\n\nReturns\n-------\nfloat\n    The sum."
    assert ToolSignature(plain_types).description == "Echo the four basic JSON types."
    assert sig.parameters == ["path", "encoding", "strict"]
    renamed = ToolSignature(plain_types, name="echo-4", description="Say it back.")
    assert renamed.definition()["name"] == "echo-4" and renamed.description == "Say it back."
    # the schema is a copy: changing it changes nothing in the signature
    sig.input_schema["properties"].clear()
    assert sig.input_schema["properties"]


def test_sphinx_docstrings_describe_parameters() -> None:
    def lookup(word: str, limit: int = 3) -> str:
        """Look a word up.

        :param word: The word,
            in lower case.
        :param int limit: At most this many senses.
        :type word: str
        """
        return word

    sig = ToolSignature(lookup)
    assert sig.description == "Look a word up."
    assert sig.input_schema["properties"] == {
        "word": {"type": "string", "description": "The word, in lower case."},
        "limit": {"type": "integer", "default": 3, "description": "At most this many senses."},
    }


def test_async_and_bound_methods() -> None:
    assert ToolSignature(async_fetch).is_async
    assert not ToolSignature(plain_types).is_async

    class Greeter:
        def greet(self, name: str) -> str:
            """Greet someone."""
            return f"hi {name}"

    sig = ToolSignature(Greeter().greet)
    assert sig.name == "greet" and sig.input_schema == obj({"name": {"type": "string"}}, ["name"])
    args, kwargs = sig.bind({"name": "Ada"})
    assert Greeter().greet(*args, **kwargs) == "hi Ada"


# --------------------------------------------------------------------------- refusals


def no_docstring(x: int) -> int:
    return x


def star_args(*values: int) -> int:
    """Sum."""
    return sum(values)


def star_kwargs(**options: str) -> str:
    """Options."""
    return str(options)


def recursive_dataclass(tree: Tree) -> str:
    """Walk a tree."""
    return str(tree)


def recursive_typed_dict(outline: Outline) -> str:
    """Print an outline."""
    return outline["title"]


def recursive_model(chain: Chain) -> str:
    """Follow a chain."""
    return chain.name


def lookahead(password: Annotated[str, Field(pattern=r"^(?=.*\d)\w{8,}$")]) -> str:
    """Check a password."""
    return password


def lookbehind(word: Annotated[str, Field(pattern=r"(?<!un)happy")]) -> str:
    """Happy words."""
    return word


def backreference(word: Annotated[str, Field(pattern=r"^(\w)\w*\1$")]) -> str:
    """Words that end as they start."""
    return word


def named_backreference(word: Annotated[str, Field(pattern=r"^(?P<c>\w)\w*(?P=c)$")]) -> str:
    """Words that end as they start."""
    return word


@dataclasses.dataclass
class Tagged:
    tag: Annotated[str, Field(pattern=r"^#(?!\d)\w+$")]


def nested_lookahead(tags: list[Tagged]) -> str:
    """Tags."""
    return str(tags)


class Frame:
    """Not JSON."""


def not_json(frame: Frame) -> str:
    """Take a frame."""
    return str(frame)


def stale_docstring(query: str) -> str:
    """Search.

    Args:
        q: The query.
    """
    return query


def field_default(n: int = Field(3, ge=1)) -> int:  # type: ignore[assignment]
    """Count."""
    return n


def unicode_name(größe: int) -> int:
    """A size."""
    return größe


def unresolved(x: NoSuchType) -> str:  # type: ignore[name-defined]  # noqa: F821
    """Unresolved."""
    return str(x)


REFUSALS = [
    (no_docstring, ["no_docstring()", "no docstring", "write one"]),
    (star_args, ["star_args()", "*values", "named parameters", "values: list[str]"]),
    (star_kwargs, ["star_kwargs()", "**options", "options: dict[str, str]"]),
    (recursive_dataclass, ["recursive_dataclass()", "'tree'", "Tree contains itself", "recursive"]),
    (recursive_typed_dict, ["recursive_typed_dict()", "'outline'", "Outline contains itself"]),
    (recursive_model, ["recursive_model()", "'chain'", "Chain contains itself"]),
    (lookahead, ["lookahead()", "'password'", "a lookahead ((?=)", "rewrite it"]),
    (lookbehind, ["lookbehind()", "'word'", "a negative lookbehind ((?<!)"]),
    (backreference, ["backreference()", "'word'", "a backreference (\\1)"]),
    (named_backreference, ["named_backreference()", "'word'", "a named backreference ((?P=name))"]),
    (nested_lookahead, ["nested_lookahead()", "'tags'", "at tags[].tag", "a negative lookahead ((?!)"]),
    (not_json, ["not_json()", "'frame'", "Frame has no JSON form", "build the object inside the function"]),
    (stale_docstring, ["stale_docstring()", "describes 'q'", "not a parameter"]),
    (field_default, ["field_default()", "'n'", "Annotated[T, Field(...)] = <default>"]),
    (unicode_name, ["unicode_name()", "'größe'", "rename it"]),
    (unresolved, ["unresolved()", "'x'", "NoSuchType", "cannot be resolved"]),
]


@pytest.mark.parametrize("case", REFUSALS, ids=_id)
def test_refusals(case: tuple[Any, list[str]]) -> None:
    func, phrases = case
    with pytest.raises(ToolSchemaError) as caught:
        ToolSignature(func)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
    assert "pydantic.dev" not in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", ["", "has space", "dots.not.allowed", "x" * 65, "<lambda>"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ToolSchemaError, match="cannot be a tool name.*1 to 64 letters"):
        ToolSignature(plain_types, name=name)


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(ToolSchemaError, match="a lambda has none: use def"):
        ToolSignature(lambda x: x)
    assert ToolSignature(plain_types, name="x" * 64).name == "x" * 64


def test_patterns_that_only_look_like_lookarounds_pass() -> None:
    def code(value: Annotated[str, Field(pattern=r"^\(?=[(?=]\\1[\1]$")]) -> str:
        """A code."""
        return value

    assert ToolSignature(code).input_schema["properties"]["value"]["pattern"] == r"^\(?=[(?=]\\1[\1]$"


# --------------------------------------------------------------------------- validate and bind


def test_validate_converts_to_python_types() -> None:
    values = ToolSignature(nested_dataclass_list).validate(
        {"shapes": [{"name": "tri", "points": [{"x": 0}, {"x": 1, "y": 2}, {"x": 0, "y": 1}], "closed": True}]})
    assert values == {"shapes": [Shape("tri", [Point(0.0), Point(1.0, 2.0), Point(0.0, 1.0)], True)]}

    assert ToolSignature(str_enum).validate({"color": "green"}) == {"color": Color.GREEN}
    query = ToolSignature(pydantic_model).validate({"query": {"text": "cats", "code": "AB12"}})["query"]
    assert isinstance(query, Query) and (query.text, query.limit) == ("cats", 10)
    assert ToolSignature(tuples).validate({"pair": [1, "a"], "many": [1.5, 2], "anything": [None, "x"]}) == {
        "pair": (1, "a"), "many": (1.5, 2.0), "anything": (None, "x")}
    assert ToolSignature(typed_dict).validate({"row": {"id": 7}}) == {"row": {"id": 7}}
    assert ToolSignature(annotated_texts).validate({"city": "Oslo", "day": "2024-05-06"}) == {
        "city": "Oslo", "day": datetime.date(2024, 5, 6)}
    assert ToolSignature(dict_floats).validate({"weights": {"a": 1, "b": 0.5}}) == {"weights": {"a": 1.0, "b": 0.5}}
    assert ToolSignature(enum_in_dataclass).validate({"mark": {"color": "red"}}) == {"mark": Mark(Color.RED)}
    assert ToolSignature(untyped).validate({"value": {"any": ["json"]}}) == {"value": {"any": ["json"]}}


def test_omitted_parameters_are_left_to_the_function() -> None:
    sig = ToolSignature(int_enum_default)
    assert sig.validate({}) == {}
    assert sig.validate({"level": 3}) == {"level": Level.HIGH}
    # a default with no JSON form is never copied, never sent, and still the function's
    args, kwargs = ToolSignature(untyped).bind({"value": 1})
    assert (args, kwargs) == ([], {"value": 1})
    assert untyped(*args, **kwargs) == 1


def test_bind_puts_positional_only_parameters_in_args() -> None:
    sig = ToolSignature(positional_only)
    assert sig.bind({"a": 1}) == ([1], {})
    assert sig.bind({"a": 1, "b": 5}) == ([1], {"b": 5})
    args, kwargs = sig.bind({"a": "4"})
    assert positional_only(*args, **kwargs) == 6


def test_invalid_input_names_each_field() -> None:
    sig = ToolSignature(nested_dataclass_list)
    with pytest.raises(ToolInputError) as caught:
        sig.validate({"shapes": [{"name": "tri", "points": [{"x": "left"}, {"y": 1}], "sides": 3}], "colour": "red"})
    error = caught.value
    message = str(error)
    assert message.splitlines() == [
        "invalid input for tool 'nested_dataclass_list'; fix these and call it again:",
        '- shapes[0].points[0].x: Input should be a valid number, unable to parse string as a number (got "left")',
        "- shapes[0].points[1].x: missing; this field is required",
        "- shapes[0].sides: not a field of this object; remove it",
        "- colour: not a parameter of this tool; its parameters are: shapes",
    ]
    assert error.tool == "nested_dataclass_list"
    assert ("colour", "not a parameter of this tool; its parameters are: shapes") in error.errors
    assert isinstance(error, ValueError) and "pydantic" not in message


def test_invalid_input_for_enums_literals_models_and_constraints() -> None:
    with pytest.raises(ToolInputError) as caught:
        ToolSignature(str_enum).validate({"color": "purple"})
    assert "- color: Input should be 'red', 'green' or 'blue' (got \"purple\")" in str(caught.value)

    with pytest.raises(ToolInputError) as caught:
        ToolSignature(literal_ints).validate({"level": 4})
    assert str(caught.value).splitlines()[1:] == [
        "- level: Input should be 1, 2 or 3 (got 4)",
        "- kind: missing; this field is required",
    ]

    with pytest.raises(ToolInputError) as caught:
        ToolSignature(pydantic_model).validate({"query": {"text": "", "code": "ab12", "limit": 99}})
    assert str(caught.value).splitlines()[1:] == [
        "- query.text: String should have at least 1 character (got \"\")",
        "- query.code: String should match pattern '^[A-Z]{2}\\d{2}$' (got \"ab12\")",
        "- query.limit: Input should be less than or equal to 50 (got 99)",
    ]

    with pytest.raises(ToolInputError) as caught:
        ToolSignature(annotated_fields).validate({"code": "abc", "n": 0})
    assert str(caught.value).splitlines()[1:] == [
        "- code: String should match pattern '^[A-Z]{3}$' (got \"abc\")",
        "- n: Input should be greater than or equal to 1 (got 0)",
    ]


def test_input_that_is_not_an_object() -> None:
    with pytest.raises(ToolInputError, match=r"must be a JSON object of the tool's parameters \(query, limit, exact, sep\), not \[1\]"):
        ToolSignature(with_defaults).validate([1])


def test_a_long_list_of_errors_is_cut() -> None:
    def many(values: list[int]) -> int:
        """Sum."""
        return sum(values)

    with pytest.raises(ToolInputError) as caught:
        ToolSignature(many).validate({"values": ["x"] * 30})
    lines = str(caught.value).splitlines()
    assert len(lines) == 22 and lines[-1] == "- … and 10 more"
    assert len(caught.value.errors) == 30
