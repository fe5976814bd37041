"""Grammars (llama.cpp's GBNF) that make a local model's answer parse: tool calls and JSON.

A small model asked for a tool call often writes prose, or JSON that is almost right. Decoded
under a grammar, it can only write what parses. The grammars here accept exactly the text that
`json.dumps` (with `ensure_ascii=False`) writes for a valid value, because that is how tool
calls are rendered back into prompts and training examples (`chat.py`): what the model
generates under a grammar is then token for token what the exporter reproduces.

JSON schemas are supported as tools and structured outputs use them: objects (properties in
schema order; required ones always, optional ones may be left out), arrays, strings, integers,
numbers, booleans, null, `const`, `enum`, `anyOf`/`oneOf`, type lists, and `$ref` into `$defs`;
maps (`additionalProperties` with a schema, as pydantic writes `dict[str, int]`), objects that
allow no property at all, fixed-length tuples (`prefixItems`), and `minItems` (at least one)
and `maxItems` of arrays. Annotations (`title`, `description`, `default`) are ignored.

A string `pattern` made of one character class repeated (`^[0-9+*/ ().-]+$`) is enforced;
other keywords that constrain further (other patterns, `minimum`, `maxLength`...) are not: the
value still parses, and the tool validates it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tapeagents.errors import UsageError

__all__ = ["json_grammar", "tool_call_grammar"]

_BASE_RULES = {
    "string": r'"\"" char* "\""',
    "char": r'[^"\\\x00-\x1F] | "\\" ["\\bfnrt] | "\\u00" [01] [0-9a-f]',
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,17})',
    "number": r'integer ("." [0-9]{1,17})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": "object | array | string | number | boolean | null",
    "object": r'"{" ( string ": " value ( ", " string ": " value )* )? "}"',
    "array": r'"[" ( value ( ", " value )* )? "]"',
}
"""Any JSON value, written as `json.dumps` writes it."""


def tool_call_grammar(tools: list[dict[str, Any]], choice: str | Mapping[str, Any] | None) -> str:
    """A grammar whose sentences are one tool call in the form `chat.py` reads and writes:
    `{"name": "<tool>", "arguments": {...}}`, for the tools `choice` allows ("required": any;
    a `{"function": {"name": ...}}` dict or a name: that one)."""
    functions = [tool.get("function", tool) for tool in tools]
    if isinstance(choice, Mapping):
        wanted = choice.get("function", choice).get("name")
        functions = [f for f in functions if f.get("name") == wanted]
    elif choice not in (None, "auto", "required"):
        functions = [f for f in functions if f.get("name") == choice]
    if not functions:
        raise UsageError(f"tool_choice {choice!r} names no offered tool.")
    builder = _Builder()
    calls = []
    for function in functions:
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        builder.defs = parameters.get("$defs", {})
        arguments = builder.rule_for(parameters, f"{function['name']}-arguments")
        head = _literal('{"name": ' + json.dumps(function["name"], ensure_ascii=False) + ", ")
        calls.append(f'{head} "\\"arguments\\": " {arguments} "}}"')
    builder.rules["root"] = " | ".join(calls)
    return builder.grammar()


def json_grammar(schema: Mapping[str, Any]) -> str:
    """A grammar whose sentences are the JSON values valid under `schema`, as `json.dumps`
    writes them. `{"type": "json_object"}`-style requests pass `{"type": "object"}`."""
    if "json_schema" in schema:  # an OpenAI response_format
        schema = schema["json_schema"].get("schema", {})
    elif schema.get("type") == "json_object":
        schema = {"type": "object"}
    builder = _Builder()
    builder.defs = schema.get("$defs", {})
    builder.rules["root"] = builder.rule_for(schema, "answer")
    return builder.grammar()


class _Builder:
    """Collects named rules while walking a schema."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self.defs: Mapping[str, Any] = {}
        self._used_base: set[str] = set()

    def grammar(self) -> str:
        rules = dict(self.rules)
        for name in _closure(self._used_base):
            rules.setdefault(name, _BASE_RULES[name])
        return "\n".join(f"{name} ::= {body}" for name, body in rules.items()) + "\n"

    def base(self, name: str) -> str:
        self._used_base.add(name)
        return name

    def rule_for(self, schema: Mapping[str, Any] | bool, hint: str) -> str:
        """The name (or inline expression) of a rule matching `schema`."""
        if schema is True or schema == {}:
            return self.base("value")
        if schema is False:
            raise UsageError(f"The schema of {hint} accepts nothing.")
        assert isinstance(schema, Mapping)
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]))
        if "const" in schema:
            return _literal(json.dumps(schema["const"], ensure_ascii=False))
        if "enum" in schema:
            options = [_literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]]
            return self._named(hint, " | ".join(options))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [
                    self.rule_for(option, f"{hint}-{i}") for i, option in enumerate(schema[key])
                ]
                return self._named(hint, " | ".join(options))
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.rule_for(schema["allOf"][0], hint)
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [self.rule_for({**schema, "type": k}, f"{hint}-{k}") for k in kind]
            return self._named(hint, " | ".join(options))
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, hint)
        if kind == "array":
            prefix = schema.get("prefixItems")
            if prefix and schema.get("maxItems") == len(prefix) and not schema.get("items"):
                parts = [self.rule_for(item, f"{hint}-{i}") for i, item in enumerate(prefix)]
                return self._named(hint, '"[" ' + ' ", " '.join(parts) + ' "]"')
            items = self.rule_for(schema.get("items", True), f"{hint}-item")
            most = schema.get("maxItems")
            if most == 0:
                return _literal("[]")
            more = "*" if most is None else f"{{0,{most - 1}}}"
            if schema.get("minItems", 0) >= 1:
                return self._named(hint, f'"[" {items} ( ", " {items} ){more} "]"')
            return self._named(hint, f'"[" ( {items} ( ", " {items} ){more} )? "]"')
        if kind == "string" and (pattern := _class_pattern(schema.get("pattern"))):
            return self._named(hint, pattern)
        if kind in ("string", "integer", "number", "boolean", "null"):
            return self.base(kind)
        if kind is None:
            return self.base("value")
        raise UsageError(f"The schema of {hint} has a type grammars do not support: {kind!r}.")

    def _ref(self, ref: str) -> str:
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix) :] not in self.defs:
            raise UsageError(f"Cannot resolve the schema reference {ref!r} (only #/$defs/...).")
        name = _rule_name("def-" + ref[len(prefix) :])
        if name not in self.rules:
            self.rules[name] = "..."  # reserved first: definitions may be recursive
            body = self.rule_for(self.defs[ref[len(prefix) :]], name + "-body")
            self.rules[name] = body
        return name

    def _object(self, schema: Mapping[str, Any], hint: str) -> str:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        if not properties:
            extra = schema.get("additionalProperties", True)
            if extra is False:
                return _literal("{}")
            if isinstance(extra, Mapping) and extra:  # a map: any keys, values of one schema
                pair = f'{self.base("string")} ": " {self.rule_for(extra, f"{hint}-value")}'
                return self._named(hint, f'"{{" ( {pair} ( ", " {pair} )* )? "}}"')
            return self.base("object")
        required = set(schema.get("required", []))
        pairs = [
            (
                _literal(json.dumps(name, ensure_ascii=False) + ": ")
                + " "
                + self.rule_for(sub, f"{hint}-{name}"),
                name in required,
            )
            for name, sub in properties.items()
        ]
        # The first property written is some i with no required property before it; after it,
        # required properties always follow and optional ones may.
        first_required = next((i for i, (_, req) in enumerate(pairs) if req), len(pairs) - 1)
        alternatives = []
        for i in range(first_required + 1):
            parts = [pairs[i][0]]
            for pair, is_required in pairs[i + 1 :]:
                parts.append(f'", " {pair}' if is_required else f'( ", " {pair} )?')
            alternatives.append(" ".join(parts))
        body = " | ".join(f"( {a} )" for a in alternatives)
        if not required:
            return self._named(hint, f'"{{" ( {body} )? "}}"')
        return self._named(hint, f'"{{" ( {body} ) "}}"')

    def _named(self, hint: str, body: str) -> str:
        name = _rule_name(hint)
        base, n = name, 1
        while name in self.rules or name in _BASE_RULES:
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name


