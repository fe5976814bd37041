"""The LLM protocol and the records every call leaves behind.

A backend implements one method, `async generate(prompt) -> LLMOutput`, and may override
`stream` to yield text as it arrives. Callers use `LLM.call` (or `LLM.stream_call`), which
times the request, prices it, and returns an `LLMCall`: the prompt, the output and everything
needed to replay or train on it, under an id that is a hash of the request.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field

from tapeagents.llms.limits import counting_retries

__all__ = [
    "LLM",
    "LLMCall",
    "LLMOutput",
    "Prompt",
    "TextDelta",
    "TokenLogprob",
    "ToolCallRequest",
    "TopLogprob",
    "Usage",
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


class LLM(ABC):
    """A model backend. Implement `generate`; optionally `stream` for incremental text.

    Backends are safe to share between concurrent sessions.
    """

    model: str
    parameters: dict[str, Any]

    def __init__(self, model: str, **parameters: Any) -> None:
        self.model = model
        self.parameters = parameters

    @abstractmethod
    async def generate(self, prompt: Prompt) -> LLMOutput:
        """Answer the prompt."""

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        """Yield text deltas as they arrive, then the complete output. Default: no deltas."""
        yield await self.generate(prompt)

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
