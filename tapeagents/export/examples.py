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

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from tapeagents.agent import Agent
from tapeagents.errors import TapeAgentsError, UsageError
from tapeagents.export.prefixes import prefix_prompts
from tapeagents.export.selection import NO_NOTES, Selection, SplitBy, _Notes, select_tapes, split_of
from tapeagents.llm_node import LLMNode, output_groups
from tapeagents.llms import LLMCall, LLMOutput, Prompt
from tapeagents.steps import Error, Observation, ParsingFailure, Step, ToolCall, UnknownStep
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import Annotation, TapeStore

__all__ = [
    "ExactnessReport",
    "ExportError",
    "ExportProblem",
    "ExportReport",
    "OnProblem",
    "TrainingExample",
    "check_exact",
    "tape_examples",
    "training_examples",
]

OnProblem = Literal["skip_tape", "skip_output", "raise"]
"""What a problem costs: the whole tape (default), only that model output, or the export."""


class ExportError(TapeAgentsError):
    """The export was asked to stop at the first problem (`on_problem="raise"`)."""


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
    split: Literal["train", "validation"] = "train"
    _texts: _Texts | None = PrivateAttr(default=None)

    def messages(self) -> list[dict[str, Any]]:
        """The request's messages followed by the answer as an assistant message."""
        return [*self.prompt.messages, self.output.as_message()]

    def key(self) -> str:
        """Content hash of request and answer: equal examples have equal keys.

        The SHA-256 of the JSON texts of the messages, the tools and the answer, one a line.
        """
        texts = self._json_texts()
        if texts.key is None:
            digest = texts.prefix_hash.copy()
            digest.update(f"{texts.tools}\n{texts.output}".encode())
            texts.key = digest.hexdigest()[:32]
        return texts.key

    def _json_texts(self) -> _Texts:
        """The JSON texts of the example (made once, shared by the examples of a tape)."""
        # Read directly: pydantic finds a private attribute only after a failed lookup, which
        # costs more than the export spends on most examples.
        texts: _Texts | None = self.__pydantic_private__["_texts"]  # type: ignore[index]
        if texts is None:
            _share_json([self])
            texts = self.__pydantic_private__["_texts"]  # type: ignore[index]
        return texts


class _Texts:
    """An example's JSON texts, made once per tape: the examples of a tape are prefixes of one
    another, so each message is serialized (and hashed) once, not once per example."""

    __slots__ = ("ids", "key", "line", "messages", "output", "prefix_hash", "tools")

    def __init__(
        self,
        ids: list[int],
        messages: list[str],
        line: str,
        prefix_hash: Any,
        tools: str,
        output: str,
    ) -> None:
        self.ids = ids
        """`id` of each request message (the messages a text was made from)."""
        self.messages = messages
        """JSON text of each request message."""
        self.line = line
        """The request messages as the chat JSONL writes them: comma-separated, earlier
        assistant messages with `"weight": 0`."""
        self.prefix_hash = prefix_hash
        """SHA-256 state after the message texts, one a line (the start of `key`)."""
        self.tools = tools
        self.output = output
        self.key: str | None = None


class ExportProblem(BaseModel):
    """A model output (or a tape) that the target agent cannot reproduce, and why."""

    tape_id: str
    step_index: int | None
    """The first step of the output; None when the whole tape is concerned."""
    reason: str

    def __str__(self) -> str:
        where = f"step {self.step_index}" if self.step_index is not None else "tape"
        return f"tape {self.tape_id}, {where}: {self.reason}"


