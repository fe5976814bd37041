"""`ReplayLLM`: answers from recorded `LLMCall`s, like a test cassette."""

from __future__ import annotations

import difflib
import json
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from typing import Any

from tapeagents.errors import ReplayMismatch, UsageError
from tapeagents.llms.base import LLM, LLMCall, LLMOutput, Prompt, image_tokens

__all__ = ["ReplayLLM", "prompt_diff"]


def _prompt_key(prompt: Prompt) -> str:
    return json.dumps(prompt.model_dump(exclude_none=True), sort_keys=True, ensure_ascii=False)


def _prompt_lines(prompt: Prompt) -> list[str]:
    lines: list[str] = []
    for message in prompt.messages:
        lines.extend(json.dumps(message, indent=1, sort_keys=True, ensure_ascii=False).splitlines())
    if prompt.tools:
        lines.append(
            f"tools: {json.dumps([t.get('function', t).get('name') for t in prompt.tools])}"
        )
    return lines


def prompt_diff(expected: Prompt, actual: Prompt) -> str:
    """A unified diff between a recorded prompt and a new one."""
    return "\n".join(
        difflib.unified_diff(
            _prompt_lines(expected), _prompt_lines(actual), "recorded", "requested", lineterm=""
        )
    )


class ReplayLLM(LLM):
    """Answers each prompt with the output recorded for the same prompt.

    Identical prompts recorded several times are answered in recording order. A prompt that was
    never recorded raises `ReplayMismatch` showing the closest recorded prompt and the diff.
    Model name and parameters are those of the recording, so replayed calls get the same ids.

    Args:
        calls: The recorded calls.
        like: The backend that was recorded. Its context window and token counts are used, so
            that a context policy cuts a long conversation exactly as it did when recording;
            without it the window is unknown and no policy applies. Images: the recorded
            model read them if a recorded prompt shows one, else if `like` reads them.
    """

    def __init__(self, calls: Iterable[LLMCall], *, like: LLM | None = None) -> None:
        recorded = list(calls)
        if not recorded:
            raise UsageError("ReplayLLM needs at least one recorded LLMCall to answer from.")
        super().__init__(recorded[0].model, **recorded[0].parameters)
        self.like = like
        self._calls = recorded
        self._by_prompt: dict[str, deque[LLMCall]] = defaultdict(deque)
        for call in recorded:
            self._by_prompt[_prompt_key(call.prompt)].append(call)
        self._saw_images = any(
            image_tokens(message.get("content"))
            for call in recorded
            for message in call.prompt.messages
        )

    async def generate(self, prompt: Prompt) -> LLMOutput:
        queue = self._by_prompt.get(_prompt_key(prompt))
        if queue:
            call = queue.popleft() if len(queue) > 1 else queue[0]
            return call.output
        raise ReplayMismatch(self._explain_miss(prompt))

    @property
    def context_window(self) -> int | None:
        """The recorded backend's context window (`like`), or None."""
        return self.like.context_window if self.like is not None else None

    @property
    def supports_images(self) -> bool:
        """Whether prompts carry images as content parts: yes if a recorded prompt shows one
        (the recording is the evidence, whatever stand-in `like` is), else as `like` does."""
        if self._saw_images:
            return True
        return self.like.supports_images if self.like is not None else False

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        if self.like is not None:
            return self.like.count_tokens(messages, tools)
        return super().count_tokens(messages, tools)

    def count_message_tokens(self, message: dict[str, Any]) -> int:
        if self.like is not None:
            return self.like.count_message_tokens(message)
        return super().count_message_tokens(message)

    def _explain_miss(self, prompt: Prompt) -> str:
        wanted = "\n".join(_prompt_lines(prompt))
        closest = max(
            self._calls,
            key=lambda c: difflib.SequenceMatcher(
                None, "\n".join(_prompt_lines(c.prompt)), wanted, autojunk=False
            ).quick_ratio(),
        )
        return (
            f"No recorded LLM call matches this prompt ({len(self._calls)} recorded). "
            f"Closest recorded prompt (call {closest.id}), diff recorded -> requested:\n"
            + prompt_diff(closest.prompt, prompt)
        )
