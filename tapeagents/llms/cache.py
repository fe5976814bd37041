"""`CachedLLM`: reuse the output of an identical earlier request."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from tapeagents.llms.base import LLM, LLMOutput, Prompt

__all__ = ["CachedLLM"]


class CachedLLM(LLM):
    """Wraps another LLM and answers repeated identical requests from a cache.

    The cache is a dict by default; pass any mapping from request id to `LLMOutput` (for
    example one backed by a tape store) to share it between processes. Only deterministic
    settings make sense to cache: sampling at temperature > 0 will return the first sample.
    """

    def __init__(self, llm: LLM, cache: MutableMapping[str, LLMOutput] | None = None) -> None:
        super().__init__(llm.model, **llm.parameters)
        self.llm = llm
        self.cache: MutableMapping[str, LLMOutput] = {} if cache is None else cache
        self.hits = 0
        self.misses = 0

    async def generate(self, prompt: Prompt) -> LLMOutput:
        key = self.llm.request_id(prompt)
        cached = self.cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        output = await self.llm.generate(prompt)
        self.cache[key] = output
        return output

    @property
    def context_window(self) -> int | None:
        """The wrapped LLM's context window."""
        return self.llm.context_window

    @property
    def supports_images(self) -> bool:
        """Whether the wrapped LLM reads images."""
        return self.llm.supports_images

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        return self.llm.count_tokens(messages, tools)

    def count_message_tokens(self, message: dict[str, Any]) -> int:
        return self.llm.count_message_tokens(message)