class ExportReport(BaseModel):
    """What an export read, produced, left out and could not reproduce."""

    tapes: int = 0
    """Tapes read (after the tape filters)."""
    tapes_used: int = 0
    """Tapes that gave at least one example."""
    examples: int = 0
    train: int = 0
    validation: int = 0
    skipped: Counter[str] = Field(default_factory=Counter)
    """Model outputs (or tapes) left out on purpose, by reason."""
    problems: list[ExportProblem] = Field(default_factory=list)
    """What the target agent could not reproduce."""
    tokens: int = 0
    """Token-level exports: tokens in the written examples."""
    target_tokens: int = 0
    """Token-level exports: tokens with a label (the answers)."""
    truncated: int = 0
    """Token-level exports: examples whose prompt was cut from the left to fit."""

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] += count

    def add(self, example: TrainingExample) -> None:
        self.examples += 1
        if example.split == "train":
            self.train += 1
        else:
            self.validation += 1

    def summary(self) -> str:
        """A few lines for people: counts, reasons and the first problems."""
        lines = [
            f"{self.examples} examples ({self.train} train, {self.validation} validation) from "
            f"{self.tapes_used} of {self.tapes} tapes."
        ]
        if self.tokens:
            lines.append(
                f"{self.tokens} tokens, {self.target_tokens} of them labelled; "
                f"{self.truncated} prompts cut from the left."
            )
        for reason, count in sorted(self.skipped.items(), key=lambda item: -item[1]):
            lines.append(f"left out: {count} × {reason}")
        if self.problems:
            count = len(self.problems)
            lines.append(
                f"{count} problem{'' if count == 1 else 's'} (the target agent cannot reproduce):"
            )
            lines += [f"  {problem}" for problem in self.problems[:10]]
            if len(self.problems) > 10:
                lines.append(f"  ... and {len(self.problems) - 10} more")
        return "\n".join(lines)


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

    Returns:
        The examples, in tape order (all with `split="train"`).
    """
    return _examples_of(
        tape,
        agent,
        source_agent=source_agent,
        selection=selection,
        report=report,
        on_problem=on_problem,
        annotations=annotations,
        split="train",
    )


def _examples_of(
    tape: Tape[Any, Any],
    agent: Agent,
    *,
    source_agent: str | None,
    selection: Selection | None,
    report: ExportReport | None,
    on_problem: OnProblem,
    annotations: Sequence[Annotation],
    split: Literal["train", "validation"],
) -> list[TrainingExample]:
    """`tape_examples`, with the examples on the given side of the split."""
    report = report if report is not None else ExportReport()
    steps = tape.steps
    source = source_agent or _first_agent(steps)
    pending: list[_Pending] = []
    problems: list[ExportProblem] = []
    notes = _Notes.of(annotations) if annotations else NO_NOTES

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
        if not isinstance(node, LLMNode):
            if first.metadata.llm_call_id is None:
                report.skip("steps of a node that calls no LLM")
            else:
                problem(
                    start,
                    f"node {node.name!r} of agent {target_path!r} is a {type(node).__name__}, "
                    "not an LLMNode, so it has no prompt to rebuild",
                )
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
    _share_json(examples)
    return examples


def _share_json(examples: Sequence[TrainingExample]) -> None:
    """Serialize each message once per tape.

    The prompts of one node share their message dicts, and each prompt usually starts with the
    previous one's messages: then its texts, its chat JSONL line and its hash continue the
    previous example's instead of starting over. Texts are reused by the identity of the message
    dicts, never by equality (equal dicts may still serialize differently).
    """
    cache: dict[int, tuple[str, str]] = {}  # id(message) -> (JSON, as written in a chat line)
    previous: _Texts | None = None
    for example in examples:
        messages = example.prompt.messages
        ids = list(map(id, messages))
        start = 0
        if previous is not None and ids[: len(previous.ids)] == previous.ids:
            start = len(previous.ids)
        texts, lines = [], []
        for message, key in zip(messages[start:], ids[start:], strict=True):
            found = cache.get(key)  # the examples keep every message alive: ids stay unique
            if found is None:
                text = _dumps(message)
                line = text[:-1] + ', "weight": 0}' if message.get("role") == "assistant" else text
                found = cache[key] = (text, line)
            texts.append(found[0])
            lines.append(found[1])
        if start:
            assert previous is not None
            texts = previous.messages + texts
            line = ", ".join([previous.line, *lines]) if lines else previous.line
            digest = previous.prefix_hash.copy()
        else:
            line = ", ".join(lines)
            digest = hashlib.sha256()
        if len(texts) > start:
            digest.update("".join(f"{text}\n" for text in texts[start:]).encode())
        example.__pydantic_private__["_texts"] = previous = _Texts(  # type: ignore[index]
            ids,
            texts,
            line,
            digest,
            _tools_text(example.prompt.tools),
            _dumps(example.output.as_message()),
        )


_TOOLS_TEXT: dict[int, tuple[Any, str]] = {}


def _tools_text(tools: Any) -> str:
    """JSON of a node's tool list: the same list for every tape, so it is kept across tapes."""
    found = _TOOLS_TEXT.get(id(tools))
    if found is None or found[0] is not tools:
        if len(_TOOLS_TEXT) > 256:
            _TOOLS_TEXT.clear()
        found = _TOOLS_TEXT[id(tools)] = (tools, _dumps(tools))  # holding it keeps the id valid
    return found[1]


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
            if step.name not in node._tool_names:
                tools = ", ".join(sorted(node._tool_names)) or "none"
                return empty, f"node {node.name!r} has no tool {step.name!r} (its tools: {tools})"
        elif not _emits(node, step):
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


def _emits(node: LLMNode, step: Step) -> bool:
    """Whether the node's parser can produce a step of this kind (tools aside)."""
    if step.kind in node.step_types:
        return True
    if node.text_step is not None and type(step) is node.text_step:
        return True
    return node.mode == "tools" and node.is_content(step)  # text beside tool calls


_NOTHING: set[str] = set()


def _fields(step: Step, ignore: set[str]) -> dict[str, Any]:
    """What the model writes of a step (as `llm_dict`, without serializing it)."""
    names = _FIELD_NAMES.get(type(step))
    if names is None:
        names = _FIELD_NAMES[type(step)] = tuple(
            name for name in type(step).__pydantic_fields__ if name not in ("kind", "metadata")
        )
    return {name: getattr(step, name) for name in names if name not in ignore}


_FIELD_NAMES: dict[type[Step], tuple[str, ...]] = {}


