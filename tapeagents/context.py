"""Context policies: what to send when a conversation no longer fits the model's context window.

A prompt is a head (the system messages, always sent) and a sequence of `Unit`s, each a run of
chat messages that is valid on its own: an assistant message with tool calls and its tool
results, or one user or assistant message. A `ContextPolicy` gets them with a token `budget`
(the window less what is reserved for the answer and the tools) and a function that counts one
message, and returns the messages to send:

- `ElideObservations()` (the default) replaces the bodies of the oldest observations with a
  marker that says what was elided and how big it was, then, if that is not enough, drops the
  oldest units and says so in one marker message;
- `KeepLast(n)` keeps the pinned units (the task) and the last `n` units;
- `FailOnOverflow()` raises `ContextOverflow`, naming the sizes.

Every policy sends everything unchanged when everything fits, so a conversation's prompts only
change once it outgrows the window. Policies are pure functions of the messages: the same input
gives the same output, in any process, which keeps replays and caches exact. They walk from the
newest unit back and stop once the budget is spent, so cutting a 10,000-unit conversation costs
about what cutting a 100-unit one does (figures in docs/benchmarks.md). They never change the
input messages; an elided message is a copy.

The OpenAI chat rules that every request keeps are checked by `tapeagents.chat_rules`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tapeagents.errors import ContextWindowExceeded, UsageError

__all__ = [
    "ContextOverflow",
    "ContextPolicy",
    "TokenCounter",
    "ElideObservations",
    "FailOnOverflow",
    "KeepLast",
    "Summarize",
    "SummaryNeeded",
    "Unit",
    "fit_context",
    "units_from_messages",
]

Message = dict[str, Any]
TokenCounter = Callable[[Message], int]
"""Tokens one message adds to a prompt (`LLM.count_message_tokens`)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """A run of chat messages that is valid on its own, kept or dropped as a whole."""

    messages: list[Message]
    """An assistant message with tool calls plus its tool messages, or one user or assistant
    message."""
    observation: bool = False
    """Its tool and user message bodies may be elided (they report what the world answered)."""
    pinned: bool = False
    """Never dropped nor elided (the task: the first user message). Pinned units lead the
    conversation: a policy never looks at the units it drops, so it raises `UsageError` when it
    meets a pinned unit after an unpinned one."""


@runtime_checkable
class ContextPolicy(Protocol):
    """Decides which messages to send when a conversation may not fit the budget."""

    def fit(
        self, head: list[Message], units: Sequence[Unit], *, budget: int, count: TokenCounter
    ) -> list[Message]:
        """The messages to send: `head` first, then what is kept of `units`, in order, within
        `budget` tokens as `count` counts them; raises `ContextOverflow` if that cannot be."""
        ...


class ContextOverflow(ContextWindowExceeded):
    """A prompt does not fit the context budget and the policy cannot (or may not) cut it.

    An `LLMError`, so a node records it as a failure step. The message names the sizes and
    what to do instead.

    Args:
        needed: Tokens the prompt needs (at least this many, as the policy would send it).
        budget: Tokens it may have: the window less the answer's and the tools' reserve.
        window: The model's context window, when known.
        advice: What to do about it, in a sentence or two.
    """

    def __init__(self, *, needed: int, budget: int, window: int | None = None, advice: str) -> None:
        self.needed = needed
        self.budget = budget
        self.window = window
        self.advice = advice
        if window is None:
            room = f"{budget:,} fit (the context window less the answer's and the tools' reserve)"
        else:
            room = (
                f"{budget:,} fit (a context window of {window:,} less {window - budget:,} "
                "reserved for the answer and the tools)"
            )
        super().__init__(f"The prompt needs {needed:,} tokens but only {room}. {advice}")

    def with_window(self, window: int) -> ContextOverflow:
        """The same error, its message naming the model's context window."""
        return ContextOverflow(
            needed=self.needed, budget=self.budget, window=window, advice=self.advice
        )

    def __reduce__(self) -> tuple[Any, ...]:  # keyword arguments survive pickling
        fields = {
            "needed": self.needed,
            "budget": self.budget,
            "window": self.window,
            "advice": self.advice,
        }
        return _rebuild_overflow, (fields,)


def _rebuild_overflow(fields: dict[str, Any]) -> ContextOverflow:
    return ContextOverflow(**fields)


# ----------------------------------------------------------------------------- counting


