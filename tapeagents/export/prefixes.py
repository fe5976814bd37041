"""The prompt behind every model output of a tape, rendered in one pass over the tape.

Exporters need `node.make_prompt(agent, tape.steps[:end])` for many `end`s of one tape. Rendering
the tape again for each prefix costs O(n^2); `prefix_prompts` renders each agent's view of the
tape once and cuts it at each end, with the same result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tapeagents.agent import Agent
from tapeagents.conversation import render_prefixes
from tapeagents.errors import UsageError
from tapeagents.llm_node import LLMNode
from tapeagents.llms import LLMOutput, Prompt
from tapeagents.tape import Tape

__all__ = ["prefix_prompts"]


def prefix_prompts(
    node: LLMNode,
    agent: Agent,
    tape: Tape[Any, Any],
    ends: Sequence[int],
    *,
    inverses: Mapping[int, LLMOutput] | None = None,
) -> list[Prompt]:
    """`node.make_prompt` of each prefix `tape.steps[:end]`, in one pass over the tape.

    An `end` inside a group of steps that came from one model output gets `make_prompt` of that
    prefix, so the result is always exact, and a node class with its own `make_prompt` gets that
    for each prefix. The prompts share their message dicts (copy one before changing it).
    `inverses` holds the node's `inverse` of groups already computed, by the group's first step.
    """
    for end in ends:
        if not 0 <= end <= len(tape.steps):
            raise UsageError(f"No prefix of {end} steps: the tape has {len(tape.steps)}.")
    if type(node).make_prompt is not LLMNode.make_prompt:
        return [node.make_prompt(agent, _prefix(tape, end)) for end in ends]
    llm = agent.llms.get(node.llm)
    images = llm is not None and llm.supports_images  # as `make_prompt` shows them
    steps = tape.steps[: max(ends, default=0)]
    cut = llm is not None and llm.context_window is not None and node.context is not None
    rendered = render_prefixes(node, steps, ends, inverses, images=images, flat=not cut)
    tools = node.prompt_tools()
    system_reads_steps = agent.templates.reads(node.system_prompt, "tape")
    system: list[dict[str, Any]] | None = None
    prompts: list[Prompt] = []
    for end in ends:
        if end not in rendered:  # inside the steps of one model output
            prompts.append(node.make_prompt(agent, _prefix(tape, end)))
            continue
        if system is None or system_reads_steps:
            made = node.system_messages(agent, _prefix(tape, end))
            if made != system:  # an unchanged system message stays the same dict
                system = made
        conversation = (
            node.fit(llm, system, rendered[end], tools) if cut else system + rendered[end]
        )
        prompts.append(node.prompt(conversation, tools))
    return prompts


def _prefix(tape: Tape[Any, Any], end: int) -> Tape[Any, Any]:
    return tape.model_copy(update={"steps": tape.steps[:end]})
