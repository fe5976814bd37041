"""Training examples rebuilt from tapes: the exact request and the answer to learn.

Every group of steps that one model output produced (`output_groups`) becomes one example: the
request is what the *target* agent's node sends for the tape up to that group
(`prefix_prompts`), and the answer is what that node's `inverse` gives for the steps. The
target may be the agent that made the tape (the examples then equal the recorded calls, which
`check_exact` verifies) or another one, such as a student with its own prompts.

What the target cannot reproduce (an unknown node, a step kind the node cannot emit, an answer
that does not parse back to the same steps, a prompt template that fails) is a problem: it is
reported with the tape, the step and the reason, and by default the tape gives no examples.
Outputs left out on purpose (failed parses, other agents' steps, annotations, duplicates) are
counted in the report by reason. Nothing is dropped silently.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tapeagents.agent import Agent
from tapeagents.conversation import output_groups
from tapeagents.errors import UsageError
from tapeagents.export.json_texts import example_texts, share_texts
from tapeagents.export.prefixes import prefix_prompts
from tapeagents.export.report import ExportError, ExportProblem, ExportReport, OnProblem
from tapeagents.export.selection import (
    NO_NOTES,
    Selection,
    Split,
    SplitBy,
    TapeNotes,
    select_tapes,
    split_of,
)
from tapeagents.llm_node import LLMNode
from tapeagents.llms import LLMOutput, Prompt
from tapeagents.steps import (
    Error,
    Observation,
    ParsingFailure,
    SetNextNode,
    Step,
    ToolCall,
    UnknownStep,
)
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import Annotation, TapeStore

__all__ = ["TrainingExample", "source_agent_of", "tape_examples", "training_examples"]


class TrainingExample(BaseModel):
    """One model output of a tape as the request that led to it and the answer to learn."""

    tape_id: str
    start: int
    """Index of the first step the output produced."""
    stop: int
    """Index after its last step."""
    agent: str
    """Path of the target agent whose node built the example."""
    node: str
    task_id: str | None = None
    llm_call_id: str | None = None
    """The recorded call the steps came from (None for steps written by hand)."""
    prompt: Prompt
    """The request, exactly as the target's node sends it."""
    output: LLMOutput
    """The answer: text and tool calls, as the node's `inverse` writes the steps."""
    split: Split = "train"

    def messages(self) -> list[dict[str, Any]]:
        """The request's messages followed by the answer as an assistant message."""
        return [*self.prompt.messages, self.output.as_message()]

    def key(self) -> str:
        """Content hash of request and answer: equal examples have equal keys.

        The SHA-256 of the JSON texts of the messages, the tools and the answer, one a line.
        """
        return example_texts(self).key()


# ----------------------------------------------------------------------------- one tape


class _Pending:
    __slots__ = ("agent", "llm_call_id", "node", "output", "path", "start", "stop")

    def __init__(
        self,
        start: int,
        stop: int,
        path: str,
        agent: Agent,
        node: LLMNode,
        output: LLMOutput,
        llm_call_id: str | None,
    ) -> None:
        self.start, self.stop, self.path = start, stop, path
        self.agent, self.node, self.output = agent, node, output
        self.llm_call_id = llm_call_id