class _Counts:
    """One `fit`'s counts, each message counted once (keyed by identity: the messages are
    alive for the whole call, so an id cannot be reused)."""

    __slots__ = ("_count", "_known")

    def __init__(self, count: TokenCounter) -> None:
        self._count = count
        self._known: dict[int, int] = {}

    def message(self, message: Message) -> int:
        key = id(message)
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = self._count(message)
        return known

    def messages(self, messages: Sequence[Message]) -> int:
        return sum(self.message(m) for m in messages)


def _omitted(count: int) -> Message:
    """The marker put where dropped units were."""
    noun = "turn" if count == 1 else "turns"
    return {
        "role": "user",
        "content": f"[{count:,} earlier {noun} omitted to fit the context window]",
    }


_MARKER_ROOM = _omitted(10**9)
"""The largest marker, counted before the number of omitted turns is known."""


def _misplaced(index: int) -> UsageError:
    return UsageError(
        f"Unit {index} is pinned but follows unpinned units; pinned units (the task) must lead "
        "the conversation, because a policy never looks at the units it drops."
    )


def _leading_pinned(units: Sequence[Unit]) -> int:
    """How many units lead the conversation pinned."""
    lead = 0
    while lead < len(units) and units[lead].pinned:
        lead += 1
    return lead


def _fits_whole(units: Sequence[Unit], lead: int, room: int, counts: _Counts) -> bool:
    """Whether the units after the `lead` pinned ones fit `room` as they are; counts from the
    newest back and stops as soon as the room is spent."""
    used = 0
    for i in range(len(units) - 1, lead - 1, -1):
        unit = units[i]
        if unit.pinned:
            raise _misplaced(i)
        used += counts.messages(unit.messages)
        if used > room:
            return False
    return True


def _everything(head: list[Message], units: Sequence[Unit]) -> list[Message]:
    return [*head, *(m for unit in units for m in unit.messages)]


@dataclass(frozen=True, slots=True)
class _Overflow:
    """What a policy has to cut: the counts so far, the pinned units that lead, and the room
    left after them and the head."""

    counts: _Counts
    lead: int
    room: int


def _measure(
    head: list[Message], units: Sequence[Unit], budget: int, count: TokenCounter
) -> list[Message] | _Overflow:
    """Every policy's first step: the whole conversation when it fits (unchanged), else what
    there is to cut; `ContextOverflow` when the head and the task alone do not fit."""
    counts = _Counts(count)
    lead, room = _check_fixed(head, units, budget, counts)
    if _fits_whole(units, lead, room, counts):
        return _everything(head, units)
    return _Overflow(counts, lead, room)


def _assemble(
    head: list[Message],
    units: Sequence[Unit],
    lead: int,
    start: int,
    forms: dict[int, list[Message]] | None = None,
) -> list[Message]:
    """Head, the `lead` pinned units, a marker for the units between them and `start` (if
    any), then the units from `start` on (`forms` replaces some units' messages)."""
    out = list(head)
    for i in range(lead):
        out.extend(units[i].messages)
    if start > lead:
        out.append(_omitted(start - lead))
    for i in range(start, len(units)):
        replaced = forms.get(i) if forms else None
        out.extend(replaced if replaced is not None else units[i].messages)
    return out


def _check_fixed(
    head: list[Message], units: Sequence[Unit], budget: int, counts: _Counts
) -> tuple[int, int]:
    """How many units lead pinned, and the room left once they and the head are counted;
    raises `ContextOverflow` when they alone do not fit."""
    lead = _leading_pinned(units)
    fixed = counts.messages(head) + sum(counts.messages(units[i].messages) for i in range(lead))
    if fixed > budget:
        raise ContextOverflow(
            needed=fixed,
            budget=budget,
            advice=(
                "The system messages and the task alone do not fit, and no policy cuts them: "
                "shorten them, offer fewer tools, reserve fewer tokens for the answer "
                "(max_tokens), or use a model with a larger context window."
            ),
        )
    return lead, budget - fixed


# ----------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class FailOnOverflow:
    """Send everything, or raise `ContextOverflow` naming the sizes when it does not fit."""

    def fit(
        self, head: list[Message], units: Sequence[Unit], *, budget: int, count: TokenCounter
    ) -> list[Message]:
        measured = _measure(head, units, budget, count)
        if isinstance(measured, list):
            return measured
        counts = measured.counts
        # The error path counts everything, to name the full size.
        needed = counts.messages(head) + sum(counts.messages(u.messages) for u in units)
        raise ContextOverflow(
            needed=needed,
            budget=budget,
            advice=(
                "FailOnOverflow() does not cut prompts: choose ElideObservations() (elides old "
                "tool outputs, then drops the oldest steps) or KeepLast(n), or use a model with "
                "a larger context window."
            ),
        )


