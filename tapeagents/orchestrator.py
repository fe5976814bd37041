"""The run loop: the agent and the environment take turns appending to one tape.

`run` is an async generator of events; everything else (`run_sync`, the CLI, batch runs)
drains it. Each turn the environment first answers the pending actions (exactly one
observation each, in their order; the actions of one answer are performed at the same time when
the environment is `concurrent`), then the agent's next node adds steps. The run ends with a
`Finished` event that says why:

- `"stopped"`: the agent wrote a `StopStep`;
- `"awaiting_input"`: the agent asked the user something (an `awaits_input` action);
- `"no_environment"`: actions are pending and no environment was given;
- `"max_steps"`: the run appended `max_steps` steps;
- `"error"`: the LLM backend failed, the model's answers failed to parse `max_errors` times
  in a row, or the store refused a write. The error step on the tape says what happened.

Resuming is calling `run` again on the tape (or on a fork of any prefix of it, or an edited
copy): the tape is the whole state. With `store=`, the steps one node produced (one model
answer: say a thought and a tool call) are committed in one transaction with the LLM calls
they came from, all or none of them, before they are reported and before anything else happens
(runs in one event loop share commits, see `tapeagents.store.group`; with `write_behind`, an
answer commits during the next LLM call). A crash therefore leaves whole answers, and a resume
asks the model again only for an answer that was not stored. The tape's status says how the
run ended; a tape still marked "running" was interrupted, and its unanswered actions get an
"interrupted" observation when it is resumed (they are not performed twice).

When the store refuses a write (text the database cannot hold, a failed COMMIT, a full disk),
the refused steps are taken off the tape, a `StoreFailure` step takes their place (an
`ErrorObservation` for an action's observation, so the action is not performed twice), it is
stored if the store still takes writes, and the run ends with "error" and the database's
message (a refused record of the run's end leaves the tape whole, with no failure step). No
event reports a step the store refused, except those already reported by `write_behind`.
Another process appending to the tape is not a refusal: `run` raises `StoreConflict` and
leaves the tape to that process.

A stored run holds a lease on its tape from its start to its end, however it ends (see
`tapeagents.store.leases`): another run on the same tape is refused with `LeaseHeld` while
this one is alive, and a killed run's lease lapses after `TapeStore.lease_seconds`. `force=True`
takes the tape over without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, assert_never

from tapeagents.agent import Agent
from tapeagents.environment import Environment, observe
from tapeagents.errors import LeaseHeld, StoreConflict, StoreError, UsageError
from tapeagents.llms import LLMCall, TextDelta
from tapeagents.steps import (
    Action,
    ErrorObservation,
    LLMFailure,
    NodeFailure,
    Observation,
    ParsingFailure,
    Step,
    StopStep,
    StoreFailure,
    UserMessage,
)
from tapeagents.sync import run_blocking
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import TapeStore
    from tapeagents.store.leases import Lease

__all__ = [
    "EnvironmentReacted",
    "Event",
    "Finished",
    "LLMCallMade",
    "StepAppended",
    "StopReason",
    "TextStreamed",
    "run",
    "run_sync",
]


StopReason = Literal["stopped", "awaiting_input", "no_environment", "max_steps", "error"]


@dataclass(frozen=True, slots=True)
class StepAppended:
    """A step was appended to the tape at `index`."""

    step: Step
    index: int


@dataclass(frozen=True, slots=True)
class LLMCallMade:
    """The agent called an LLM; the steps that follow point to this call."""

    call: LLMCall


@dataclass(frozen=True, slots=True)
class TextStreamed:
    """A piece of model output text, as it streams in."""

    text: str


@dataclass(frozen=True, slots=True)
class EnvironmentReacted:
    """The environment answered the pending actions with these observations."""

    observations: list[Observation]


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended; `reason` says why, `tape` is the tape (also the resumable state)."""

    tape: Tape[Any, Any]
    reason: StopReason
    error: str | None = None
    """What failed, when `reason` is "error"."""


Event = StepAppended | LLMCallMade | TextStreamed | EnvironmentReacted | Finished