def _closure(names: set[str]) -> list[str]:
    """The base rules `names` need, each once, in a stable order."""
    needs = {
        "string": {"char"},
        "number": {"integer"},
        "value": {"object", "array", "string", "number", "boolean", "null"},
        "object": {"string", "value"},
        "array": {"value"},
    }
    seen: list[str] = []
    todo = sorted(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.append(name)
            todo.extend(sorted(needs.get(name, ())))
    return sorted(seen)


_CLASS_PATTERN = re.compile(r"\^?\[(\^?)((?:\\.|[^\]\\])+)\]([+*])\$?")


def _class_pattern(pattern: Any) -> str | None:
    """A string rule for a pattern that is one character class repeated, else None.

    The class may not admit quotes, backslashes or control characters (they would need JSON
    escapes); such patterns are left to the tool to check.
    """
    if not isinstance(pattern, str) or not (match := _CLASS_PATTERN.fullmatch(pattern)):
        return None
    negated, body, repeat = match.groups()
    try:
        regex = re.compile(f"[{negated}{body}]")
    except re.error:
        return None
    if negated or any(regex.match(c) for c in '"\\' + "".join(map(chr, range(32)))):
        return None
    members = [chr(c) for c in range(32, 0x7F) if regex.match(chr(c))]
    if not members:
        return None
    alternatives = " | ".join(_literal(c) for c in members)
    return f'"\\"" ( {alternatives} ){repeat} "\\""'


def _rule_name(hint: str) -> str:
    """A GBNF rule name (letters, digits and dashes) made from `hint`."""
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-" for c in hint).strip("-")
    return (cleaned or "rule").lower()


def _literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\r":
            escaped.append("\\r")
        elif char == "\t":
            escaped.append("\\t")
        elif ord(char) < 0x20:
            escaped.append(f"\\x{ord(char):02X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
