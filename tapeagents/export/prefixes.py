"""The prompt behind every model output of a tape, rendered in one pass over the tape.

Exporters need `node.make_prompt(agent, tape.steps[:end])` for many `end`s of one tape. Rendering
the tape again for each prefix costs O(n^2); `prefix_prompts` renders the messages once and cuts
them at each end, with the same result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tapeagents.agent import Agent
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
    wanted = set(ends)
    upto = max(wanted, default=0)
    snapshots: dict[int, list[dict[str, Any]]] = {0: []}
    messages: list[dict[str, Any]] = []
    if upto > 0:
        for stop, group in node.message_groups(tape.steps[:upto], inverses):
            messages.extend(group)
            if stop in wanted:
                snapshots[stop] = list(messages)
    tools = node.prompt_tools()
    system_reads_steps = agent.templates.reads(node.system_prompt, "tape")
    system: list[dict[str, Any]] | None = None
    prompts: list[Prompt] = []
    for end in ends:
        if end not in snapshots:  # inside one output's group of steps
            prompts.append(node.make_prompt(agent, _prefix(tape, end)))
            continue
        if system is None or system_reads_steps:
            rendered = node.system_messages(agent, _prefix(tape, end))
            if rendered != system:  # an unchanged system message stays the same dict
                system = rendered
        # Built from messages made here: no validation, and no copies of them.
        prompts.append(Prompt.model_construct(messages=system + snapshots[end], tools=tools))
    return prompts


def _prefix(tape: Tape[Any, Any], end: int) -> Tape[Any, Any]:
    return tape.model_copy(update={"steps": tape.steps[:end]})