async def run(
    agent: Agent,
    tape: Tape[Any, Any] | str,
    env: Environment | None = None,
    *,
    max_steps: int = 100,
    max_errors: int = 3,
    store: TapeStore | None = None,
    write_behind: bool = False,
    force: bool = False,
) -> AsyncIterator[Event]:
    """Run `agent` on `tape` (in place) with `env` answering its actions; yield what happens.

    Args:
        agent: The agent to run.
        tape: The tape to continue, or a first user message to start a new one with.
        env: Answers the agent's actions; None if the agent only talks.
        max_steps: Stop after appending this many steps in this run.
        max_errors: Stop after this many unparsable model answers in a row.
        store: Persist every step as it is appended (see the module docstring).
        write_behind: Commit the agent's steps while it goes on to its next LLM call, instead
            of before reporting them: for batch runs, where the wait adds up. A step is still
            committed before the environment acts on anything and before the run finishes, and
            the store always holds a prefix of the tape. If the store refuses a write made
            behind, its steps (already reported) are taken off the tape again, as `Finished`
            shows.
        force: Take the tape's lease even if another run holds it (see the module docstring):
            for a run you know was killed, without waiting for its lease to expire.

    Yields:
        Events; the last one is always `Finished`.

    Example:
        >>> async def main():
        ...     async for event in run(agent, "Hi"):
        ...         print(event)
    """
    if isinstance(tape, str):
        tape = Tape(steps=[UserMessage(content=tape)])
    recorder = _Recorder(tape, store, write_behind=write_behind, force=force)
    try:
        await recorder.start(agent.name)
        async for event in _turns(agent, tape, env, recorder, max_steps, max_errors):
            yield event
    except _Refused as refused:
        yield Finished(tape, "error", await recorder.refused(refused))
    finally:  # however the run ends (an error, a cancellation): give the tape up
        await recorder.release()


async def _turns(
    agent: Agent,
    tape: Tape[Any, Any],
    env: Environment | None,
    recorder: _Recorder,
    max_steps: int,
    max_errors: int,
) -> AsyncIterator[Event]:
    """`run`'s turns, up to its `Finished` event."""
    appended = 0
    errors_in_a_row = 0

    async def finish(reason: StopReason, error: str | None = None) -> Finished:
        await recorder.end(reason)
        return Finished(tape, reason, error)

    check_pending = True  # only a run's start, the environment and new actions change them
    while True:
        pending = tape.pending_actions() if check_pending else []
        check_pending = False
        actions = [action for action in pending if not action.awaits_input]
        if actions:
            if env is None:
                yield await finish("no_environment")
                return
            await recorder.settle()  # the actions are stored before anything is done about them
            observations: list[Observation] = []
            async for observation in _performed(env, actions, tape):
                yield await recorder.append(observation)
                appended += 1
                observations.append(observation)
            yield EnvironmentReacted(observations)
            check_pending = True
            continue
        if pending:
            yield await finish("awaiting_input")
            return
        last = tape.last
        if isinstance(last, StopStep):
            yield await finish("stopped")
            return
        if appended > 0 and isinstance(last, LLMFailure):
            yield await finish("error", last.error)
            return
        if errors_in_a_row >= max_errors:
            message = f"The model's answer could not be parsed {errors_in_a_row} times in a row."
            yield await finish("error", message)
            return
        if appended >= max_steps:
            yield await finish("max_steps")
            return

        path, node = agent.plan(tape)
        # The node's steps go on the tape as they come (the node may read them) and to the
        # store in one write once it is done: all of its answer or none of it.
        first = len(tape)
        try:
            async for item in agent.step(tape, path=path, node=node):
                if isinstance(item, Step):
                    tape.append(item)
                    appended += 1
                    check_pending = check_pending or isinstance(item, Action)
                    errors_in_a_row = errors_in_a_row + 1 if isinstance(item, ParsingFailure) else 0
                elif isinstance(item, LLMCall):
                    recorder.call_made(item)
                    yield LLMCallMade(item)
                elif isinstance(item, TextDelta):
                    yield TextStreamed(item.text)
                else:
                    assert_never(item)  # Agent.step lets nothing else through
        except Exception as error:  # a bug in agent code: record it, then let it surface
            failure = NodeFailure(error="".join(traceback.format_exception_only(error)).strip())
            failure.metadata.agent, failure.metadata.node = path, node.name
            tape.append(failure)
            try:  # what the node produced, and the failure, in one write
                for event in await recorder.write(first):
                    yield event
                await recorder.end("error")
            except _Refused as refused:
                await recorder.refused(refused)
            raise
        if len(tape) == first:
            raise UsageError(f"Node {node.name!r} of agent {path!r} produced no steps.")
        for event in await recorder.write(first, behind=True):
            yield event