@dataclass(frozen=True)
class KeepLast:
    """When everything does not fit: the pinned units (the task) and the last `n` units, with a
    marker message where the others were; raises `ContextOverflow` if even that does not fit.

    Args:
        n: How many of the newest units to keep.
    """

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UsageError(f"KeepLast(n) needs n >= 1, not {self.n}.")

    def fit(
        self, head: list[Message], units: Sequence[Unit], *, budget: int, count: TokenCounter
    ) -> list[Message]:
        measured = _measure(head, units, budget, count)
        if isinstance(measured, list):
            return measured
        counts, lead, room = measured.counts, measured.lead, measured.room
        start = max(len(units) - self.n, lead)
        kept = sum(counts.messages(units[i].messages) for i in range(start, len(units)))
        marker = counts.message(_omitted(start - lead)) if start > lead else 0
        if kept + marker > room:
            raise ContextOverflow(
                needed=budget - room + kept + marker,
                budget=budget,
                advice=(
                    f"KeepLast({self.n}) keeps the last {self.n} steps whole: keep fewer, or "
                    "choose ElideObservations(), which also shortens the steps it keeps."
                ),
            )
        return _assemble(head, units, lead, start)


class SummaryNeeded(Exception):
    """The prompt does not fit: the agent's `node` should summarize the conversation first."""

    def __init__(self, node: str) -> None:
        super().__init__(f"The prompt does not fit; node {node!r} summarizes the conversation.")
        self.node = node


@dataclass(frozen=True)
class Summarize:
    """When everything does not fit: the agent's `node` (a `tapeagents.Summarizer`) writes a
    `Summary` step of the conversation so far, and prompts show the summary in place of the
    steps before it. The summary is a step on the tape, so runs replay and export it.

    Args:
        node: The name of the agent's `Summarizer` node.
    """

    node: str = "summarize"

    def fit(
        self, head: list[Message], units: Sequence[Unit], *, budget: int, count: TokenCounter
    ) -> list[Message]:
        measured = _measure(head, units, budget, count)
        if isinstance(measured, list):
            return measured
        raise SummaryNeeded(self.node)


@dataclass(frozen=True)
class ElideObservations:
    """When everything does not fit: replace the bodies of the oldest observations with a marker
    (`[elided: 12,345 characters of tool output]`), oldest first, until it fits; if eliding every
    body is not enough, also drop the oldest units, with one marker message where they were.

    The pinned units (the task) are never touched. The `keep_recent` newest observations keep
    their bodies as long as they fit (older units are dropped first); the newest unit is never
    dropped. A body shorter than its marker is not elided.

    Args:
        keep_recent: How many of the newest observations keep their bodies while older units
            are dropped.
        max_elided: The most observations kept with their bodies elided; older units are
            dropped. Hundreds of markers tell the model little, and the bound keeps the cost of
            a request the same on a tape of any length.
    """

    keep_recent: int = 2
    max_elided: int = 32

    def __post_init__(self) -> None:
        if self.keep_recent < 0:
            raise UsageError(f"ElideObservations needs keep_recent >= 0, not {self.keep_recent}.")
        if self.max_elided < 0:
            raise UsageError(f"ElideObservations needs max_elided >= 0, not {self.max_elided}.")

    def fit(
        self, head: list[Message], units: Sequence[Unit], *, budget: int, count: TokenCounter
    ) -> list[Message]:
        measured = _measure(head, units, budget, count)
        if isinstance(measured, list):
            return measured
        counts, lead, room = measured.counts, measured.lead, measured.room
        plan = _plan(units, lead, room, counts, self.keep_recent, self.max_elided)
        if plan is None:
            newest = units[-1]
            smallest = (_elided(newest) if newest.observation else None) or newest.messages
            raise ContextOverflow(
                needed=budget - room + counts.messages(smallest),
                budget=budget,
                advice=(
                    "Even the newest turn alone does not fit (its output elided, if it is one): "
                    "shorten it, the system messages or the task, reserve fewer tokens for the "
                    "answer (max_tokens), or use a model with a larger context window."
                ),
            )
        start, forms = plan
        return _assemble(head, units, lead, start, forms)