def tape_examples(
    tape: Tape[Any, Any],
    agent: Agent,
    *,
    source_agent: str | None = None,
    selection: Selection | None = None,
    report: ExportReport | None = None,
    on_problem: OnProblem = "skip_tape",
    annotations: Sequence[Annotation] = (),
    split: Split = "train",
) -> list[TrainingExample]:
    """The training examples of one tape, rendered with `agent`'s nodes.

    Args:
        tape: The tape.
        agent: The target agent: its nodes rebuild the requests and answers.
        source_agent: The agent on the tape that `agent` stands in for (default: the tape's
            first agent). Steps of other agents on the tape are left out and counted.
        selection: Annotation filters (tape filters are applied by `training_examples`).
        report: Counts and problems are added to it.
        on_problem: What a problem costs: `skip_tape`, `skip_output` or `raise` (`ExportError`).
        annotations: The tape's annotations (`store.annotations(tape.id)`), for `selection`.
        split: The side of the train/validation split the examples are on.

    Returns:
        The examples, in tape order.
    """
    report = report if report is not None else ExportReport()
    steps = tape.steps
    source = source_agent or _first_agent(steps)
    pending: list[_Pending] = []
    problems: list[ExportProblem] = []
    notes = TapeNotes.of(annotations) if annotations else NO_NOTES

    def problem(start: int | None, reason: str) -> None:
        found = ExportProblem(tape_id=tape.id, step_index=start, reason=reason)
        if on_problem == "raise":
            raise ExportError(str(found))
        problems.append(found)
        report.problems.append(found)

    for start, stop in output_groups(steps):
        first = steps[start]
        if isinstance(first, Observation | UnknownStep):
            continue
        if isinstance(first, Error):
            if isinstance(first, ParsingFailure):
                report.skip("model output that could not be parsed")
            continue
        path = first.metadata.agent
        if not path or not first.metadata.node:
            problem(start, f"step {first.kind!r} names no agent and node, so no node can learn it")
            continue
        root, _, below = path.partition("/")
        if root != source:
            report.skip(f"steps of another agent ({root})")
            continue
        target_path = f"{agent.name}/{below}" if below else agent.name
        group = steps[start:stop]
        try:
            owner = agent.find(target_path)
            node = owner.node(first.metadata.node)
        except UsageError as error:
            problem(start, str(error))
            continue
        if not isinstance(node, LLMNode):  # its prompt, if it made one, cannot be rebuilt
            report.skip(f"steps of nodes that are not LLMNodes ({type(node).__name__})")
            continue
        group = [s for s in group if not isinstance(s, SetNextNode) or node.offers(s)]
        if not group:
            report.skip("routing steps (set_next_node) the model did not write")
            continue
        output, reason = _answer(node, group)
        if reason is not None:
            problem(start, reason)
            continue
        verdict = selection.verdict(notes, start, stop) if selection is not None else None
        if verdict is not None:
            report.skip(verdict)
            continue
        pending.append(
            _Pending(start, stop, target_path, owner, node, output, first.metadata.llm_call_id)
        )

    if problems and on_problem == "skip_tape":
        report.skip("outputs of tapes with problems", len(pending))
        return []
    prompts = _prompts(tape, pending, problem)
    if problems and on_problem == "skip_tape":
        report.skip("outputs of tapes with problems", len(prompts))
        return []
    task_id = tape.metadata.task_id
    examples = [
        TrainingExample(
            tape_id=tape.id,
            start=item.start,
            stop=item.stop,
            agent=item.path,
            node=item.node.name,
            task_id=task_id,
            llm_call_id=item.llm_call_id,
            prompt=prompts[item.start],
            output=item.output,
            split=split,
        )
        for item in pending
        if item.start in prompts
    ]
    share_texts(examples)  # made together: the examples of a tape share most of their texts
    return examples


def _prompts(
    tape: Tape[Any, Any], pending: Sequence[_Pending], problem: Callable[[int, str], None]
) -> dict[int, Prompt]:
    """The requests of the pending outputs by first step: one pass over the tape per node."""
    by_node: dict[tuple[str, str], list[_Pending]] = {}
    for item in pending:
        by_node.setdefault((item.path, item.node.name), []).append(item)
    prompts: dict[int, Prompt] = {}
    for items in by_node.values():
        first = items[0]
        try:
            rendered = prefix_prompts(
                first.node,
                first.agent,
                tape,
                [i.start for i in items],
                inverses={i.start: i.output for i in items},  # `_answer` made them already
            )
        except Exception as error:  # a template that fails on this tape, for example
            for item in items:
                problem(
                    item.start,
                    f"node {first.node.name!r} cannot build its prompt: {_describe(error)}",
                )
            continue
        for item, prompt in zip(items, rendered, strict=True):
            prompts[item.start] = prompt
    return prompts


def _answer(node: LLMNode, group: Sequence[Step]) -> tuple[LLMOutput, str | None]:
    """The node's answer for the steps, or why the node could not have written them."""
    empty = LLMOutput()
    for step in group:
        if isinstance(step, ToolCall):
            if step.name not in node.tool_names:
                tools = ", ".join(sorted(node.tool_names)) or "none"
                return empty, f"node {node.name!r} has no tool {step.name!r} (its tools: {tools})"
        elif not node.offers(step):
            kinds = sorted(node.step_types)
            if node.text_step is not None:
                kinds.insert(0, node.text_step.model_fields["kind"].default)
            return empty, (
                f"node {node.name!r} cannot emit step kind {step.kind!r} "
                f"(it emits: {', '.join(kinds) or 'nothing'})"
            )
    try:
        output = node.inverse(group)
    except Exception as error:
        return empty, f"the inverse of node {node.name!r} failed: {_describe(error)}"
    if node.mode == "tools" and len(group) == 1 and isinstance(group[0], ToolCall):
        # The common case, checked without building steps: `parse` turns a lone call of a known
        # tool back into the same ToolCall exactly when its arguments survive JSON.
        (request,) = output.tool_calls
        if output.content is None and json.loads(request.arguments) == group[0].arguments:
            return output, None
    parsed = node.parse(output)
    ignore = {"call_id"} if node.mode == "json" else _NOTHING
    if len(parsed) != len(group) or any(
        a.kind != b.kind or _fields(a, ignore) != _fields(b, ignore)
        for a, b in zip(parsed, group, strict=False)
    ):
        return empty, (
            f"node {node.name!r} would not parse its own answer back into these steps: "
            f"{output.raw_text()[:300]!r} gives {[s.kind for s in parsed]} "
            f"instead of {[s.kind for s in group]}"
        )
    return output, None