async def _performed(
    env: Environment, actions: list[Action], tape: Tape[Any, Any]
) -> AsyncIterator[Observation]:
    """The observations of `actions`, in their order; performed at the same time when the
    environment allows it (each is reported as soon as it and those before it are done)."""
    if not env.concurrent or len(actions) == 1:
        for action in actions:
            yield await observe(env, action, tape)
        return
    tasks = [asyncio.ensure_future(observe(env, action, tape)) for action in actions]
    try:
        for task in tasks:
            yield await task
    finally:  # a cancelled run leaves no action running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Refused(Exception):
    """The store refused to write steps `start` to `end` (exclusive) of the tape: `run` ends
    with `reason`, the store's error. (Another process appending is a conflict, not this.)"""

    def __init__(self, start: int, end: int, reason: StoreError) -> None:
        super().__init__(str(reason))
        self.start = start
        self.end = end
        self.reason = reason


class _Recorder:
    """Appends steps to the tape and, with a store, commits each write (an observation, or a
    node's steps with their LLM calls) before its steps are reported (or, written behind,
    before the environment acts and before the run ends)."""

    def __init__(
        self,
        tape: Tape[Any, Any],
        store: TapeStore | None,
        *,
        write_behind: bool = False,
        force: bool = False,
    ) -> None:
        self.tape = tape
        self.store = store
        self.write_behind = write_behind
        self.force = force
        self.lease: Lease | None = None
        self._unsaved_calls: list[LLMCall] = []
        self._writing: asyncio.Future[None] | None = None
        self._writing_steps = (0, 0)
        """The steps of the write in flight: (start, end)."""

    async def start(self, agent_name: str) -> None:
        """Take the tape's lease and mark it running (one transaction; `LeaseHeld` if another
        run is alive on it), then answer the actions an interrupted run left pending."""
        if self.store is None:
            return
        before, self.lease = await self.store.astart_run(
            self.tape, agent=agent_name, force=self.force
        )
        if before == "running":  # the last run on this tape was interrupted (its lease lapsed)
            for action in self.tape.pending_actions():
                if not action.awaits_input:
                    await self.append(
                        ErrorObservation(
                            error="Interrupted: the run stopped before this action finished, "
                            "so it was not completed and will not be retried.",
                            action_id=action.metadata.id,
                        )
                    )

    def call_made(self, call: LLMCall) -> None:
        if self.store is not None:
            self._unsaved_calls.append(call)

    async def append(self, step: Step, *, behind: bool = False) -> StepAppended:
        """Append the step and store it (see `write`)."""
        self.tape.append(step)
        return (await self.write(len(self.tape) - 1, behind=behind))[0]

    async def write(self, start: int, *, behind: bool = False) -> list[StepAppended]:
        """Store the tape's steps from `start` on, with the LLM calls made since the last
        write, in one transaction; then report them. With `behind` (and `write_behind`) the
        write commits while the run goes on, and the next `settle` waits for it.

        Raises `_Refused` if the store refuses the write (now, or at the next `settle`)."""
        steps = self.tape.steps[start:]
        if self.store is not None:
            await self.settle()  # one write at a time, in order
            calls, self._unsaved_calls = self._unsaved_calls, []
            write = self.store.aappend_steps(self.tape.id, start, steps, calls)
            if behind and self.write_behind:
                self._writing = asyncio.ensure_future(write)
                self._writing_steps = (start, len(self.tape))
                # a failure is raised by the next settle; never an unretrieved exception
                self._writing.add_done_callback(lambda done: done.cancelled() or done.exception())
            else:
                await _stored(write, start, len(self.tape))
        return [StepAppended(step, start + i) for i, step in enumerate(steps)]

    async def settle(self) -> None:
        """Wait until the steps written behind are committed (`_Refused` if they were not)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await _stored(writing, *self._writing_steps)

    async def end(self, reason: StopReason) -> None:
        """`finish`; the store refusing to record it is a `_Refused` of no steps."""
        try:
            await self.finish(reason)
        except (StoreConflict, LeaseHeld):  # another run has the tape now: it is theirs
            raise
        except StoreError as error:
            raise _Refused(len(self.tape), len(self.tape), error) from error

    async def refused(self, refused: _Refused) -> str:
        """Take the refused steps (and any after them) off the tape, put a failure step in
        their place, store it and end the run as "error" if the store still takes writes;
        return what happened, for `Finished.error`. (Refused with no steps, the run's end was
        refused: the tape is whole and gets no failure step.)"""
        if refused.start == refused.end:
            notes = [
                f"The store refused to record how the run ended: "
                f"{str(refused.reason).rstrip('.')}. The tape holds every step."
            ]
            await self._end_as_error(notes)
            return " ".join(notes)
        steps = self.tape.steps[refused.start : refused.end]
        del self.tape.steps[refused.start :]
        self._unsaved_calls = []  # their steps are gone
        which = (
            f"step {refused.start}"
            if len(steps) == 1
            else f"steps {refused.start} to {refused.end - 1}"
        )
        message = (
            f"The store refused {which} ({', '.join(step.kind for step in steps)}): "
            f"{str(refused.reason).rstrip('.')}. The tape holds everything before it."
        )
        first = steps[0]
        failure: Step
        if isinstance(first, Observation) and first.action_id is not None:
            # the action was performed: answer it, so that a resume does not perform it again
            failure = ErrorObservation(
                error=f"{message} The action was performed; what it returned is lost.",
                action_id=first.action_id,
            )
        else:  # a resume asks the same node again
            failure = StoreFailure(error=message)
            failure.metadata.agent, failure.metadata.node = (
                first.metadata.agent,
                first.metadata.node,
            )
        self.tape.append(failure)
        assert self.store is not None, "only a store refuses writes"
        notes = [message]
        try:
            await self.store.aappend_steps(self.tape.id, refused.start, [failure])
        except StoreError as error:
            notes.append(f"The failure step was not stored either: {error}")
        await self._end_as_error(notes)
        return " ".join(notes)

    async def _end_as_error(self, notes: list[str]) -> None:
        """Record the run's end as "error" if the store takes it; else say so in `notes`."""
        try:
            await self.finish("error")
        except StoreError as error:
            notes.append(f'The run\'s end was not stored either (it stays "running"): {error}')

    async def finish(self, reason: StopReason) -> None:
        if self.store is not None:
            await self.settle()
            if self._unsaved_calls:
                await self.store.asave_llm_calls(self._unsaved_calls)
                self._unsaved_calls = []
            assert self.lease is not None, "a stored run holds its lease from its start"
            await self.store.aend_run(self.lease, reason, metadata=self.tape.metadata)

    async def release(self) -> None:
        """Give up the tape's lease if `finish` did not (an error, a cancellation): the tape
        stays "running", so the next run on it knows this one was interrupted."""
        lease, self.lease = self.lease, None
        if lease is not None and not lease.released:
            with contextlib.suppress(StoreError):  # unreleased, it lapses after its ttl
                await lease.arelease()


