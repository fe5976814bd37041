"""The run loop: the agent and the environment take turns appending to one tape.

`run` is an async generator of events; everything else (`run_sync`, the CLI, batch runs)
drains it. Each turn the environment first answers the pending actions (exactly one
observation each), then the agent's next node adds steps. The run ends with a `Finished` event
that says why:

- `"stopped"`: the agent wrote a `StopStep`;
- `"awaiting_input"`: the agent asked the user something (an `awaits_input` action);
- `"no_environment"`: actions are pending and no environment was given;
- `"max_steps"`: the run appended `max_steps` steps;
- `"error"`: the LLM backend failed, or the model's answers failed to parse `max_errors` times
  in a row. The error step on the tape says what happened.

Resuming is calling `run` again on the tape (or on a fork of any prefix of it, or an edited
copy): the tape is the whole state. With `store=`, each step (and the LLM call it came from) is
committed before anything else happens (runs in one event loop share commits, see
`tapeagents.store.group`; with `write_behind`, an agent's step commits during its next LLM
call), and the tape's status says how the run ended; a tape still marked "running" was
interrupted, and its unanswered actions get an "interrupted" observation when it is resumed
(they are not performed twice).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, assert_never

from tapeagents.agent import Agent
from tapeagents.environment import Environment, observe
from tapeagents.errors import UsageError
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
    UserMessage,
)
from tapeagents.sync import run_blocking
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

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
            the store always holds a prefix of the tape.

    Yields:
        Events; the last one is always `Finished`.

    Example:
        >>> async def main():
        ...     async for event in run(agent, "Hi"):
        ...         print(event)
    """
    if isinstance(tape, str):
        tape = Tape(steps=[UserMessage(content=tape)])
    recorder = _Recorder(tape, store, write_behind=write_behind)
    await recorder.start(agent.name)
    appended = 0
    errors_in_a_row = 0

    async def finish(reason: StopReason, error: str | None = None) -> Finished:
        await recorder.finish(reason)
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
            for action in actions:
                observation = await observe(env, action, tape)
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
        produced = 0
        try:
            async for item in agent.step(tape, path=path, node=node):
                if isinstance(item, Step):
                    yield await recorder.append(item, behind=True)
                    appended += 1
                    produced += 1
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
            yield await recorder.append(failure)
            await recorder.finish("error")
            raise
        if produced == 0:
            raise UsageError(f"Node {node.name!r} of agent {path!r} produced no steps.")


class _Recorder:
    """Appends steps to the tape and, with a store, commits each one before it is reported
    (or, written behind, before the environment acts and before the run ends)."""

    def __init__(
        self, tape: Tape[Any, Any], store: TapeStore | None, *, write_behind: bool = False
    ) -> None:
        self.tape = tape
        self.store = store
        self.write_behind = write_behind
        self._unsaved_calls: list[LLMCall] = []
        self._writing: asyncio.Future[None] | None = None

    async def start(self, agent_name: str) -> None:
        if self.store is None:
            return
        before = await self.store.asave(self.tape, status="running", agent=agent_name)
        if before == "running":  # the last run on this tape was interrupted
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
        """Append the step and store it; with `behind` (and `write_behind`), the write
        commits while the run goes on, and the next `settle` waits for it."""
        self.tape.append(step)
        index = len(self.tape) - 1
        if self.store is not None:
            await self.settle()  # one write at a time, in order
            calls, self._unsaved_calls = self._unsaved_calls, []
            write = self.store.aappend_steps(self.tape.id, index, [step], calls)
            if behind and self.write_behind:
                self._writing = asyncio.ensure_future(write)
                # a failure is raised by the next settle; never an unretrieved exception
                self._writing.add_done_callback(lambda done: done.cancelled() or done.exception())
            else:
                await write
        return StepAppended(step, index)

    async def settle(self) -> None:
        """Wait until the steps written behind are committed (raising the store's error)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def finish(self, reason: StopReason) -> None:
        if self.store is not None:
            await self.settle()
            if self._unsaved_calls:
                await self.store.asave_llm_calls(self._unsaved_calls)
                self._unsaved_calls = []
            await self.store.aset_status(self.tape.id, reason, metadata=self.tape.metadata)


def run_sync(
    agent: Agent,
    tape: Tape[Any, Any] | str,
    env: Environment | None = None,
    *,
    max_steps: int = 100,
    max_errors: int = 3,
    store: TapeStore | None = None,
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
        events = run(agent, tape, env, max_steps=max_steps, max_errors=max_errors, store=store)
        async for event in events:
            if isinstance(event, Finished):
                return event
        raise AssertionError("run() ended without a Finished event")

    return run_blocking(drain(), sync_name="run_sync", use_instead="async for event in run(...)")
