"""Backends for the server tests: real `LLM`s whose timing, streaming or failure is controlled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from tapeagents.llms import LLM, LLMOutput, Prompt, TextDelta, Usage

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]


class SlowLLM(LLM):
    """Answers after `delay` seconds and counts how many calls were in flight at once."""

    def __init__(self, delay: float) -> None:
        super().__init__("slow")
        self.delay = delay
        self.in_flight = 0
        self.most_in_flight = 0

    async def generate(self, prompt: Prompt) -> LLMOutput:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return LLMOutput(content="done", usage=Usage(prompt_tokens=1, completion_tokens=1))


class StreamingLLM(LLM):
    """Streams `pieces` as text deltas, then answers with `final` (or raises `error` instead)."""

    def __init__(
        self,
        pieces: list[str],
        final: LLMOutput | None = None,
        *,
        error: Exception | None = None,
        fail_at_once: bool = False,
    ) -> None:
        super().__init__("streaming")
        self.pieces = pieces
        self.final = final or LLMOutput(content="".join(pieces))
        self.error = error
        self.fail_at_once = fail_at_once
        self.closed = False

    async def generate(self, prompt: Prompt) -> LLMOutput:
        if self.error is not None:
            raise self.error
        return self.final

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        try:
            if self.fail_at_once and self.error is not None:
                raise self.error
            for piece in self.pieces:
                yield TextDelta(text=piece)
            if self.error is not None:
                raise self.error
            yield self.final
        finally:
            self.closed = True


class FailingLLM(LLM):
    """Raises what `make()` returns on every call."""

    def __init__(self, make: Callable[[], Exception]) -> None:
        super().__init__("failing")
        self.make = make

    async def generate(self, prompt: Prompt) -> LLMOutput:
        raise self.make()
