"""OpenAI's chat completions wire format: requests in, completions and stream chunks out.

Pure pydantic and JSON (no web framework), so the format is tested on its own. A request is
validated into a `ChatRequest`, which names the `Prompt` and the `Sampling` settings; an
`LLMOutput` goes back out as a `chat.completion` or as `chat.completion.chunk` events.
Unknown request fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tapeagents.errors import UsageError
from tapeagents.llms.base import LLMOutput, Prompt, TokenLogprob, ToolCallRequest, Usage

__all__ = [
    "ChatRequest",
    "RequestError",
    "Sampling",
    "completion",
    "error_body",
    "finish_reason",
    "logprobs_object",
    "new_completion_id",
    "parse_request",
    "stream_chunk",
    "tool_call_deltas",
]

MAX_TOP_LOGPROBS = 20
"""The most alternatives a request may ask for per token (OpenAI's limit)."""


class RequestError(UsageError):
    """A request the server refuses; becomes an OpenAI-style error with `status`."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ----------------------------------------------------------------------------- requests


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    """A text part of a message's content."""

    type: str
    text: str = ""

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(
                f"content parts of type {value!r} are not supported: this server's models read "
                "text only; send {'type': 'text', 'text': ...} parts or a string"
            )
        return value


class FunctionCall(_Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Lenient):
    """An assistant message's call of a tool."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Lenient):
    """One chat message as OpenAI's API takes it."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role!r} message needs 'content'")
        return self

    def as_prompt_message(self) -> dict[str, Any]:
        """The message as `Prompt.messages` holds it: text content, `developer` as `system`."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": content,
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call.function.arguments
                        if isinstance(call.function.arguments, str)
                        else json.dumps(call.function.arguments, ensure_ascii=False),
                    },
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    """A tool the model may call (OpenAI's `{"type": "function", "function": {...}}`)."""

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]


class StreamOptions(_Lenient):
    include_usage: bool = False


@dataclass(frozen=True)
class Sampling:
    """The generation settings one request asks for; None means the served model's default."""

    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    top_logprobs: int = 0
    """Alternatives per token to return (0: none)."""


class ChatRequest(_Lenient):
    """A `POST /v1/chat/completions` body; fields this server does not know are ignored."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None

    def prompt(self) -> Prompt:
        """The `Prompt` the served `LLM` answers."""
        tools = [tool.model_dump(exclude_unset=True) for tool in self.tools] if self.tools else None
        choice: str | dict[str, Any] | None
        if self.tool_choice is None or self.tool_choice == "auto":
            choice = None  # every backend's default; keeps the request id of a plain prompt
        elif isinstance(self.tool_choice, str):
            choice = self.tool_choice
        else:
            choice = self.tool_choice.model_dump()
        response_format = None
        if self.response_format is not None and self.response_format.type != "text":
            response_format = self.response_format.model_dump()
        return Prompt(
            messages=[message.as_prompt_message() for message in self.messages],
            tools=tools,
            tool_choice=choice,
            response_format=response_format,
        )

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            seed=self.seed,
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else 0,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_request(body: bytes) -> ChatRequest:
    """Validate a chat completions body, or raise the `RequestError` that says what is wrong."""
    try:
        data = json.loads(body)
    except ValueError as error:
        raise RequestError(f"The request body is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object with 'messages'.")
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as error:
        # of a union's failures, the deepest one says most ("content.0.type: only text ...")
        first = max(error.errors(), key=lambda item: len(item["loc"]))
        param = ".".join(str(part) for part in first["loc"] if not _is_union_tag(part))
        raise RequestError(
            f"Invalid request: {param or 'body'}: {first['msg'].removeprefix('Value error, ')}.",
            param=param or None,
        ) from None
    _check(request)
    return request


def _is_union_tag(part: object) -> bool:
    """Pydantic names the union member it tried (`str`, `list[TextPart]`) in error locations."""
    return isinstance(part, str) and (part in ("str", "int") or "[" in part or part[:1].isupper())


def _check(request: ChatRequest) -> None:
    if request.n is not None and request.n != 1:
        raise RequestError(
            f"n={request.n} is not supported: this server returns one choice per request; "
            "send n separate requests (they are served concurrently).",
            param="n",
        )
    if request.top_logprobs and not request.logprobs:
        raise RequestError("top_logprobs needs logprobs=true.", param="top_logprobs")
    if request.tool_choice is not None and request.tool_choice != "none" and not request.tools:
        raise RequestError(
            "tool_choice needs tools: give the tools the model may call, or drop tool_choice.",
            param="tool_choice",
        )
    if isinstance(request.tool_choice, NamedToolChoice):
        names = [tool.function.name for tool in request.tools or []]
        if request.tool_choice.function.name not in names:
            raise RequestError(
                f"tool_choice names {request.tool_choice.function.name!r}, which is not among "
                f"the tools ({', '.join(names)}).",
                param="tool_choice",
            )


# ----------------------------------------------------------------------------- answers


def new_completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def finish_reason(output: LLMOutput, max_tokens: int | None) -> str:
    """`tool_calls` when the model called tools, `length` when it used its whole budget."""
    if output.tool_calls:
        return "tool_calls"
    if max_tokens is not None and output.usage.completion_tokens >= max_tokens:
        return "length"
    return "stop"


def _tool_calls(calls: list[ToolCallRequest], *, indexed: bool) -> list[dict[str, Any]]:
    return [
        {
            **({"index": index} if indexed else {}),
            "id": call.id or f"call_{secrets.token_hex(8)}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for index, call in enumerate(calls)
    ]


def _logprobs(items: list[TokenLogprob] | None, top: int) -> dict[str, Any] | None:
    """OpenAI's `logprobs` object: each token with its bytes and up to `top` alternatives."""
    if items is None:
        return None
    return {
        "content": [
            {
                "token": item.token,
                "logprob": item.logprob,
                "bytes": list(item.token.encode()),
                "top_logprobs": [
                    {"token": alt.token, "logprob": alt.logprob, "bytes": list(alt.token.encode())}
                    for alt in (item.top_logprobs or [])[:top]
                ],
            }
            for item in items
        ],
        "refusal": None,
    }


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion(
    output: LLMOutput,
    *,
    model: str,
    logprobs: bool,
    top_logprobs: int,
    max_tokens: int | None,
    completion_id: str | None = None,
) -> dict[str, Any]:
    """A `chat.completion` object for `output`."""
    message: dict[str, Any] = {"role": "assistant", "content": output.content, "refusal": None}
    if output.tool_calls:
        message["tool_calls"] = _tool_calls(output.tool_calls, indexed=False)
    return {
        "id": completion_id or new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": _logprobs(output.logprobs, top_logprobs) if logprobs else None,
                "finish_reason": finish_reason(output, max_tokens),
            }
        ],
        "usage": _usage(output.usage),
    }


def stream_chunk(
    completion_id: str,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
    usage: Usage | None = None,
    include_usage: bool = False,
) -> bytes:
    """One server-sent event of a streamed completion (`data: {...}` and a blank line).

    With `usage`, the chunk is the last one `stream_options.include_usage` asks for: no
    choices, only the token counts. Other chunks carry `"usage": null` when usage was asked for.
    """
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = _usage(usage)
    elif include_usage:
        chunk["usage"] = None
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


def logprobs_object(output: LLMOutput, top: int) -> dict[str, Any] | None:
    """The `logprobs` of a whole output, for the one chunk of a stream that carries them."""
    return _logprobs(output.logprobs, top)


def tool_call_deltas(calls: list[ToolCallRequest]) -> list[dict[str, Any]]:
    """Tool calls as a stream sends them: each complete, with its `index`."""
    return _tool_calls(calls, indexed=True)
