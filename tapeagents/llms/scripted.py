"""`ScriptedLLM`: a real backend whose answers come from a list or a Python function, for tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tapeagents.errors import UsageError
from tapeagents.llms.base import LLM, LLMOutput, Prompt, ToolCallRequest, Usage, content_text
from tapeagents.steps import new_id

__all__ = ["ScriptedLLM", "tool_call"]

Answer = str | LLMOutput
Script = Iterable[Answer] | Callable[[Prompt], Answer]


def tool_call(name: str, arguments: str = "{}", *, id: str | None = None) -> ToolCallRequest:
    """A tool call to put in a scripted `LLMOutput`."""
    return ToolCallRequest(id=id or f"call_{new_id()[:12]}", name=name, arguments=arguments)


class ScriptedLLM(LLM):
    """Answers with the given outputs in order, or with `function(prompt)`.

    Strings become text outputs. Token counts are word counts (of the text, images left
    out), which keeps tests readable. `context_window` (tokens) lets tests exercise context
    policies; prompts are counted with `estimate_prompt_tokens`. With `vision=True` the
    prompts carry images as content parts, as for a vision model.

    Example:
        >>> llm = ScriptedLLM(["Hello!", "Bye."])
    """

    def __init__(
        self,
        script: Script,
        *,
        model: str = "scripted",
        context_window: int | None = None,
        vision: bool = False,
    ) -> None:
        super().__init__(model, context_window=context_window)
        self.vision = vision
        self._function: Callable[[Prompt], Answer] | None = None
        self._answers: list[Answer] = []
        if callable(script):
            self._function = script
        else:
            self._answers = list(script)
        self._next = 0
        self.prompts: list[Prompt] = []
        """Every prompt received, in order."""

    @property
    def supports_images(self) -> bool:
        """Whether prompts show images as content parts (`vision=`)."""
        return self.vision

    async def generate(self, prompt: Prompt) -> LLMOutput:
        self.prompts.append(prompt)
        if self._function is not None:
            answer = self._function(prompt)
        else:
            if self._next >= len(self._answers):
                raise UsageError(
                    f"ScriptedLLM ran out of answers after {len(self._answers)} calls; "
                    "add more answers to its script."
                )
            answer = self._answers[self._next]
            self._next += 1
        if isinstance(answer, LLMOutput):
            return answer
        prompt_words = sum(
            len(content_text(m.get("content"), image="").split()) for m in prompt.messages
        )
        return LLMOutput(
            content=answer,
            usage=Usage(prompt_tokens=prompt_words, completion_tokens=len(answer.split())),
        )
