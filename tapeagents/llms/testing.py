"""`TestLLM`: calls every tool it is offered once, with arguments valid for the tool's schema.

It tests an agent's tool wiring without a script: each answer calls the next offered tool that the
conversation has not called yet (the environment's tools first, then the node's step types, in
the order offered), and once every tool has been called it answers with text. The answers depend
only on the prompt, so runs repeat exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tapeagents.llms.base import LLM, LLMOutput, Prompt, ToolCallRequest, Usage, content_text

__all__ = ["TestLLM", "example_arguments"]


class TestLLM(LLM):
    """Calls each offered tool once with schema-valid arguments, then answers with `text`.

    One tool per answer, in the order offered, so a stop step offered as a tool (`FinalAnswer`)
    ends the run after the environment's tools have been tried.

    Args:
        text: The text answer once every tool has been called.
        call_tools: Which offered tools to call: "all", or a list of tool names.
        model: The model name recorded in `LLMCall`s.
        context_window: The context window to report (tokens), to exercise context policies.
        vision: Whether prompts show it images as content parts, as for a vision model.

    Example:
        >>> llm = TestLLM(text="All done.")
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        *,
        text: str = "Done.",
        call_tools: Literal["all"] | Sequence[str] = "all",
        model: str = "test",
        context_window: int | None = None,
        vision: bool = False,
    ) -> None:
        super().__init__(model, context_window=context_window)
        self.vision = vision
        self.text = text
        self.call_tools = call_tools if call_tools == "all" else list(call_tools)
        self.prompts: list[Prompt] = []
        """Every prompt received, in order."""

    @property
    def supports_images(self) -> bool:
        """Whether prompts show images as content parts (`vision=`)."""
        return self.vision

    async def generate(self, prompt: Prompt) -> LLMOutput:
        self.prompts.append(prompt)
        called = _called_tools(prompt.messages)
        turn = sum(1 for message in prompt.messages if message.get("role") == "assistant")
        prompt_words = sum(
            len(content_text(m.get("content"), image="").split()) for m in prompt.messages
        )
        for name, parameters in _offered_tools(prompt.tools):
            if name in called or (self.call_tools != "all" and name not in self.call_tools):
                continue
            call = ToolCallRequest(
                id=f"call_test_{turn}",
                name=name,
                arguments=json.dumps(example_arguments(parameters), ensure_ascii=False),
            )
            return LLMOutput(tool_calls=[call], usage=Usage(prompt_tokens=prompt_words))
        return LLMOutput(
            content=self.text,
            usage=Usage(prompt_tokens=prompt_words, completion_tokens=len(self.text.split())),
        )


def _offered_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    """Name and parameter schema of each tool in an OpenAI-style `tools` list."""
    offered: list[tuple[str, dict[str, Any]]] = []
    for tool in tools or []:
        function = tool.get("function", tool)
        offered.append((str(function["name"]), dict(function.get("parameters") or {})))
    return offered


def _called_tools(messages: Sequence[Mapping[str, Any]]) -> set[str]:
    """The names of the tools that assistant messages of the conversation already called."""
    return {
        str(call["function"]["name"])
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
    }


def example_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments that satisfy a tool's JSON schema (an object schema), the same every time.

    Every property is filled in, required or not; `$ref`s into `$defs` are followed.

    Example:
        >>> example_arguments({"type": "object", "properties": {"n": {"type": "integer"}}})
        {'n': 0}
    """
    value = _example(schema, schema.get("$defs", {}), depth=0)
    return value if isinstance(value, dict) else {}


def _example(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> Any:
    """A value valid for `schema`; `depth` stops recursive models from going on forever."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return _example(defs.get(name, {}), defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [option for option in schema.get(key, []) if option.get("type") != "null"]
        if options:
            return _example(options[0], defs, depth)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        if depth > 8:
            return {}
        properties: Mapping[str, Any] = schema.get("properties", {})
        return {name: _example(sub, defs, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1 if depth <= 8 else 0)
        count = min(count, int(schema.get("maxItems", count)))
        prefix = [_example(sub, defs, depth + 1) for sub in schema.get("prefixItems", [])]
        items = schema.get("items")
        if prefix or not isinstance(items, Mapping):
            return prefix
        return [_example(items, defs, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(_number(schema, 0, step=1))
    if kind == "number":
        return float(_number(schema, 0.0, step=0.5))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(schema)


def _number(schema: Mapping[str, Any], value: float, *, step: float) -> float:
    """`value`, moved into the schema's bounds."""
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = max(value, schema["exclusiveMinimum"] + step)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = min(value, schema["exclusiveMaximum"] - step)
    if "multipleOf" in schema and schema["multipleOf"]:
        multiple = schema["multipleOf"]
        value = -(-value // multiple) * multiple
    return value


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _string(schema: Mapping[str, Any]) -> str:
    fixed = _FORMATS.get(str(schema.get("format", "")))
    if fixed is not None:
        return fixed
    length = max(int(schema.get("minLength", 1)), 1)
    return "a" * min(length, int(schema.get("maxLength", length)))
