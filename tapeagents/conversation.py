"""How an `LLMNode` shows the tape to its model: its agent's view, as valid OpenAI chat messages.

- The node sees its agent's view of the tape (`tapeagents.views`): a subagent its task and its
  own steps, a caller its `Call`s and the `Respond`s that answered them.
- Steps from one model output form one assistant message. Output the node itself could have
  written is rebuilt with `LLMNode.inverse`, so the prompt shows what the model wrote. Other
  agent steps are shown as they fit: what the node offers as a tool is a tool call, anything else
  is text ("[kind] fields"), so every tool call in a request names a tool the request declares.
- Control steps are routing, not conversation: a `SetNextNode` is shown only when a model wrote
  it and the node offers it.
- Tool-call ids are the model's own. Steps written without a model, and ids already used in the
  request, get ids derived from their position on the tape (`call_t12`), so the same tape gives
  byte-identical requests in every run and process.
- Every assistant message with tool calls is followed, before any other message, by one tool
  message per call: the observation of an action, the `Respond` to a `Call`, "recorded" for a
  step the model emitted as a tool call, or "no result" for a call the conversation went past.
- A `Summary` (see `tapeagents.context.Summarize`) stands in for the steps before it, the task
  aside. Images of observations are image parts for models that read them, a note for others.
- Messages are kept in units (an assistant message with its tool messages, or one message), the
  pieces a context policy keeps or drops whole; `Conversations` extends a growing tape's
  rendering with its new steps only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from pydantic_core import to_jsonable_python

from tapeagents.context import Unit
from tapeagents.llms import LLMOutput, ToolCallRequest
from tapeagents.steps import (
    Action,
    Call,
    Error,
    Observation,
    ParsingFailure,
    Respond,
    SetNextNode,
    Step,
    Summary,
    ToolCall,
    UnknownStep,
)
from tapeagents.views import TapeViews

if TYPE_CHECKING:
    from tapeagents.llm_node import LLMNode

__all__ = [
    "ACK",
    "NO_RESULT",
    "Conversations",
    "messages",
    "output_groups",
    "render_prefixes",
    "same_output",
]

ACK = "recorded"
"""Tool-message content that acknowledges a step the model emitted as a tool call."""

NO_RESULT = "No result: the conversation went on before this call was answered."
"""Tool-message content for a call left unanswered (an interrupted or hand-edited tape)."""


def render_prefixes(
    node: LLMNode,
    steps: Sequence[Step],
    ends: Sequence[int],
    inverses: Mapping[int, LLMOutput] | None = None,
    *,
    images: bool = False,
    flat: bool = False,
) -> dict[int, list[Any]]:
    """The chat messages `node` renders for each prefix `steps[:end]`, one pass per agent view,
    as the units a context policy keeps or drops whole (with `flat`, as messages).

    An `end` inside the steps of one model output is left out (the caller renders that prefix
    on its own). `inverses` holds outputs already computed, by the index of their first step.
    With `images`, the images of observations are image content parts (else a note says they
    are not shown).
    """
    views = TapeViews(steps)
    by_view: dict[tuple[str, int], list[int]] = {}
    for end in sorted(set(ends)):
        by_view.setdefault(views.view(end), []).append(end)
    result: dict[int, list[Any]] = {}
    for (path, start), view_ends in by_view.items():
        builder = _Builder(node, views, path, start, inverses or {}, images)
        result.update(builder.run(view_ends, flat=flat))
    return result


def messages(units: Sequence[Unit]) -> list[dict[str, Any]]:
    """The messages of the units, in order."""
    return [message for unit in units for message in unit.messages]


def output_groups(steps: Sequence[Step]) -> list[tuple[int, int]]:
    """The `(start, stop)` index ranges of `steps` that one model output produced.

    Consecutive agent steps with the same `llm_call_id` form a group, and so do consecutive
    agent steps without one from the same agent and node (a non-LLM turn, or steps written by
    hand). Every observation, error and unknown step is a group of its own. Prompts render each
    group as one message, and exporters make one training example of each LLM-produced group.
    """
    groups: list[tuple[int, int]] = []
    i, n = 0, len(steps)
    while i < n:
        step = steps[i]
        j = i + 1
        if not isinstance(step, Observation | Error | UnknownStep):
            while j < n and same_output(step, steps[j]):
                j += 1
        groups.append((i, j))
        i = j
    return groups


def same_output(first: Step, other: Step) -> bool:
    """Whether two agent steps came from the same model output (or the same non-LLM turn)."""
    if isinstance(other, Observation | Error | UnknownStep):
        return False
    meta, other_meta = first.metadata, other.metadata
    if meta.llm_call_id is not None:
        return other_meta.llm_call_id == meta.llm_call_id
    return (
        other_meta.llm_call_id is None
        and other_meta.agent == meta.agent
        and other_meta.node == meta.node
    )


class _Builder:
    """Appends the steps one agent sees as chat messages, keeping every tool call answered."""

    def __init__(
        self,
        node: LLMNode,
        views: TapeViews,
        path: str,
        start: int,
        inverses: Mapping[int, LLMOutput],
        images: bool,
    ) -> None:
        self.node = node
        self.images = images
        self.deferred: list[dict[str, Any]] = []
        """User messages with the images of tool results, sent once the tool messages end."""
        self.views = views
        self.path = path
        self.start = start
        self.inverses = inverses
        self.units: list[Unit] = []
        """The messages as units a context policy keeps or drops whole (a call and its results)."""
        self.waiting: dict[str, str] = {}
        """Unanswered calls of the last assistant message: step id -> tool call id."""
        self.calls: dict[str, str] = {}
        """The last `Call` to each subagent shown as a tool call: agent name -> step id."""
        self.used: set[str] = set()
        self.used_order: list[str] = []
        self.summary_at: int | None = None
        """Index of the unit of the last `Summary`: the units before it (the task aside) are
        not shown."""
        self.messages: list[dict[str, Any]] = []
        """The messages of `closed_units`, flat, without the unanswered calls (a new list at
        each summary)."""

    def run(self, ends: Sequence[int], *, flat: bool = False) -> dict[int, list[Any]]:
        """Render the view up to the last of `ends` (ascending); the units at each end (with
        `flat`, their messages)."""
        snapshot = self.closed if flat else lambda: list(self.closed_units())
        views = self.views
        first = max(self.start, 0)
        visible = [i for i in range(first, ends[-1]) if views.sees(self.path, self.start, i)]
        snapshots: dict[int, list[Any]] = {}
        pending = list(ends)
        for group in self.groups(visible):
            while pending and pending[0] <= group[0]:
                snapshots[pending.pop(0)] = snapshot()
            while pending and pending[0] <= group[-1]:  # inside this output: rendered on its own
                pending.pop(0)
            self.add_group(group)
        for end in pending:
            snapshots[end] = snapshot()
        return snapshots

    def groups(self, visible: Sequence[int]) -> Iterator[Sequence[int]]:
        """The visible steps in groups that one model output (or one non-LLM turn) made."""
        steps = self.steps
        k = 0
        while k < len(visible):
            first = visible[k]
            stop = k + 1
            if not isinstance(steps[first], Observation | Error | UnknownStep):
                while (
                    stop < len(visible)
                    and visible[stop] == visible[stop - 1] + 1
                    and same_output(steps[first], steps[visible[stop]])
                ):
                    stop += 1
            yield visible[k:stop]
            k = stop

    def mark(self) -> _Mark:
        """The state now, to `rewind` to."""
        last = self.units[-1] if self.units else None
        return _Mark(
            len(self.units),
            last,
            len(last.messages) if last else 0,
            dict(self.waiting),
            list(self.deferred),
            dict(self.calls),
            len(self.used_order),
            self.summary_at,
            self.messages,
            len(self.messages),
        )

    def rewind(self, mark: _Mark) -> None:
        """Back to the state of `mark` (the steps added since are rendered again)."""
        del self.units[mark.units :]
        if mark.last is not None:
            del mark.last.messages[mark.last_size :]
            self.units[-1] = mark.last
        self.waiting, self.deferred, self.calls = mark.waiting, mark.deferred, mark.calls
        self.summary_at = mark.summary_at
        self.messages = mark.messages
        del self.messages[mark.messages_size :]
        for call_id in self.used_order[mark.used :]:
            self.used.discard(call_id)
        del self.used_order[mark.used :]

    @property
    def steps(self) -> Sequence[Step]:
        return self.views.steps

    # ------------------------------------------------------------------ messages

    def closed(self) -> list[dict[str, Any]]:
        """`closed_units`, as messages."""
        unanswered = [_tool_message(call_id, NO_RESULT) for call_id in self.waiting.values()]
        return self.messages + unanswered + self.deferred

    def closed_units(self) -> Sequence[Unit]:
        """The conversation so far, calls still waiting answered "no result", as units (the
        units are not copied)."""
        units: Sequence[Unit] = self.units
        if self.summary_at is not None:  # the task, then the summary and what came after
            lead = 1 if self.units[0].pinned and self.summary_at > 0 else 0
            units = _Joined(self.units, lead, self.units, self.summary_at)
        if not self.waiting and not self.deferred:
            return units
        unanswered = [_tool_message(call_id, NO_RESULT) for call_id in self.waiting.values()]
        last = units[-1]
        tail = [Unit(last.messages + unanswered, observation=last.observation, pinned=last.pinned)]
        tail += [Unit([message], observation=True) for message in self.deferred]
        return _Joined(units, len(units) - 1, tail)

    def add(self, message: dict[str, Any], *, observation: bool = False) -> None:
        """Append a message that is not a tool result (it ends the last tool-call block).

        `observation`: its body reports the world, and a context policy may elide it."""
        for call_id in self.waiting.values():
            self.add_tool(_tool_message(call_id, NO_RESULT))
        self.waiting.clear()
        for deferred in self.deferred:
            self.units.append(Unit([deferred], observation=True))
            self.messages.append(deferred)
        self.deferred.clear()
        pinned = not self.units and message["role"] == "user"  # the task
        self.units.append(Unit([message], observation=observation, pinned=pinned))
        self.messages.append(message)

    def add_tool(self, message: dict[str, Any]) -> None:
        """Append a tool message to the block of the assistant message before it."""
        self.units[-1].messages.append(message)
        self.messages.append(message)
        if not self.units[-1].observation:  # its results may be elided
            last = self.units[-1]
            self.units[-1] = Unit(last.messages, observation=True, pinned=last.pinned)

    def answer(self, step_id: str | None, content: str, images: Sequence[str] = ()) -> bool:
        """Append the tool message answering the call made by step `step_id`, if it waits.

        Tool messages hold text only: images of the result follow the tool messages of the
        call's answer, in a user message.
        """
        call_id = self.waiting.pop(step_id, None) if step_id is not None else None
        if call_id is None:
            return False
        self.add_tool(_tool_message(call_id, content))
        if images:
            note = f"[images of the result of call {call_id}]"
            self.deferred.append({"role": "user", "content": self.with_images(note, images)})
        return True

    def call_id(self, step: Step, index: int, recorded: str | None) -> str:
        """The model's id for a call, or one derived from the step's place on the tape."""
        if (
            recorded is None
            or step.metadata.llm_call_id is None
            or recorded in self.used
            or recorded == f"call_{step.metadata.id[:24]}"  # no id from the model: a random one
        ):
            recorded = f"call_t{index}"
            suffix = 1
            while recorded in self.used:  # several calls of one step (a node's own format)
                recorded = f"call_t{index}_{suffix}"
                suffix += 1
        self.used.add(recorded)
        self.used_order.append(recorded)
        return recorded

    # ------------------------------------------------------------------ steps

    def owner(self, index: int) -> str:
        return self.views.owner(self.path, self.start, index)

    def add_group(self, indices: Sequence[int]) -> None:
        first = self.steps[indices[0]]
        if isinstance(first, Observation):
            self.add_observation(first)
        elif isinstance(first, ParsingFailure):
            self.add({"role": "assistant", "content": first.raw_output})
            self.add(
                {
                    "role": "user",
                    "content": f"Your answer could not be used: {first.error}\n"
                    "Answer again in the required format.",
                }
            )
        elif isinstance(first, Error):
            return  # infrastructure failures are not part of the conversation
        elif isinstance(first, Summary):
            self.add(
                {"role": "user", "content": f"[summary of the conversation so far]\n{first.text}"}
            )
            self.summary_at = len(self.units) - 1
            first_unit = self.units[0]
            kept = first_unit.messages if first_unit.pinned and self.summary_at > 0 else []
            self.messages = [*kept, *self.units[-1].messages]
        elif isinstance(first, UnknownStep):
            self.add(
                {"role": "user", "content": f"[{first.kind}] {first.llm_text()}"}, observation=True
            )
        elif indices[0] == self.start and self.start > 0:
            assert isinstance(first, Call)
            task = first.content or f"[task from {first.metadata.agent}]"
            self.add({"role": "user", "content": task})
        elif isinstance(first, Respond) and self.owner(indices[0]) != self.path:
            self.add_response(first, self.owner(indices[0]))
        else:
            self.add_output(indices)

    def add_observation(self, step: Observation) -> None:
        images = step.llm_images()
        if step.kind == "user":
            self.add({"role": "user", "content": self.with_images(step.llm_text(), images)})
            return
        text = step.llm_dict().get("content") if step.kind == "tool_result" else None
        if text is None:
            text = step.llm_text()
        if not self.answer(step.action_id, text or "(empty)", images):
            content = self.with_images(f"[{step.kind}] {text}", images)
            self.add({"role": "user", "content": content}, observation=True)

    def with_images(self, text: str, images: Sequence[str]) -> str | list[dict[str, Any]]:
        """The text, and the images as content parts (or a note that they are not shown)."""
        if not images:
            return text
        if not self.images:
            return f"{text}\n[{len(images)} image(s) not shown: this model does not read images]"
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        return parts + [{"type": "image_url", "image_url": {"url": url}} for url in images]

    def add_response(self, step: Respond, owner: str) -> None:
        """A subagent's answer, as the result of the `Call` that asked it when that is shown."""
        name = owner.rpartition("/")[2]
        if not self.answer(self.calls.pop(name, None), step.content or "(empty)"):
            self.add({"role": "user", "content": f"[{name} responded] {step.content}"})

    def add_output(self, indices: Sequence[int]) -> None:
        node, steps = self.node, self.steps
        from_model = steps[indices[0]].metadata.llm_call_id is not None
        shown = [
            i
            for i in indices
            if not isinstance(steps[i], SetNextNode) or (from_model and node.offers(steps[i]))
        ]
        if not shown:
            return
        group = [steps[i] for i in indices]
        if from_model and len(shown) == len(indices) and all(node.offers(s) for s in group):
            known = self.inverses.get(indices[0])  # the exporter built the answer already
            if node.mode == "json":
                content = (known or node.inverse(group)).content
                self.add({"role": "assistant", "content": content})
                return
            place = {id(step): i for i, step in zip(indices, group, strict=True)}
            if known is None and node.own_inverse:
                known = node.inverse(group)  # a node's own format: its calls need not be steps
            parts: Sequence[tuple[Step | None, ToolCallRequest]]
            if known is not None:
                texts = [known.content] if known.content is not None else []
                called: list[Step | None] = list(node.call_steps(group))
                if len(called) != len(known.tool_calls):  # calls that are no steps: "recorded"
                    called = [None] * len(known.tool_calls)
                parts = list(zip(called, known.tool_calls, strict=True))
            else:
                texts, parts = node.inverse_parts(group)
            requests: Sequence[tuple[int, Step | None, ToolCallRequest]] = [
                (place[id(step)] if step else indices[0], step, request) for step, request in parts
            ]
        else:
            texts, requests = self.foreign_parts(shown)
        calls = [
            (step, self.call_id(step or group[0], i, request.id), request)
            for i, step, request in requests
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "\n\n".join(texts) if texts else None,
        }
        if calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": request.name, "arguments": request.arguments},
                }
                for _, call_id, request in calls
            ]
        self.add(message)
        for step, call_id, _ in calls:
            if isinstance(step, Action | Call) and step.metadata.id not in self.waiting:
                self.waiting[step.metadata.id] = call_id
                if isinstance(step, Call):
                    self.calls[step.agent_name] = step.metadata.id
            else:
                self.add_tool(_tool_message(call_id, ACK))

    def foreign_parts(
        self, indices: Sequence[int]
    ) -> tuple[list[str], list[tuple[int, Step, ToolCallRequest]]]:
        """Steps the node did not write as one output: what it offers as its tool calls, the
        rest as text (in JSON mode, one JSON list of them all)."""
        node = self.node
        if node.mode == "json":
            items = [node.json_item(self.steps[i]) for i in indices]
            return [json.dumps(items, ensure_ascii=False, default=to_jsonable_python)], []
        texts: list[str] = []
        requests: list[tuple[int, Step, ToolCallRequest]] = []
        for i in indices:
            step = self.steps[i]
            if node.is_content(step):
                texts.append(node.content_text(step))
            elif node.offers(step):
                requests.append((i, step, node.tool_request(step)))
            elif isinstance(step, ToolCall):
                arguments = json.dumps(
                    step.arguments, ensure_ascii=False, default=to_jsonable_python
                )
                texts.append(f"[called {step.name}] {arguments}")
            else:
                texts.append(f"[{step.kind}] {step.llm_text()}")
        return texts, requests


