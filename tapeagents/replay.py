"""Replay: re-run an agent over a recorded tape; find the first step where it behaves differently.

The agent's LLMs are replaced by `ReplayLLM`s over the tape's recorded calls, each `like` the LLM
it replaces (its context window and token counts, so context policies cut long conversations as
they did when recording), and the world's answers come from the tape itself (or from a live
environment). Whenever the agent acts, its new steps are compared with the recorded ones; the
first difference, or a prompt that was never recorded, ends the replay with a report that shows
both versions.

    report = replay_sync(agent, tape, store=store)
    assert report.passed, report.explain()
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tapeagents.agent import Agent
from tapeagents.environment import Environment, observe
from tapeagents.errors import ReplayMismatch, UsageError
from tapeagents.llms import LLM, LLMCall, ReplayLLM
from tapeagents.steps import Action, Observation, Step, ToolCall
from tapeagents.sync import run_blocking
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = ["ReplayReport", "assert_replays", "replay", "replay_sync"]


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of replaying one tape."""

    tape_id: str
    passed: bool
    steps_checked: int
    first_difference: int | None = None
    """Index of the first step that differs (or that the agent could not produce)."""
    expected: Step | None = None
    """The recorded step at `first_difference`."""
    actual: Step | None = None
    """What the agent produced there instead (None if it failed before producing it)."""
    reason: str = ""
    """Why the steps differ; for a changed prompt, the prompt diff."""
    llm_calls: int = 0
    """Model requests the replay answered from the recorded calls (each one a hit)."""

    def explain(self) -> str:
        """A readable account of the replay, for assertion messages and the CLI."""
        if self.passed:
            return (
                f"Tape {self.tape_id}: replay passed ({self.steps_checked} steps checked); "
                f"{self.llm_calls} model calls answered from the recording."
            )
        lines = [
            f"Tape {self.tape_id}: replay differs at step {self.first_difference} "
            f"(after {self.steps_checked} matching steps).",
            f"  recorded: {_describe(self.expected)}",
            f"  replayed: {_describe(self.actual)}",
        ]
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)

    __str__ = explain


def _describe(step: Step | None) -> str:
    if step is None:
        return "(nothing)"
    return f"{step.kind} {step.llm_text()[:500]}"


def _same(recorded: Step, replayed: Step) -> bool:
    if recorded.kind != replayed.kind:
        return False
    old, new = recorded.llm_dict(), replayed.llm_dict()
    if isinstance(recorded, ToolCall) and recorded.metadata.llm_call_id is None:
        # A tool call written by code gets a random `call_id` on every run; no model sees it
        # (prompts show such calls with ids derived from their place on the tape).
        old.pop("call_id", None)
        new.pop("call_id", None)
    return old == new


def _replaying(agent: Agent, calls: Sequence[LLMCall]) -> Agent:
    """A copy of `agent` (and its subagents) whose LLMs answer from `calls`.

    Each distinct LLM becomes a `ReplayLLM` `like` it. With several distinct LLMs, each answers
    from the calls recorded with its model and parameters (all the calls when none were, say
    after a change of model), so that two models asked the same prompt get their own answers.
    """
    found: dict[int, LLM] = {}
    pending = [agent]
    while pending:
        current = pending.pop()
        found.update((id(llm), llm) for llm in current.llms.values())
        pending.extend(current.subagents.values())
    replays: dict[int, ReplayLLM] = {}
    for key, llm in found.items():
        own = [c for c in calls if (c.model, c.parameters) == (llm.model, llm.parameters)]
        replays[key] = ReplayLLM(own if own and len(found) > 1 else calls, like=llm)

    def swap(original: Agent) -> Agent:
        clone = copy.copy(original)
        clone.llms = {name: replays[id(llm)] for name, llm in original.llms.items()}
        clone.subagents = {name: swap(sub) for name, sub in original.subagents.items()}
        return clone

    return swap(agent)