def _plan(
    units: Sequence[Unit], lead: int, room: int, counts: _Counts, keep_recent: int, max_elided: int
) -> tuple[int, dict[int, list[Message]]] | None:
    """Where the kept units start and the elided forms of those that are elided, or None when
    not even the newest unit fits.

    Walks from the newest unit back, counting each unit as it would be sent if every observation
    older than the `keep_recent` newest were elided (those whole while they fit), until the room
    is spent, `max_elided` units are elided or the oldest unit is reached; everything older is
    dropped. Then un-elides from the
    newest elided unit back while the room allows, so the elided ones are the oldest.
    """
    kept: list[tuple[int, int]] = []  # (unit index, tokens as counted), newest first
    forms: dict[int, list[Message]] = {}
    used = 0
    spared = 0
    dropping = False
    for i in range(len(units) - 1, lead - 1, -1):
        unit = units[i]
        if unit.pinned:
            raise _misplaced(i)
        form: list[Message] | None = None
        if unit.observation:
            if spared < keep_recent:
                spared += 1
                if used + counts.messages(unit.messages) > room:  # whole only if it fits
                    form = _elided(unit)
            else:
                form = _elided(unit)
        tokens = counts.messages(form if form is not None else unit.messages)
        if used + tokens > room or (form is not None and len(forms) >= max_elided):
            dropping = True
            break
        if form is not None:
            forms[i] = form
        kept.append((i, tokens))
        used += tokens
    if dropping:
        marker = counts.message(_MARKER_ROOM)
        while kept and used + marker > room:
            _, tokens = kept.pop()
            used -= tokens
        if not kept:
            return None
        room -= marker
    # Un-elide the newest elided units while they fit whole: elision stays oldest first.
    for position, (i, tokens) in enumerate(kept):
        form = forms.get(i)
        if form is None:
            continue
        whole = counts.messages(units[i].messages)
        if used - tokens + whole > room:
            break
        del forms[i]
        kept[position] = (i, whole)
        used += whole - tokens
    start = kept[-1][0] if dropping else lead
    return start, forms


_ELIDE_ROLES = frozenset({"tool", "user"})


def _elided(unit: Unit) -> list[Message] | None:
    """The unit with its tool and user message bodies replaced by markers (copies), or None when
    no body is longer than its marker."""
    out: list[Message] | None = None
    for position, message in enumerate(unit.messages):
        if message.get("role") not in _ELIDE_ROLES:
            continue
        marker = _body_marker(message)
        if marker is None:
            continue
        if out is None:
            out = list(unit.messages)
        out[position] = {**message, "content": marker}
    return out


def _body_marker(message: Message) -> str | None:
    """The text that replaces a message's body, or None when the body is shorter than it."""
    content = message.get("content")
    images = 0
    if isinstance(content, str):
        characters = len(content)
    elif isinstance(content, list):
        characters = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                images += 1
            elif isinstance(part, dict) and part.get("type") == "text":
                characters += len(str(part.get("text") or ""))
            else:
                characters += len(json.dumps(part, ensure_ascii=False, default=str))
    else:
        return None
    what = "tool output" if message.get("role") == "tool" else "observation"
    sizes = [f"{characters:,} characters"] if characters or not images else []
    if images:
        sizes.insert(0, f"{images} image" + ("s" if images > 1 else ""))
    marker = f"[elided: {' and '.join(sizes)} of {what}]"
    if not images and characters <= len(marker):
        return None
    return marker


# ----------------------------------------------------------------------------- helpers


def fit_context(
    policy: ContextPolicy,
    head: list[Message],
    units: Sequence[Unit],
    *,
    window: int,
    reserve: int,
    count: TokenCounter,
) -> list[Message]:
    """`policy.fit` with the budget `window - reserve`; a `ContextOverflow` names the window.

    Args:
        policy: The node's policy.
        head: The system messages.
        units: The conversation.
        window: The model's context window (`LLM.context_window`).
        reserve: Tokens kept free: the answer's `max_tokens` and the tools' specifications
            (`LLM.count_tokens([], tools)`).
        count: Tokens of one message (`LLM.count_message_tokens`).
    """
    try:
        return policy.fit(head, units, budget=window - reserve, count=count)
    except ContextOverflow as error:
        raise error.with_window(window) from None


def units_from_messages(messages: Sequence[Message]) -> tuple[list[Message], list[Unit]]:
    """Split chat messages into the head (leading system messages) and units: an assistant
    message with tool calls plus the tool messages after it (an observation), or one other
    message. A user message that is the first unit is pinned (it is the task)."""
    position = 0
    while position < len(messages) and messages[position].get("role") in ("system", "developer"):
        position += 1
    head = list(messages[:position])
    units: list[Unit] = []
    while position < len(messages):
        message = messages[position]
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            end = position + 1
            while end < len(messages) and messages[end].get("role") == "tool":
                end += 1
            units.append(Unit(list(messages[position:end]), observation=True))
            position = end
            continue
        units.append(
            Unit([message], observation=role == "tool", pinned=not units and role == "user")
        )
        position += 1
    return head, units
