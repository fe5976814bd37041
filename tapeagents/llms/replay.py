"""`ReplayLLM`: answers from recorded `LLMCall`s, like a test cassette."""

from __future__ import annotations

import difflib
import json
from collections import defaultdict, deque
from collections.abc import Iterable

from tapeagents.errors import ReplayMismatch, UsageError
from tapeagents.llms.base import LLM, LLMCall, LLMOutput, Prompt

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
    """

    def __init__(self, calls: Iterable[LLMCall]) -> None:
        recorded = list(calls)
        if not recorded:
            raise UsageError("ReplayLLM needs at least one recorded LLMCall to answer from.")
        super().__init__(recorded[0].model, **recorded[0].parameters)
        self._calls = recorded
        self._by_prompt: dict[str, deque[LLMCall]] = defaultdict(deque)
        for call in recorded:
            self._by_prompt[_prompt_key(call.prompt)].append(call)

    async def generate(self, prompt: Prompt) -> LLMOutput:
        queue = self._by_prompt.get(_prompt_key(prompt))
        if queue:
            call = queue.popleft() if len(queue) > 1 else queue[0]
            return call.output
        raise ReplayMismatch(self._explain_miss(prompt))

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