def _first_agent(steps: Sequence[Step]) -> str | None:
    for step in steps:
        if step.metadata.agent:
            return step.metadata.agent.split("/", 1)[0]
    return None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _make_dumps() -> Callable[[Any], str]:
    """`json.dumps(value, ensure_ascii=False)`, without building an encoder at every call.

    The export serializes hundreds of thousands of small messages: this uses the C encoder that
    `json.dumps` uses, with the same settings, made once.
    """
    from json.encoder import JSONEncoder, c_make_encoder, encode_basestring

    if c_make_encoder is None:  # a Python without the C accelerator
        return lambda value: json.dumps(value, ensure_ascii=False)
    default = JSONEncoder().default  # raises the TypeError that json.dumps raises
    encode = c_make_encoder(None, default, encode_basestring, None, ": ", ", ", False, False, True)
    return lambda value: "".join(encode(value, 0))


_dumps = _make_dumps()


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
        report: Counts and problems are added to it as the examples are produced.

    Yields:
        Examples with their `split` set, tape by tape.

    Example:
        >>> report = ExportReport()
        >>> examples = list(training_examples(store, agent, Selection(outcome="success"),
        ...                                   report=report))
        >>> print(report.summary())
    """
    selection = selection or Selection()
    report = report if report is not None else ExportReport()
    if not 0 <= validation < 1:
        raise UsageError(f"validation is a share of the data, from 0 to below 1; got {validation}.")
    seen: set[str] = set()
    for chosen in select_tapes(source, selection, split_by=split_by):
        report.tapes += 1
        side = split_of(chosen.group, validation=validation, seed=seed)
        examples = _examples_of(
            chosen.tape,
            agent,
            source_agent=source_agent or _source_of(chosen.tape, chosen.agent),
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


def _source_of(tape: Tape[Any, Any], stored_agent: str | None) -> str | None:
    """The stored agent when its steps are on the tape, else the tape's first agent."""
    if stored_agent and any(
        s.metadata.agent.split("/", 1)[0] == stored_agent for s in tape.steps if s.metadata.agent
    ):
        return stored_agent
    return _first_agent(tape.steps)


# ----------------------------------------------------------------------------- exactness


class ExactnessReport(BaseModel):
    """Whether a tape's examples equal the LLM calls recorded when it was made."""

    tape_id: str
    checked: int = 0
    """Examples compared with their recorded call."""
    differences: list[str] = Field(default_factory=list)
    """One line per example that differs, with what differs first."""
    missing: int = 0
    """Examples whose recorded call is not available (steps written by hand, for example)."""

    @property
    def exact(self) -> bool:
        return not self.differences

    def explain(self) -> str:
        if self.exact:
            return f"Tape {self.tape_id}: {self.checked} examples equal their recorded calls."
        return "\n".join(
            [f"Tape {self.tape_id}: {len(self.differences)} of {self.checked} examples differ:"]
            + [f"  {line}" for line in self.differences]
        )


def check_exact(
    tape: Tape[Any, Any],
    agent: Agent,
    llm_calls: Sequence[LLMCall] | TapeStore,
) -> ExactnessReport:
    """Compare the examples `agent` rebuilds from `tape` with the calls recorded on the tape.

    With the agent that made the tape, every request must equal the recorded prompt and every
    answer the recorded output (text and tool calls). A model that answers in a non-canonical
    form (extra spaces, JSON in a code fence) gives an answer that differs in form only; the
    line says so.
    """
    from tapeagents.store import TapeStore

    calls = llm_calls.llm_calls_of(tape) if isinstance(llm_calls, TapeStore) else llm_calls
    by_id = {call.id: call for call in calls}
    report = ExportReport()
    examples = tape_examples(tape, agent, report=report, on_problem="skip_output")
    result = ExactnessReport(tape_id=tape.id)
    result.differences += [f"not reproducible: {p}" for p in report.problems]
    for example in examples:
        call = by_id.get(example.llm_call_id or "")
        if call is None:
            result.missing += 1
            continue
        result.checked += 1
        where = f"step {example.start} (call {call.id[:8]})"
        if example.prompt.messages != call.prompt.messages:
            result.differences.append(f"{where}: {_first_message_difference(example, call)}")
        elif example.prompt.tools != call.prompt.tools:
            result.differences.append(f"{where}: the tools differ")
        elif example.output.as_message() != call.output.as_message():
            result.differences.append(
                f"{where}: the answer differs: recorded {call.output.raw_text()[:200]!r}, "
                f"rebuilt {example.output.raw_text()[:200]!r}"
            )
    return result


def _first_message_difference(example: TrainingExample, call: LLMCall) -> str:
    rebuilt, recorded = example.prompt.messages, call.prompt.messages
    for i, (a, b) in enumerate(zip(rebuilt, recorded, strict=False)):
        if a != b:
            return f"message {i} differs: recorded {b!r:.200}, rebuilt {a!r:.200}"
    return f"the request has {len(rebuilt)} messages, the recorded one {len(recorded)}"
