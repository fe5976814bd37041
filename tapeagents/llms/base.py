"""The LLM protocol and the records every call leaves behind.

A backend implements one method, `async generate(prompt) -> LLMOutput`, and may override
`stream` to yield text as it arrives. Callers use `LLM.call` (or `LLM.stream_call`), which
times the request, prices it, and returns an `LLMCall`: the prompt, the output and everything
needed to replay or train on it, under an id that is a hash of the request.

Every backend also says how long a request may be (`LLM.context_window`, None when unknown)
and how many tokens a request or one message takes (`count_tokens`, `count_message_tokens`),
so that a context policy (`tapeagents.context`) can cut a long conversation to fit. Backends
without a tokenizer count with `estimate_prompt_tokens`, a deliberate overestimate.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel, Field

from tapeagents.errors import UsageError
from tapeagents.llms.limits import counting_retries

__all__ = [
    "IMAGE_NOTE",
    "IMAGE_TOKENS",
    "IMAGE_TOKENS_LOW_DETAIL",
    "LLM",
    "LLMCall",
    "LLMOutput",
    "Prompt",
    "TextDelta",
    "TokenLogprob",
    "ToolCallRequest",
    "TopLogprob",
    "Usage",
    "content_text",
    "estimate_message_tokens",
    "estimate_prompt_tokens",
    "image_tokens",
    "request_hash",
]


class Prompt(BaseModel):
    """What is sent to a model: chat messages, and the tools it may call."""

    messages: list[dict[str, Any]]
    """OpenAI-style chat messages (`role`, `content`, `tool_calls`, `tool_call_id`)."""
    tools: list[dict[str, Any]] | None = None
    """OpenAI-style tool specifications, or None when the model may only answer in text."""
    response_format: dict[str, Any] | None = None
    """A JSON schema the answer must follow, for backends that support structured output."""
    tool_choice: str | dict[str, Any] | None = None
    """OpenAI's `tool_choice`: "auto" (None means the same), "required" (answer with a tool
    call), "none", or `{"type": "function", "function": {"name": ...}}` for one tool."""


class ToolCallRequest(BaseModel):
    """One tool call in a model's output; `arguments` is the JSON text exactly as produced."""

    id: str
    name: str
    arguments: str


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position, with its log-probability."""

    token: str
    logprob: float
    token_id: int | None = None


class TokenLogprob(BaseModel):
    """Log-probability of one generated (or scored) token."""

    token: str
    logprob: float
    token_id: int | None = None
    top_logprobs: list[TopLogprob] | None = None
    """The most likely tokens at this position, most likely first, when asked for."""


class Usage(BaseModel):
    """Token counts of one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LLMOutput(BaseModel):
    """What a model answered."""

    content: str | None = None
    tool_calls: list[ToolCallRequest] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    logprobs: list[TokenLogprob] | None = None
    """Per-token log-probabilities of the output, when the backend provides them."""
    cost: float | None = None
    """Price in US dollars when the backend knows it."""

    def as_message(self) -> dict[str, Any]:
        """The output as an assistant chat message."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return message

    def raw_text(self) -> str:
        """Content and tool calls as one string, for error reports that must keep everything."""
        if not self.tool_calls:
            return self.content or ""
        calls = [c.model_dump() for c in self.tool_calls]
        return json.dumps({"content": self.content, "tool_calls": calls}, ensure_ascii=False)


class LLMCall(BaseModel):
    """The full record of one model call; steps produced from it point to its `id`."""

    id: str
    """Hash of the request (model, parameters, messages, tools)."""
    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    prompt: Prompt
    output: LLMOutput
    latency: float = 0.0
    """Seconds from request to complete answer."""
    created_at: float = Field(default_factory=time.time)
    retries: int = 0
    """Transient failures (rate limits, timeouts, 5xx) retried before this answer; the store
    keeps it with the call."""

    @property
    def usage(self) -> Usage:
        return self.output.usage

    @property
    def cost(self) -> float | None:
        return self.output.cost


class TextDelta(BaseModel):
    """A piece of streamed output text."""

    text: str


def request_hash(model: str, parameters: dict[str, Any], prompt: Prompt) -> str:
    """Content hash of a request; equal requests get equal ids."""
    canonical = json.dumps(
        {"model": model, "parameters": parameters, "prompt": prompt.model_dump(exclude_none=True)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


IMAGE_TOKENS = 765
"""Tokens an image content part counts for in a context budget: OpenAI's price of a typical
high-detail image (a 1024x1024 image is 4 tiles of 170 tokens plus 85). Images are counted at
this fixed figure whatever their size, so counting never decodes or downloads them."""
IMAGE_TOKENS_LOW_DETAIL = 85
"""Tokens of an image part sent with `"detail": "low"` (OpenAI's fixed price)."""

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat message costs beyond its text in the estimate: its role and delimiters."""
REQUEST_OVERHEAD_TOKENS = 3
"""Tokens a request costs beyond its messages in the estimate: the assistant turn's header."""


IMAGE_NOTE = "[image not shown: this model does not read images]"
"""What `content_text` writes in place of an image part, for models and formats that read text
only."""


def content_text(content: Any, *, image: str = IMAGE_NOTE) -> str:
    """A message's content as plain text, for models and formats that read text only.

    A string is returned as it is. Of a list of OpenAI content parts, adjacent text parts are
    joined as they are and each image part becomes the line `image`, so the reader knows an
    image was there; other parts (audio, files) are left out.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    lines: list[str] = []
    text: list[str] = []
    for part in content:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, dict) and part.get("type") == "image_url":
            if text:
                lines.append("".join(text))
                text = []
            lines.append(image)
        elif isinstance(part, dict):
            text.append(str(part.get("text") or ""))
    if text:
        lines.append("".join(text))
    return "\n".join(lines)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _image_tokens(part: dict[str, Any]) -> int:
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else None
    return IMAGE_TOKENS_LOW_DETAIL if detail == "low" else IMAGE_TOKENS


def image_tokens(content: Any) -> int:
    """The tokens of the image parts (`{"type": "image_url", ...}`) of a message's content:
    `IMAGE_TOKENS` each, `IMAGE_TOKENS_LOW_DETAIL` for those sent with `"detail": "low"`."""
    if not isinstance(content, list):
        return 0
    return sum(
        _image_tokens(part)
        for part in content
        if isinstance(part, dict) and part.get("type") == "image_url"
    )


def _content_size(content: Any) -> tuple[int, int]:
    """UTF-8 bytes of a content's text and the tokens of its images (content given as a string,
    or as a list of OpenAI content parts)."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return _utf8_length(content), 0
    if not isinstance(content, list):
        return _utf8_length(str(content)), 0
    size = images = 0
    for part in content:
        if not isinstance(part, dict):
            size += _utf8_length(str(part))
        elif part.get("type") == "text":
            size += _utf8_length(str(part.get("text") or ""))
        elif part.get("type") == "image_url":
            images += _image_tokens(part)
        else:  # audio, files: their JSON, a rough stand-in
            size += _utf8_length(json.dumps(part, ensure_ascii=False, default=str))
    return size, images