_NOTHING: set[str] = set()


def _fields(step: Step, ignore: set[str]) -> dict[str, Any]:
    """What the model writes of a step (as `llm_dict`, without serializing it)."""
    return {name: getattr(step, name) for name in _written_fields(type(step)) if name not in ignore}


@functools.cache
def _written_fields(step_type: type[Step]) -> tuple[str, ...]:
    """The fields of a step type that the model writes (all but `kind` and `metadata`)."""
    return tuple(name for name in step_type.model_fields if name not in ("kind", "metadata"))


def _first_agent(steps: Sequence[Step]) -> str | None:
    for step in steps:
        if step.metadata.agent:
            return step.metadata.agent.split("/", 1)[0]
    return None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------- many tapes


def training_examples(
    source: TapeStore | Iterable[Tape[Any, Any]],
    agent: Agent,
    selection: Selection | None = None,
    *,
    source_agent: str | None = None,
    dedupe: bool = True,
    validation: float = 0.0,
    seed: int = 0,
    split_by: SplitBy = "task",
    on_problem: OnProblem = "skip_tape",
    report: ExportReport | None = None,
) -> Iterator[TrainingExample]:
    """The training examples of the selected tapes, rendered with `agent`'s nodes.

    Args:
        source: A `TapeStore`, or tapes in memory.
        agent: The target agent (see `tape_examples`).
        selection: Which tapes and outputs (default: all).
        source_agent: The agent on the tapes that `agent` stands in for (default: the agent that
            ran each tape).
        dedupe: Leave out an example equal (request and answer) to an earlier one.
        validation: Share of split groups that go to validation (0: everything is train).
        seed: Seed of the split.
        split_by: Keep the tapes of one task ("task", default) or one lineage ("tape") together.
        on_problem: See `tape_examples`.
        report: Counts and problems are added to it as the examples are produced. With a
            report, tapes the store cannot read are left out and listed in
            `report.unreadable` (unless `on_problem` is "raise"); without one, the first such
            tape raises `CorruptTapeError`, so that none is left out unnoticed.

    Yields:
        Examples with their `split` set, tape by tape.

    Example:
        >>> report = ExportReport()
        >>> examples = list(training_examples(store, agent, Selection(outcome="success"),
        ...                                   report=report))
        >>> print(report.summary())
    """
    selection = selection or Selection()
    collect = report is not None and on_problem != "raise"
    report = report if report is not None else ExportReport()
    if not 0 <= validation < 1:
        raise UsageError(f"validation is a share of the data, from 0 to below 1; got {validation}.")
    seen: set[str] = set()
    skip = report.unreadable_tape if collect else None
    for chosen in select_tapes(source, selection, split_by=split_by, on_unreadable=skip):
        report.tapes += 1
        side = split_of(chosen.group, validation=validation, seed=seed)
        examples = tape_examples(
            chosen.tape,
            agent,
            source_agent=source_agent or source_agent_of(chosen.tape, chosen.agent),
            selection=selection if selection.uses_annotations else None,
            report=report,
            on_problem=on_problem,
            annotations=chosen.annotations,
            split=side,
        )
        if dedupe:
            kept = []
            for example in examples:
                key = example.key()
                if key in seen:
                    report.skip("duplicate")
                else:
                    seen.add(key)
                    kept.append(example)
            examples = kept
        if examples:  # counted per tape, before its examples are handed out
            report.examples += len(examples)
            if side == "train":
                report.train += len(examples)
            else:
                report.validation += len(examples)
            report.tapes_used += 1
        yield from examples


def source_agent_of(tape: Tape[Any, Any], stored_agent: str | None) -> str | None:
    """The agent on the tape that a target agent stands in for: the agent the store says ran
    the tape when its steps are on it, else the first agent that wrote a step."""
    if stored_agent and any(
        s.metadata.agent.split("/", 1)[0] == stored_agent for s in tape.steps if s.metadata.agent
    ):
        return stored_agent
    return _first_agent(tape.steps)