async def _stored(write: Awaitable[None], start: int, end: int) -> None:
    """Wait for the write of steps `start` to `end` (exclusive); `_Refused` if the store
    refused it. Another process appending to the tape (`StoreConflict`) is raised as it is."""
    try:
        await write
    except StoreConflict:
        raise
    except StoreError as error:
        raise _Refused(start, end, error) from error


def run_sync(
    agent: Agent,
    tape: Tape[Any, Any] | str,
    env: Environment | None = None,
    *,
    max_steps: int = 100,
    max_errors: int = 3,
    store: TapeStore | None = None,
    force: bool = False,
) -> Finished:
    """Blocking `run`: drain it and return the `Finished` event.

    Example:
        >>> from tapeagents import Agent, LLMNode
        >>> from tapeagents.llms import ScriptedLLM
        >>> agent = Agent("helper", nodes=[LLMNode()], llms=ScriptedLLM(["Hello!"]))
        >>> result = run_sync(agent, "Hi")
        >>> result.reason, result.tape.kinds()
        ('awaiting_input', ['user', 'assistant'])
    """

    async def drain() -> Finished:
        events = run(
            agent, tape, env, max_steps=max_steps, max_errors=max_errors, store=store, force=force
        )
        async for event in events:
            if isinstance(event, Finished):
                return event
        raise AssertionError("run() ended without a Finished event")

    return run_blocking(drain(), sync_name="run_sync", use_instead="async for event in run(...)")