async def replay(
    agent: Agent,
    tape: Tape[Any, Any],
    *,
    llm_calls: Sequence[LLMCall] | None = None,
    store: TapeStore | None = None,
    env: Environment | None = None,
) -> ReplayReport:
    """Replay `tape` with `agent` against its recorded LLM calls.

    Args:
        agent: The (possibly changed) agent to check.
        tape: The recorded tape.
        llm_calls: The recorded calls; by default they are read from `store`.
        store: Where the calls were recorded (a run with `store=`).
        env: A live environment to answer actions with instead of the recorded observations;
            its observations are compared too.
    """
    if llm_calls is None:
        if store is None:
            raise UsageError(
                "Pass the recorded calls: replay(..., store=store) or llm_calls=[...]."
            )
        llm_calls = store.llm_calls_of(tape)
    replaying = _replaying(agent, llm_calls) if llm_calls else agent
    new: Tape[Any, Any] = Tape(id=tape.id, context=tape.context)
    actions: dict[str, Action] = {}
    checked = 0
    answered = 0
    index = 0

    def differs(at: int, actual: Step | None, reason: str = "") -> ReplayReport:
        expected = tape.steps[at] if at < len(tape.steps) else None
        return ReplayReport(tape.id, False, checked, at, expected, actual, reason, answered)

    while index < len(tape.steps):
        recorded = tape.steps[index]
        if not recorded.metadata.agent:  # the world's step: recorded, or asked of a live env
            if env is not None and isinstance(recorded, Observation) and recorded.action_id:
                action = actions.get(recorded.action_id)
                if action is not None:
                    observation = await observe(env, action, new)
                    if not _same(recorded, observation):
                        return differs(index, observation, "The environment answered differently.")
            new.append(recorded)
            index += 1
            checked += 1
            continue
        produced: list[Step] = []
        try:
            async for item in replaying.step(new):
                if isinstance(item, Step):
                    produced.append(item)
                elif isinstance(item, LLMCall):
                    answered += 1
        except ReplayMismatch as mismatch:
            return differs(index, None, f"The agent asked the model something new.\n{mismatch}")
        if not produced:
            return differs(index, None, "The agent produced no step.")
        for offset, step in enumerate(produced):
            at = index + offset
            if at >= len(tape.steps) or not _same(tape.steps[at], step):
                return differs(at, step)
            original = tape.steps[at]
            if isinstance(original, Action):
                actions[original.metadata.id] = original
            new.append(original)  # keep recorded ids, so later observations still match
            checked += 1
        index += len(produced)
    return ReplayReport(tape.id, True, checked, llm_calls=answered)


def replay_sync(
    agent: Agent,
    tape: Tape[Any, Any],
    *,
    llm_calls: Sequence[LLMCall] | None = None,
    store: TapeStore | None = None,
    env: Environment | None = None,
) -> ReplayReport:
    """Blocking `replay`; inside a running event loop, `await replay(...)` instead."""
    return run_blocking(
        replay(agent, tape, llm_calls=llm_calls, store=store, env=env),
        sync_name="replay_sync",
        use_instead="await replay(...)",
    )


def assert_replays(
    agent: Agent, store: TapeStore, tapes: Iterable[Tape[Any, Any] | str] | None = None
) -> None:
    """Fail (AssertionError) unless every tape (default: all in the store) replays unchanged.

    The one-line regression test over recorded sessions:

        def test_recorded_sessions_still_replay():
            assert_replays(make_agent(), TapeStore("tests/data/sessions.db"))
    """
    chosen = store.iter_tapes() if tapes is None else tapes
    failures = []
    count = 0
    for item in chosen:
        tape = store.get(item) if isinstance(item, str) else item
        report = replay_sync(agent, tape, store=store)
        count += 1
        if not report.passed:
            failures.append(report.explain())
    if failures:
        raise AssertionError(
            f"{len(failures)} of {count} tapes no longer replay:\n\n" + "\n\n".join(failures)
        )
