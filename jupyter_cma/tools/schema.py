"""A notebook tool's definition, built from a plain Python function.

`ToolSignature(func)` reads the function's name, docstring, type hints and
defaults and makes what the Managed Agents API takes for a custom tool:

    >>> def lookup(word: str, limit: int = 5) -> str:
    ...     '''Look a word up in the dictionary.
    ...
    ...     Args:
    ...         word: The word, in lower case.
    ...     '''
    >>> ToolSignature(lookup).definition()
    {'name': 'lookup', 'description': 'Look a word up in the dictionary.',
     'input_schema': {'type': 'object',
                      'properties': {'word': {'description': 'The word, in lower case.', 'type': 'string'},
                                     'limit': {'default': 5, 'type': 'integer'}},
                      'required': ['word']}}

and turns the input the model sends back into the arguments the function
expects (`validate`, `bind`): a dataclass parameter receives a dataclass, an
Enum parameter a member, a pydantic model parameter a model.

pydantic makes the schema; it is then written out in full (no `$ref` or
`$defs`, which the API does not resolve), stripped of the titles pydantic
derives from names and of `additionalProperties: false` (the Agents API
refuses it on a custom tool; `validate` refuses unknown fields itself), and
checked for what the API refuses: regular expressions with lookarounds or
backreferences, property names outside `[A-Za-z0-9_.-]{1,64}`. A function
that cannot become a tool raises `ToolSchemaError` when the tool is defined,
naming the parameter and the fix.

This module is imported when a notebook defines a tool, inside the kernel: it
imports nothing of the server. It is long because it does one thing in full —
a signature in, a schema the API accepts out, and the input back in — and each
part of that needs the others' rules (what is flattened is what is checked).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import math
import re
import typing
import warnings
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, Union

import pydantic
import pydantic_core
import typing_extensions
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["ToolInputError", "ToolSchemaError", "ToolSignature"]

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The API's rule for the keys of an input schema's `properties`.
PROPERTY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ERRORS_SHOWN = 20

# Keywords whose value is a subschema, a list of them, or a map of names to them. Walking only these
# keeps `default`, `enum`, `const` and `examples` (data, not schemas) out of the checks, and a property
# merely *named* "pattern" or "$ref" is a name, not a keyword.
_SUBSCHEMA = ("additionalProperties", "items", "additionalItems", "contains", "propertyNames", "not", "if", "then",
              "else", "unevaluatedItems", "unevaluatedProperties")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas")
_DATA = ("default", "enum", "const", "examples")


class ToolSchemaError(ValueError):
    """A function that cannot become a tool: the message says which function and parameter, and what to change."""


class ToolInputError(ValueError):
    """The model's input does not fit the tool's parameters.

    The message lists each bad field on a line of its own, in words the model
    can act on; `errors` holds the same as `(field, problem)` pairs.
    """

    def __init__(self, tool: str, errors: list[tuple[str, str]]) -> None:
        self.tool = tool
        self.errors = errors
        lines = [f"- {field}: {problem}" if field else f"- {problem}" for field, problem in errors[:MAX_ERRORS_SHOWN]]
        if len(errors) > MAX_ERRORS_SHOWN:
            lines.append(f"- … and {len(errors) - MAX_ERRORS_SHOWN} more")
        super().__init__(f"invalid input for tool {tool!r}; fix these and call it again:\n" + "\n".join(lines))


@dataclasses.dataclass(frozen=True)
class _Param:
    name: str
    field: str  # the name inside the pydantic models: parameter names may clash with BaseModel's own
    kind: inspect._ParameterKind
    default: Any  # inspect.Parameter.empty when there is none


class ToolSignature:
    """A function as a custom tool: its name, description, input schema, and the binding of an input to a call.

    `func` is a function or coroutine function (a bound method works too: its
    `self` is already bound). `name` defaults to the function's `__name__`;
    `description` to its docstring, less the "Args:" (Google), "Parameters"
    (NumPy) or ":param x:" (Sphinx) entries, which describe the properties.
    Raises `ToolSchemaError` for whatever the API would refuse or the input
    could never carry (`*args`, `**kwargs`, a recursive type, a type with no
    JSON form).
    """

    def __init__(self, func: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> None:
        if not callable(func):
            raise ToolSchemaError(f"a tool is made from a function, not from {type(func).__name__} {func!r}")
        self.function = func
        target = func.func if isinstance(func, functools.partial) else func
        self.name = _tool_name(func, name)
        self._label = f"tool {self.name}()"
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(getattr(target, "__call__", None))

        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise ToolSchemaError(f"{self._label}: its signature cannot be read ({exc}); define it with def") from None
        summary, documented = _parse_docstring(inspect.getdoc(target) or "")
        if description is None:
            if not summary:
                raise ToolSchemaError(
                    f"{self._label} has no docstring: write one saying what the tool does and when to use it "
                    f"(the model reads it to decide), and describe each parameter under 'Args:'")
            description = summary
        elif not description.strip():
            raise ToolSchemaError(f"{self._label}: the description is empty; say what the tool does and when to use it")
        self.description = description.strip()

        hints = self._type_hints(target, signature)
        self._params: list[_Param] = []
        fields: dict[str, tuple[Any, FieldInfo]] = {}
        check_fields: dict[str, tuple[Any, FieldInfo]] = {}
        for index, param in enumerate(signature.parameters.values()):
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                stars, instead = ("*", "list[str]") if param.kind is param.VAR_POSITIONAL else ("**", "dict[str, str]")
                raise ToolSchemaError(
                    f"{self._label}: parameter {stars}{param.name} cannot be a tool input, since the model sends one "
                    f"JSON object of named values; replace it with named parameters, or with one parameter that holds "
                    f"them all (say, `{param.name}: {instead}`)")
            if isinstance(param.default, FieldInfo):
                raise ToolSchemaError(
                    f"{self._label}: parameter {param.name!r} has a pydantic Field(...) as its default; put the Field in "
                    f"the annotation and the default after it: `{param.name}: Annotated[T, Field(...)] = <default>`")
            if not PROPERTY_NAME.fullmatch(param.name):
                raise ToolSchemaError(
                    f"{self._label}: parameter {param.name!r} cannot be a property name of a tool's input (letters "
                    f"A-Z and a-z, digits, '_', '.' or '-', at most 64); rename it")
            field = f"p{index}"
            self._params.append(_Param(param.name, field, param.kind, param.default))
            try:
                annotation, info = _field(hints.get(param.name, Any), param, documented.pop(param.name, None))
            except _Recursive as exc:
                raise self._recursive(param.name, exc.name) from None
            fields[field] = (annotation, info)
            # The model that validates never applies a default (an omitted argument is left to Python), so it
            # gets a cheap stand-in: pydantic would deep-copy a default such as a DataFrame on every call.
            check_fields[field] = (annotation, _without_default(info, param))
        if documented:
            # A renamed parameter whose description stayed behind: the model would lose that description.
            names = ", ".join(repr(n) for n in documented)
            one = len(documented) == 1
            raise ToolSchemaError(
                f"{self._label}: the docstring describes {names}, which {'is not a parameter' if one else 'are not parameters'} "
                f"of the function; rename {'it' if one else 'them'} to match the signature, or remove {'it' if one else 'them'}")

        # Python's regular expressions accept lookarounds and backreferences, Rust's do not: the schema is made
        # with Python's, so that such a pattern reaches the check below and gets its own message.
        schema_model = self._model(fields, regex_engine="python-re")
        self._input_schema = self._schema(schema_model)
        try:
            self._checker = self._model(check_fields, regex_engine="rust-regex")
        except ToolSchemaError:
            # A pattern only Python's engine understands (which the schema check let through).
            self._checker = self._model(check_fields, regex_engine="python-re")

    # ------------------------------------------------------------------ public

    @property
    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's input (a fresh copy): `{"type": "object", "properties", "required"}`."""
        return copy.deepcopy(self._input_schema)

    @property
    def parameters(self) -> list[str]:
        """The parameter names, in the signature's order."""
        return [p.name for p in self._params]

    def definition(self) -> dict[str, Any]:
        """`{"name", "description", "input_schema"}`, as a custom tool's definition takes them."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}

    def validate(self, input: Any) -> dict[str, Any]:
        """The model's input as keyword arguments: only the parameters it gave, converted to their Python types.

        Raises `ToolInputError` listing every bad, missing or unknown field.
        """
        if not isinstance(input, dict):
            raise ToolInputError(self.name, [("", f"the input must be a JSON object of the tool's parameters "
                                                 f"({', '.join(self.parameters) or 'it has none'}), not {_short(input)}")])
        try:
            checked = self._checker.model_validate(input)
        except pydantic.ValidationError as exc:
            raise ToolInputError(self.name, [self._explain(error) for error in exc.errors(include_url=False)]) from None
        given = checked.model_fields_set
        return {p.name: getattr(checked, p.field) for p in self._params if p.field in given}

    def bind(self, input: Any) -> tuple[list[Any], dict[str, Any]]:
        """The model's input as `(args, kwargs)` for `func(*args, **kwargs)`.

        Positional-only parameters go into `args` (an omitted one before a given
        one gets its default); every other parameter the input gives goes into
        `kwargs`, and an omitted one is left to the function's own default.
        """
        values = self.validate(input)
        positional = [p for p in self._params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
        given = [i for i, p in enumerate(positional) if p.name in values]
        args = [values.pop(p.name) if p.name in values else p.default for p in positional[: given[-1] + 1 if given else 0]]
        return args, values

    def __repr__(self) -> str:
        return f"ToolSignature({self.name!r}, parameters={self.parameters})"

    # ------------------------------------------------------------------ building

    def _type_hints(self, target: Any, signature: inspect.Signature) -> dict[str, Any]:
        hint_of = target.__call__ if not inspect.isroutine(target) and hasattr(target, "__call__") else target
        try:
            return typing.get_type_hints(hint_of, include_extras=True)
        except Exception:  # noqa: BLE001 — any failure is reported per parameter below
            pass
        namespace = getattr(inspect.unwrap(hint_of), "__globals__", {})
        hints: dict[str, Any] = {}
        for param in signature.parameters.values():
            annotation = param.annotation
            if annotation is param.empty:
                continue
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)  # noqa: S307 — the user's own annotation, in its module
                except Exception as exc:  # noqa: BLE001
                    raise ToolSchemaError(
                        f"{self._label}: the type of parameter {param.name!r}, {param.annotation!r}, cannot be "
                        f"resolved ({type(exc).__name__}: {exc}); define or import what it names at the top level "
                        f"of the notebook or module before defining the tool") from None
            hints[param.name] = annotation
        return hints

    def _model(self, fields: dict[str, tuple[Any, FieldInfo]], *, regex_engine: str) -> type[pydantic.BaseModel]:
        config = pydantic.ConfigDict(extra="forbid", regex_engine=regex_engine, arbitrary_types_allowed=False)  # type: ignore[typeddict-item]
        try:
            return pydantic.create_model(f"{self.name}_input", __config__=config, **fields)  # type: ignore[call-overload]
        except Exception as whole:  # noqa: BLE001 — pydantic raises several kinds; each becomes one message
            for field, spec in fields.items():  # find the parameter to blame
                try:
                    pydantic.create_model("probe", __config__=config, x=spec)  # type: ignore[call-overload]
                except Exception as exc:  # noqa: BLE001
                    raise ToolSchemaError(f"{self._label}: parameter {self._param(field).name!r}: {_type_problem(exc, spec[0])}") from None
            raise ToolSchemaError(f"{self._label}: {_type_problem(whole, None)}") from None

    def _schema(self, model: type[pydantic.BaseModel]) -> dict[str, Any]:
        with warnings.catch_warnings():
            # A default with no JSON form is left out of the schema; pydantic warns about it each time.
            warnings.simplefilter("ignore", pydantic.json_schema.PydanticJsonSchemaWarning)
            try:
                raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_NamelessTitles)
            except Exception:  # noqa: BLE001
                for param in self._params:
                    spec = model.model_fields[param.field]
                    try:
                        hint = Annotated[spec.annotation, *spec.metadata] if spec.metadata else spec.annotation  # type: ignore[misc]
                        pydantic.TypeAdapter(hint).json_schema()
                    except Exception as exc:  # noqa: BLE001
                        raise ToolSchemaError(f"{self._label}: parameter {param.name!r}: {_type_problem(exc, spec.annotation)}") from None
                raise
        definitions = raw.get("$defs", {})
        properties: dict[str, Any] = {}
        for param in self._params:
            prop = raw["properties"][param.name]
            try:
                prop = _inline(prop, definitions, ())
            except _Recursive as exc:
                raise self._recursive(param.name, exc.name) from None
            for problem in _problems(prop, param.name):
                raise ToolSchemaError(f"{self._label}: parameter {param.name!r}: {problem}")
            properties[param.name] = _tidy(prop)
        return {"type": "object", "properties": properties, "required": list(raw.get("required", []))}

    def _recursive(self, param: str, type_name: str) -> ToolSchemaError:
        return ToolSchemaError(
            f"{self._label}: parameter {param!r}: its type {type_name} contains itself, and a tool's input schema "
            f"must be written out in full, without references, so a recursive type cannot be one; take a "
            f"non-recursive shape instead (say, a flat list of items that name their parent), or a JSON string "
            f"you parse in the function")

    def _param(self, field: str) -> _Param:
        return next(p for p in self._params if p.field == field)

    # ------------------------------------------------------------------ errors for the model

    def _explain(self, error: Any) -> tuple[str, str]:
        loc = list(error.get("loc", ()))
        kind = error.get("type", "")
        where = _location(loc)
        if kind == "missing":
            return where, "missing; this field is required"
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            if len(loc) == 1:
                return where, f"not a parameter of this tool; its parameters are: {', '.join(self.parameters) or '(none)'}"
            return where, "not a field of this object; remove it"
        message = str(error.get("msg", "invalid value"))
        return where, f"{message} (got {_short(error.get('input'))})"


class _NamelessTitles(GenerateJsonSchema):
    """pydantic's JSON schema without the titles it derives from names (a field's, a class's): they repeat what
    the property names already say and cost the model tokens. A title given explicitly is kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._class_names: set[str] = set()

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> JsonSchemaValue:
        result = super().generate(schema, mode)
        # An Enum's title is added after enum_schema (by a function pydantic attaches to its core schema).
        for definition in result.get("$defs", {}).values():
            if definition.get("title") in self._class_names:
                definition.pop("title")
        return result

    def _untitled(self, schema: Any, result: JsonSchemaValue) -> JsonSchemaValue:
        cls = schema.get("cls")
        if cls is not None:
            self._class_names.add(cls.__name__)
            if result.get("title") == cls.__name__:
                result.pop("title")
        return result

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        return self._untitled(schema, super().model_schema(schema))

    def dataclass_schema(self, schema: core_schema.DataclassSchema) -> JsonSchemaValue:
        return self._untitled(schema, super().dataclass_schema(schema))

    def typed_dict_schema(self, schema: core_schema.TypedDictSchema) -> JsonSchemaValue:
        return self._untitled(schema, super().typed_dict_schema(schema))

    def enum_schema(self, schema: core_schema.EnumSchema) -> JsonSchemaValue:
        return self._untitled(schema, super().enum_schema(schema))