@dataclass(frozen=True, slots=True)
class _Mark:
    units: int
    last: Unit | None
    last_size: int
    waiting: dict[str, str]
    deferred: list[dict[str, Any]]
    calls: dict[str, str]
    used: int
    summary_at: int | None
    messages: list[dict[str, Any]]
    messages_size: int


class _Joined(Sequence[Unit]):
    """The first `keep` units of `units`, then the units of `rest` from `skip` on, without
    copying either list."""

    def __init__(
        self, units: Sequence[Unit], keep: int, rest: Sequence[Unit], skip: int = 0
    ) -> None:
        self._units, self._keep, self._rest, self._skip = units, keep, rest, skip

    def __len__(self) -> int:
        return self._keep + len(self._rest) - self._skip

    @overload
    def __getitem__(self, index: int) -> Unit: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Unit]: ...
    def __getitem__(self, index: int | slice) -> Unit | Sequence[Unit]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < self._keep:
            return self._units[index]
        return self._rest[index - self._keep + self._skip]


class Conversations:
    """A node's renderings of the tapes it was last asked about, each extended with only the
    steps appended since (tapes only grow), so a request costs the same on a long tape as on a
    short one. A tape with `Call`s and `Respond`s, or one changed other than by appending, is
    rendered from its start.
    """

    def __init__(self, node: LLMNode, size: int = 8) -> None:
        self.node = node
        self.size = size
        self._kept: dict[tuple[str, bool], _Rendering] = {}

    def units(self, tape_id: str, steps: Sequence[Step], *, images: bool) -> Sequence[Unit]:
        """The conversation of `steps` (as `render_prefixes` renders all of them) as units."""
        key = (tape_id, images)
        rendering = self._kept.pop(key, None)
        if rendering is None or not rendering.extend(steps):
            rendering = _Rendering(self.node, images)
            if not rendering.extend(steps):  # more than one agent's view: no shortcut
                views = TapeViews(steps)
                path, start = views.view(len(steps))
                builder = _Builder(self.node, views, path, start, {}, images)
                builder.run([len(steps)])
                return builder.closed_units()
        self._kept[key] = rendering  # the most recent last
        while len(self._kept) > self.size:
            del self._kept[next(iter(self._kept))]
        return rendering.builder.closed_units()

    def __getstate__(self) -> dict[str, Any]:  # renderings stay in their process
        return {"node": self.node, "size": self.size, "_kept": {}}


class _Rendering:
    """One tape's conversation so far, and the state before its last group of steps (which the
    next steps may continue, so it is rendered again with them)."""

    def __init__(self, node: LLMNode, images: bool) -> None:
        self.seen: list[Step] = []
        views = TapeViews([])
        self.builder = _Builder(node, views, "", -1, {}, images)
        self.before_last: _Mark | None = None
        self.last_start = 0

    def extend(self, steps: Sequence[Step]) -> bool:
        """Render the steps appended since the last call; False if the tape is not one
        conversation or is not an extension of the steps seen."""
        seen = len(self.seen)
        if seen > len(steps) or steps[:seen] != self.seen:
            return False
        if any(isinstance(step, Call | Respond) for step in steps[seen:]):
            return False
        builder = self.builder
        builder.views.steps = steps
        if self.before_last is not None:
            builder.rewind(self.before_last)
        for group in builder.groups(range(self.last_start, len(steps))):
            self.before_last, self.last_start = builder.mark(), group[0]
            builder.add_group(group)
        self.seen = list(steps)
        return True


def _tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}
