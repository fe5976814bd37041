"""Prompts as a local model's chat template reads them, and tool calls read back from its text.

Many small models have chat templates without tool support: then tool traffic is written as
plain text, tool specifications go in the system message (`TOOLS_SYSTEM_PROMPT`), and tool calls
the model writes as JSON are read back into `tool_calls` (`read_tool_calls`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tapeagents.errors import ContextWindowExceeded, UsageError
from tapeagents.llms.base import LLMOutput, Prompt, ToolCallRequest, content_text
from tapeagents.llms.local.weights import LoadedModel
from tapeagents.steps import new_id

__all__ = [
    "TOOLS_SYSTEM_PROMPT",
    "chat_messages",
    "check_context",
    "prompt_ids",
    "read_tool_calls",
]

TOOLS_SYSTEM_PROMPT = (
    "You can call the following tools. To call one, answer with only a JSON object of the form "
    '{{"name": "<tool name>", "arguments": {{<arguments>}}}}.\n'
    "Tools:\n{tools}"
)
"""How tool specifications are shown to a model whose chat template has no tool support."""


def chat_messages(
    loaded: LoadedModel, messages: list[dict[str, Any]], tools: Any
) -> list[dict[str, Any]]:
    """Messages the chat template can render: text contents, and tool traffic as plain
    text when the template knows no tool calls; tools go in the system message when the
    template cannot show them.

    The local models read text only: a content given as OpenAI content parts is flattened to
    its text, with a note (`IMAGE_NOTE`) where an image was.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role", "user")
        content = content_text(message.get("content"))
        calls = message.get("tool_calls") or []
        if loaded.supports_tool_calls:
            converted = {k: v for k, v in message.items() if v is not None}
            converted["content"] = content
            out.append(converted)
        elif role == "tool":
            name = message.get("name") or message.get("tool_call_id") or "tool"
            out.append({"role": "user", "content": f"[{name} result]\n{content}"})
        elif calls:
            rendered = [_call_text(call) for call in calls]
            out.append({"role": role, "content": "\n".join([content, *rendered]).strip()})
        else:
            out.append({"role": role, "content": content})
    if tools and not loaded.supports_tools:
        specs = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        note = TOOLS_SYSTEM_PROMPT.format(tools=specs)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def prompt_ids(loaded: LoadedModel, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
    """Token ids of the chat-templated messages, ending with the assistant's turn header.

    Control tokens inside message texts (say `<|im_end|>` in a tool result) are encoded
    as plain text, so content cannot forge turns.
    """
    if not messages:
        raise UsageError("A prompt needs at least one message.")
    kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True}
    if tools and loaded.supports_tools:
        kwargs["tools"] = tools
    rendered = chat_messages(loaded, messages, tools)
    try:
        encoded = loaded.tokenizer.apply_chat_template(
            rendered, sanitize_control_tokens=True, return_dict=True, **kwargs
        )
    except Exception:
        if not loaded.supports_tool_calls:
            raise
        # The template claims tool support but cannot render these messages: plain text.
        plain = dataclasses.replace(loaded, supports_tool_calls=False)
        encoded = loaded.tokenizer.apply_chat_template(
            chat_messages(plain, messages, tools),
            sanitize_control_tokens=True,
            return_dict=True,
            **kwargs,
        )
    return list(encoded["input_ids"])


def check_context(loaded: LoadedModel, prompt_tokens: int, more: int, what: str) -> None:
    """Raise `ContextWindowExceeded` when the prompt and `more` tokens do not fit the model."""
    window = loaded.context_window
    if window is not None and prompt_tokens + more > window:
        raise ContextWindowExceeded(
            f"The prompt has {prompt_tokens} tokens and {what} is {more}: {prompt_tokens + more} "
            f"tokens exceed the model's context window of {window} tokens. "
            f"Shorten the prompt or lower {what}."
        )


def read_tool_calls(output: LLMOutput, prompt: Prompt) -> LLMOutput:
    """Read tool calls written as text in the `TOOLS_SYSTEM_PROMPT` form into `tool_calls`.

    Only objects naming an offered tool count; the rest of the text stays the content. This is
    what OpenAI-compatible servers do with their tool-call parsers for such models.
    """
    text = output.content or ""
    if not prompt.tools or "{" not in text:
        return output
    names = {tool.get("function", tool).get("name") for tool in prompt.tools}
    decoder = json.JSONDecoder()
    calls: list[ToolCallRequest] = []
    kept: list[str] = []
    position = 0
    while (start := text.find("{", position)) >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            kept.append(text[position : start + 1])
            position = start + 1
            continue
        if (
            isinstance(value, dict)
            and value.get("name") in names
            and isinstance(value.get("arguments", {}), dict)
        ):
            kept.append(text[position:start])
            arguments = json.dumps(value.get("arguments", {}), ensure_ascii=False)
            calls.append(
                ToolCallRequest(id=f"call_{new_id()[:12]}", name=value["name"], arguments=arguments)
            )
        else:
            kept.append(text[position:end])
        position = end
    if not calls:
        return output
    kept.append(text[position:])
    content = "".join(kept).replace("```json", "").replace("```", "").strip()
    return output.model_copy(update={"content": content or None, "tool_calls": calls})


def _call_text(call: Any) -> str:
    """An OpenAI-style tool call as the JSON text a model would write for it."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    arguments = function.get("arguments", "{}")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        parsed = arguments
    return json.dumps({"name": function.get("name"), "arguments": parsed}, ensure_ascii=False)