# ---------------------------------------------------------------------- names and docstrings


def _tool_name(func: Any, name: str | None) -> str:
    target = func.func if isinstance(func, functools.partial) else func
    if name is None:
        name = getattr(target, "__name__", None)
        if not isinstance(name, str) or isinstance(func, functools.partial):
            raise ToolSchemaError(f"{func!r} has no name of its own; give the tool one (name='...')")
        if not TOOL_NAME.fullmatch(name):
            hint = " (a lambda has none: use def)" if name == "<lambda>" else ""
            raise ToolSchemaError(
                f"the function name {name!r} cannot be a tool name{hint}: a tool name is 1 to 64 letters A-Z and a-z, "
                f"digits, '_' or '-'; rename the function or give the tool a name (name='...')")
        return name
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise ToolSchemaError(
            f"{name!r} cannot be a tool name: a tool name is 1 to 64 letters A-Z and a-z, digits, '_' or '-'")
    return name


_GOOGLE_HEADER = re.compile(r"(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters)\s*:\s*")
_NUMPY_HEADER = re.compile(r"(Parameters|Other Parameters|Keyword Arguments)\s*")
_NUMPY_RULE = re.compile(r"\s*-{3,}\s*")
_GOOGLE_ENTRY = re.compile(r"(\*{0,2}[^\W\d]\w*)\s*(?:\([^)]*\))?\s*:(.*)")
_NUMPY_ENTRY = re.compile(r"(\*{0,2}[^\W\d]\w*(?:\s*,\s*\*{0,2}[^\W\d]\w*)*)\s*(?::.*)?")
_SPHINX_FIELD = re.compile(r":(param|parameter|arg|argument|key|keyword|type)\s+(?:[^:]*\s)?(\*{0,2}[^\W\d]\w*)\s*:(.*)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description, {parameter: its text}): the parameter sections taken out of the docstring.

    Understands Google ("Args:" and indented `name (type): text` entries),
    NumPy ("Parameters" over a dashed rule, `name : type` entries with their
    text indented below) and Sphinx (`:param name: text`) styles; every other
    section (Returns, Raises, Examples…) stays in the description.
    """
    lines = doc.expandtabs().splitlines()
    kept: list[str] = []
    params: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _GOOGLE_HEADER.fullmatch(stripped):
            i = _google_section(lines, i, params)
        elif _NUMPY_HEADER.fullmatch(stripped) and i + 1 < len(lines) and _NUMPY_RULE.fullmatch(lines[i + 1]):
            i = _numpy_section(lines, i, params)
        elif match := _SPHINX_FIELD.fullmatch(stripped):
            i += 1
            text = [match.group(3)]
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > _indent(line):
                text.append(lines[i])
                i += 1
            if match.group(1) != "type":
                params[match.group(2).lstrip("*")] = text
        else:
            kept.append(line.rstrip())
            i += 1
    description = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return description, {name: " ".join(t.strip() for t in text if t.strip()) for name, text in params.items()}


def _google_section(lines: list[str], start: int, params: dict[str, list[str]]) -> int:
    header = _indent(lines[start])
    i, entry_indent, current = start + 1, None, None
    while i < len(lines):
        line = lines[i]
        if line.strip():
            indent = _indent(line)
            if indent <= header:
                break
            if entry_indent is None:
                entry_indent = indent
            match = _GOOGLE_ENTRY.fullmatch(line.strip()) if indent <= entry_indent else None
            if match:
                current = params.setdefault(match.group(1).lstrip("*"), [])
                current.append(match.group(2))
            elif current is not None:
                current.append(line)
        i += 1
    return i


def _numpy_section(lines: list[str], start: int, params: dict[str, list[str]]) -> int:
    header = _indent(lines[start])
    i, current = start + 2, None
    while i < len(lines):
        line = lines[i]
        if line.strip():
            indent = _indent(line)
            if indent < header or (i + 1 < len(lines) and _NUMPY_RULE.fullmatch(lines[i + 1]) and indent == header):
                break  # the next section
            if indent == header:
                match = _NUMPY_ENTRY.fullmatch(line.strip())
                if not match:
                    break
                current = []
                for name in match.group(1).split(","):
                    params[name.strip().lstrip("*")] = current
            elif current is not None:
                current.append(line)
        i += 1
    return i


# ---------------------------------------------------------------------- fields


def _field(hint: Any, param: inspect.Parameter, documented: str | None) -> tuple[Any, FieldInfo]:
    """The pydantic field of one parameter: its type (TypedDicts made pydantic-ready, a plain-string
    `Annotated` description taken out) and a FieldInfo with its alias, default and description."""
    annotation = _pydantic_ready(hint)
    description = None
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        texts = [m for m in metadata if isinstance(m, str)]
        if texts:
            description = texts[-1].strip()
            metadata = [m for m in metadata if not isinstance(m, str)]
            annotation = Annotated[base, *metadata] if metadata else base  # type: ignore[valid-type]
        if any(isinstance(m, FieldInfo) and m.description for m in metadata):
            description = None  # Field(description=...) says it already
        elif description is None:
            description = documented
    else:
        description = documented
    kwargs: dict[str, Any] = {"alias": param.name}
    if description:
        kwargs["description"] = description
    if param.default is not param.empty:
        kwargs["default"] = param.default
    return annotation, pydantic.Field(**kwargs)


def _without_default(info: FieldInfo, param: inspect.Parameter) -> FieldInfo:
    if param.default is param.empty:
        return info
    return pydantic.Field(None, alias=info.alias, description=info.description)


def _pydantic_ready(hint: Any, seen: dict[int, Any] | None = None) -> Any:
    """`hint` with every `typing.TypedDict` in it (not inside a class's fields) rebuilt as a
    `typing_extensions.TypedDict`, the only kind pydantic takes on Python 3.11."""
    seen = {} if seen is None else seen
    if typing_extensions.is_typeddict(hint) and not isinstance(hint, typing_extensions._TypedDictMeta):  # type: ignore[attr-defined]
        if id(hint) in seen:
            if seen[id(hint)] is None:
                raise _Recursive(hint.__name__)
            return seen[id(hint)]
        seen[id(hint)] = None  # in progress
        try:
            fields = typing.get_type_hints(hint, include_extras=True)
        except Exception:  # noqa: BLE001 — left as is; pydantic says what is wrong with it
            seen[id(hint)] = hint
            return hint
        required = getattr(hint, "__required_keys__", frozenset(fields))
        wrapped = {}
        for key, value in fields.items():
            marker = typing_extensions.Required if key in required else typing_extensions.NotRequired
            # A written Required/NotRequired wins: with string annotations, __required_keys__ cannot see it.
            while typing.get_origin(value) in (typing_extensions.Required, typing_extensions.NotRequired):
                marker, value = typing.get_origin(value), typing.get_args(value)[0]
            wrapped[key] = marker[_pydantic_ready(value, seen)]
        rebuilt = typing_extensions.TypedDict(hint.__name__, wrapped)  # type: ignore[operator]
        rebuilt.__doc__ = hint.__doc__
        rebuilt.__module__ = hint.__module__
        seen[id(hint)] = rebuilt
        return rebuilt
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if not args or origin is Literal:
        return hint
    if origin is Annotated:
        return Annotated[_pydantic_ready(args[0], seen), *hint.__metadata__]  # type: ignore[valid-type]
    new = tuple(_pydantic_ready(a, seen) if a is not Ellipsis else a for a in args)
    if new == args:
        return hint
    if origin is Union or type(hint).__name__ == "UnionType":
        return Union[new]  # type: ignore[return-value]
    if origin is Callable or origin is typing.Callable:
        return hint
    try:
        return hint.copy_with(new) if hasattr(hint, "copy_with") else origin[new]
    except TypeError:
        return hint


def _type_problem(exc: BaseException, annotation: Any) -> str:
    """pydantic's complaint about a parameter's type, as advice without its URLs."""
    text = str(exc)
    text = re.sub(r"\s*For further information visit https?://\S+", "", text).strip()
    shown = " " + _type_name(annotation) if annotation is not None else ""
    if isinstance(exc, pydantic.errors.PydanticSchemaGenerationError) or "Unable to generate pydantic-core schema" in text:
        return (f"its type{shown} has no JSON form, so the model cannot send it; take "
                f"JSON-friendly values instead (str, int, float, bool, lists, dicts, dataclasses, pydantic models) "
                f"and build the object inside the function (say, a file path or a list of rows for a DataFrame)")
    if isinstance(exc, pydantic.errors.PydanticInvalidForJsonSchema):
        return (f"its type{shown} has no JSON form, so the model cannot send it; take JSON-friendly values instead "
                f"(str, int, float, bool, lists, dicts, dataclasses, pydantic models)")
    return text.replace("\n", " ")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


# ---------------------------------------------------------------------- schema post-processing


class _Recursive(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _inline(node: Any, definitions: dict[str, Any], stack: tuple[str, ...]) -> Any:
    """`node` with every `$ref` into `definitions` replaced by (a copy of) what it points at."""
    if isinstance(node, list):
        return [_inline(item, definitions, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in stack or name not in definitions:
            raise _Recursive(name)
        target = _inline(definitions[name], definitions, (*stack, name))
        siblings = {k: (v if k in _DATA else _inline(v, definitions, stack)) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}  # a field's own description or default wins over its type's
    return {key: (value if key in _DATA else _inline(value, definitions, stack))
            for key, value in node.items()}


def _subschemas(node: dict[str, Any], path: str) -> Iterator[tuple[Any, str]]:
    for key in _SUBSCHEMA:
        value = node.get(key)
        if isinstance(value, dict):
            yield value, path + {"items": "[]", "additionalProperties": "{}", "additionalItems": "[]"}.get(key, f" ({key})")
        elif key == "items" and isinstance(value, list):
            yield from ((v, f"{path}[{i}]") for i, v in enumerate(value))
    for key in _SUBSCHEMA_LISTS:
        for i, value in enumerate(node.get(key) or []):
            yield value, f"{path}[{i}]" if key == "prefixItems" else path
    for key in _SUBSCHEMA_MAPS:
        for name, value in (node.get(key) or {}).items():
            yield value, f"{path}.{name}"


def _problems(node: Any, path: str) -> Iterator[str]:
    """What the API would refuse in this (inlined) schema: regular expressions with lookarounds or
    backreferences, property names it does not allow."""
    if not isinstance(node, dict):
        return
    pattern = node.get("pattern")
    if isinstance(pattern, str) and (feature := _regex_problem(pattern)):
        yield (f"the pattern {pattern!r} (at {path}) uses {feature}, which the API's regular expressions do not "
               f"support; rewrite it without lookarounds or backreferences, or check the value inside the function")
    for key in (node.get("patternProperties") or {}):
        if feature := _regex_problem(key):
            yield f"the key pattern {key!r} (at {path}) uses {feature}, which the API does not support; rewrite it"
    for name in (node.get("properties") or {}):
        if not PROPERTY_NAME.fullmatch(name):
            yield (f"the field {name!r} (at {path}) cannot be a property name of a tool's input (letters A-Z and "
                   f"a-z, digits, '_', '.' or '-', at most 64); rename it or give it such an alias")
    for sub, subpath in _subschemas(node, path):
        yield from _problems(sub, subpath)


def _tidy(node: Any) -> Any:
    """Drop what the API refuses or does not need: `additionalProperties: true/false`, and defaults with no
    strict JSON form (NaN, infinities).

    The Agents API refuses `additionalProperties` on a custom tool's input schema (the SDK's own example
    strips pydantic's before creating an agent). Whether it minds the keyword deeper down is not known, so
    the boolean form goes everywhere: it only restates what `validate` enforces anyway. The schema form
    (a `dict[str, X]`'s value type) stays, as nothing else can say what the values are.
    """
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "additionalProperties" and isinstance(value, bool):
            continue
        if key == "default":
            if not _strict_json(value):
                continue
            out[key] = value
        elif key in _DATA:
            out[key] = value
        else:
            out[key] = _tidy(value)
    return out


def _strict_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _regex_problem(pattern: str) -> str | None:
    """The first regex feature the API refuses in `pattern` (a lookaround, a backreference), or None.

    Escapes and character classes are followed, so `\\(?=` (an optional literal
    parenthesis, then '=') and `[(?=]` are not lookaheads, and `[\\1]` is no
    backreference.
    """
    i, n, in_class = 0, len(pattern), False
    while i < n:
        char = pattern[i]
        if char == "\\":
            following = pattern[i + 1 : i + 2]
            if not in_class and following in tuple("123456789"):
                return f"a backreference (\\{following})"
            if not in_class and following == "k" and pattern[i + 2 : i + 3] in ("<", "{", "'"):
                return "a named backreference (\\k<name>)"
            i += 2
            continue
        if in_class:
            in_class = char != "]"
            i += 1
            continue
        if char == "[":
            in_class = True
            i += 1
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":  # a ']' first in a class is itself
                i += 1
            continue
        if char == "(" and pattern[i + 1 : i + 2] == "?":
            rest = pattern[i + 2 : i + 4]
            for start, feature in (("<=", "a lookbehind ((?<=)"), ("<!", "a negative lookbehind ((?<!)"),
                                   ("=", "a lookahead ((?=)"), ("!", "a negative lookahead ((?!)"),
                                   ("P=", "a named backreference ((?P=name))")):
                if rest.startswith(start):
                    return feature
        i += 1
    return None


# ---------------------------------------------------------------------- errors


def _location(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(pydantic_core.to_jsonable_python(value, fallback=repr), ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
