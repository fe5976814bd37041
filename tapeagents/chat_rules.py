"""The OpenAI chat rules every request must keep, checked: `validate_chat(messages, tools)`.

Prompts built by `LLMNode` keep them whatever the tape holds (see `tapeagents.conversation`); this
check is what the tests hold them to, and what a developer can run on any request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tapeagents.errors import UsageError

__all__ = ["InvalidChat", "validate_chat"]

Message = dict[str, Any]


class InvalidChat(UsageError):
    """A request breaks the OpenAI chat rules; the message names the message and the rule."""


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_PART_TYPES = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text"}),
}


def validate_chat(
    messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None
) -> None:
    """Check a chat request against the OpenAI chat rules; raise `InvalidChat` naming the
    first message that breaks one.

    The rules: a known role on every message; text (or content parts of the kinds the role may
    send) as content, which only an assistant message with tool calls may leave empty; tool
    calls with unique ids, `"type": "function"`, a declared tool's name and string arguments;
    every assistant message with tool calls directly followed by exactly one tool message per
    call; no other tool messages; tools with unique, well-formed names.
    """
    declared = _declared_tools(tools)
    seen_ids: set[str] = set()
    if not messages:
        raise InvalidChat("The request has no messages; send at least one.")
    position = 0
    while position < len(messages):
        message = messages[position]
        where = f"message {position}"
        if not isinstance(message, dict):
            raise InvalidChat(f"{where} is a {type(message).__name__}, not a dict.")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidChat(f"{where} has role {role!r}; use one of {', '.join(sorted(_ROLES))}.")
        calls = message.get("tool_calls") or []
        if calls and role != "assistant":
            raise InvalidChat(f"{where} ({role}) has tool_calls; only assistant messages may.")
        _check_content(message, where, may_be_empty=bool(calls))
        if role == "tool":
            raise InvalidChat(
                f"{where} is a tool message (tool_call_id {message.get('tool_call_id')!r}) that "
                "does not directly follow the assistant message that made the call."
            )
        position += 1
        if not calls:
            continue
        ids = _check_calls(calls, where, declared, seen_ids)
        answered: set[str] = set()
        while position < len(messages) and messages[position].get("role") == "tool":
            result = messages[position]
            call_id = result.get("tool_call_id")
            result_where = f"message {position} (tool)"
            if call_id not in ids:
                raise InvalidChat(
                    f"{result_where} answers tool_call_id {call_id!r}, which the assistant "
                    f"message before it did not make (it made {sorted(ids)})."
                )
            if call_id in answered:
                raise InvalidChat(f"{result_where} answers tool call {call_id!r} a second time.")
            _check_content(result, result_where, may_be_empty=False)
            answered.add(call_id)
            position += 1
        missing = [call_id for call_id in ids if call_id not in answered]
        if missing:
            raise InvalidChat(
                f"{where} made tool calls {missing} that no tool message directly after it "
                "answers; every tool call needs exactly one tool message, right after the call."
            )


def _declared_tools(tools: Sequence[dict[str, Any]] | None) -> set[str]:
    declared: set[str] = set()
    for number, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(name, str)
        ):
            raise InvalidChat(
                f"tool {number} is not {{'type': 'function', 'function': {{'name': ...}}}}."
            )
        if not _TOOL_NAME.match(name):
            raise InvalidChat(
                f"tool {number} is named {name!r}; names are 1 to 64 letters, digits, _ or -."
            )
        if name in declared:
            raise InvalidChat(f"tool {name!r} is declared twice.")
        declared.add(name)
    return declared


def _check_content(message: Message, where: str, *, may_be_empty: bool) -> None:
    role = message["role"]
    content = message.get("content")
    if content is None or content == "" or content == []:
        if may_be_empty or (role != "tool" and content == ""):
            return
        raise InvalidChat(f"{where} ({role}) has no content.")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidChat(
            f"{where} ({role}) has content of type {type(content).__name__}; send a string or a "
            "list of content parts."
        )
    allowed = _PART_TYPES[role]
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise InvalidChat(
                f"{where} ({role}) has content part {number} of type {kind!r}; a {role} message "
                f"may send {', '.join(sorted(allowed))} parts."
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidChat(f"{where} ({role}): text part {number} has no string 'text'.")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise InvalidChat(
                    f"{where} ({role}): image part {number} needs "
                    "{'image_url': {'url': 'data:... or https://...'}}."
                )


def _check_calls(calls: Any, where: str, declared: set[str], seen_ids: set[str]) -> list[str]:
    if not isinstance(calls, list):
        raise InvalidChat(f"{where} has tool_calls that are not a list.")
    ids: list[str] = []
    for number, call in enumerate(calls):
        call_where = f"{where}, tool call {number}"
        if not isinstance(call, dict) or call.get("type") != "function":
            raise InvalidChat(f"{call_where} is not {{'type': 'function', ...}}.")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidChat(f"{call_where} has no id.")
        if call_id in seen_ids:
            raise InvalidChat(
                f"{call_where} reuses the id {call_id!r}; tool call ids are unique in a request."
            )
        seen_ids.add(call_id)
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidChat(f"{call_where} names no function.")
        name = function["name"]
        if name not in declared:
            offered = ", ".join(sorted(declared)) if declared else "no tools are declared"
            raise InvalidChat(
                f"{call_where} calls {name!r}, which is not a declared tool ({offered}); every "
                "tool call in a request must name one of its tools."
            )
        if not isinstance(function.get("arguments"), str):
            raise InvalidChat(f"{call_where} ({name}) has arguments that are not a JSON string.")
        ids.append(call_id)
    return ids