def estimate_message_tokens(message: dict[str, Any]) -> int:
    """A conservative count of the tokens one chat message adds to a prompt, without a tokenizer.

    Text counts one token per 3 UTF-8 bytes (tokenizers average about 4 bytes a token on
    English and code, and about 3 on other scripts, so this rarely undercounts), plus
    `MESSAGE_OVERHEAD_TOKENS`; each tool call counts its name and arguments the same way plus 4;
    each image part counts `IMAGE_TOKENS` (`IMAGE_TOKENS_LOW_DETAIL` with `"detail": "low"`).
    """
    size, tokens = _content_size(message.get("content"))
    tokens += MESSAGE_OVERHEAD_TOKENS
    name = message.get("name")
    if isinstance(name, str):
        size += _utf8_length(name)
    for call in message.get("tool_calls") or ():
        function = call.get("function", call) if isinstance(call, dict) else {}
        size += _utf8_length(str(function.get("name") or ""))
        size += _utf8_length(str(function.get("arguments") or ""))
        tokens += 4
    return tokens + -(-size // 3)


def estimate_prompt_tokens(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
) -> int:
    """A conservative count of a request's tokens: `estimate_message_tokens` of each message,
    the tools' JSON at 3 bytes a token, and `REQUEST_OVERHEAD_TOKENS`."""
    tokens = REQUEST_OVERHEAD_TOKENS + sum(estimate_message_tokens(m) for m in messages)
    if tools:
        tokens += -(-_utf8_length(json.dumps(list(tools), ensure_ascii=False)) // 3)
    return tokens


class LLM(ABC):
    """A model backend. Implement `generate`; optionally `stream` for incremental text.

    Backends are safe to share between concurrent sessions.

    Args:
        model: The model's name, recorded with every call.
        context_window: The most tokens one request may hold (prompt and answer), for backends
            that cannot find out themselves; not recorded, since it does not change an answer.
        **parameters: What changes the answers (temperature, ...); recorded with every call.
    """

    model: str
    parameters: dict[str, Any]
    _context_window: int | None = None

    def __init__(self, model: str, *, context_window: int | None = None, **parameters: Any) -> None:
        if context_window is not None and context_window < 1:
            raise UsageError(
                f"context_window must be a positive number of tokens, not {context_window}."
            )
        self.model = model
        self.parameters = parameters
        self._context_window = context_window

    @property
    def context_window(self) -> int | None:
        """The most tokens one request may hold (prompt and answer), or None when unknown: then
        no context policy applies and an overlong prompt fails at the provider."""
        return self._context_window

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """The tokens of a request with these messages and tools. Default:
        `estimate_prompt_tokens`, which overcounts; backends with a tokenizer count exactly."""
        return estimate_prompt_tokens(messages, tools)

    def count_message_tokens(self, message: dict[str, Any]) -> int:
        """The tokens one message adds to a request (what context policies count with).
        Default: `estimate_message_tokens`."""
        return estimate_message_tokens(message)

    @abstractmethod
    async def generate(self, prompt: Prompt) -> LLMOutput:
        """Answer the prompt."""

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        """Yield text deltas as they arrive, then the complete output. Default: no deltas."""
        yield await self.generate(prompt)

    @property
    def supports_images(self) -> bool:
        """Whether the model reads images (image content parts); prompts for a model that does
        not show a note in their place."""
        return False

    def request_id(self, prompt: Prompt) -> str:
        return request_hash(self.model, self.parameters, prompt)

    async def call(self, prompt: Prompt) -> LLMCall:
        """Answer the prompt and return the full record of the call."""
        start = time.perf_counter()
        with counting_retries() as retries:
            output = await self.generate(prompt)
        return self._record(prompt, output, time.perf_counter() - start, retries[0])

    async def stream_call(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMCall]:
        """Like `call`, but yields text deltas first; the last item is the `LLMCall`."""
        start = time.perf_counter()
        stream = self.stream(prompt)
        retries = [0]
        try:
            while True:
                with counting_retries() as counter:  # counted within each step of the stream
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    finally:
                        retries[0] += counter[0]
                if isinstance(item, TextDelta):
                    yield item
                else:
                    yield self._record(prompt, item, time.perf_counter() - start, retries[0])
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def _record(
        self, prompt: Prompt, output: LLMOutput, latency: float, retries: int = 0
    ) -> LLMCall:
        return LLMCall(
            id=self.request_id(prompt),
            model=self.model,
            parameters=self.parameters,
            prompt=prompt,
            output=output,
            latency=latency,
            retries=retries,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"
