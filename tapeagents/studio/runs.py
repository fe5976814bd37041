"""Agent runs started from the studio, and the signal that tells watchers a tape changed.

A run is `tapeagents.run(agent, tape, env, store=store)` drained in a background task on the
server's event loop; every step is in the store before the run reports it. Pages watch a tape
through `Runs.signal(tape_id)`: an event that is set (and replaced) whenever a run in this
process appends to the tape, so live views update at once, while runs in other processes are
still seen by polling the store.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tapeagents.errors import LeaseHeld, UsageError
from tapeagents.orchestrator import Finished, StepAppended, run
from tapeagents.steps import UserMessage

if TYPE_CHECKING:
    from tapeagents.agent import Agent
    from tapeagents.environment import Environment
    from tapeagents.store import TapeStore
    from tapeagents.tape import Tape

__all__ = ["RunState", "Runs"]


@dataclass
class RunState:
    """One run started from the studio."""

    tape_id: str
    agent_name: str
    started_at: float = field(default_factory=time.time)
    done: bool = False
    reason: str | None = None
    """The run's stop reason once it has finished ("stopped", "error", ...)."""
    error: str | None = None
    """What went wrong, when the run failed or could not start."""
    steps: int = 0
    """Steps the run appended so far."""


class Runs:
    """The runs of one studio: start them, watch them, cancel them on shutdown.

    Args:
        store: Where the runs read and write their tapes.
        agents: Agent names (as shown in the studio) to `package.module:attribute` paths; each
            is loaded with `tapeagents.loading.load_agent` when a run starts, so every run
            gets a fresh agent and environment.
    """

    def __init__(self, store: TapeStore, agents: Mapping[str, str]) -> None:
        self.store = store
        self.agents = dict(agents)
        self._states: dict[str, RunState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._signals: dict[str, asyncio.Event] = {}

    def get(self, tape_id: str) -> RunState | None:
        """The latest run on the tape started by this studio, if any."""
        return self._states.get(tape_id)

    def active(self, tape_id: str) -> bool:
        state = self._states.get(tape_id)
        return state is not None and not state.done

    def signal(self, tape_id: str) -> asyncio.Event:
        """An event that is set the next time a run of this studio changes the tape."""
        event = self._signals.get(tape_id)
        if event is None or event.is_set():
            event = self._signals[tape_id] = asyncio.Event()
        return event

    def _notify(self, tape_id: str) -> None:
        event = self._signals.pop(tape_id, None)
        if event is not None:
            event.set()

    async def start(
        self,
        tape_id: str,
        agent_name: str,
        *,
        message: str | None = None,
        max_steps: int = 50,
        force: bool = False,
    ) -> RunState:
        """Load the agent named `agent_name` and run it on the stored tape in the background.

        `force` takes the tape over from a run elsewhere that holds its lease (one that was
        killed less than a lease ago; one still alive then fails).

        Raises:
            UsageError: The name is unknown, the agent cannot be loaded, or a run of this
                studio is already working on the tape.
            LeaseHeld: A run elsewhere (`tapeagents resume`, a batch, another studio) is
                running the tape, and `force` is False.
        """
        from tapeagents.loading import load_agent

        if agent_name not in self.agents:
            known = ", ".join(sorted(self.agents)) or "none"
            raise UsageError(
                f"No agent named {agent_name!r} in this studio (known: {known}). Start the "
                "studio with --agent NAME=package.module:attribute to add one."
            )
        if self.active(tape_id):
            raise UsageError(
                f"An agent is already running on tape {tape_id[:8]}; wait for it to finish."
            )
        holder = await asyncio.to_thread(self.store.lease_holder, tape_id)
        if holder is not None and not force:  # refused at once (the run itself checks too)
            raise LeaseHeld(
                f"Tape {tape_id[:8]} is being run elsewhere, by {holder.describe()}; its lease "
                f"expires in {holder.expires_in:.0f} s unless that run renews it. Wait for that "
                "run to finish (this page shows its steps as they come), or, if it was killed, "
                'tick "Take over" to resume it now.',
                tape_id=tape_id,
                run_id=holder.run_id,
                expires_in=holder.expires_in,
            )
        previous = self._states.get(tape_id)
        state = self._states[tape_id] = RunState(tape_id=tape_id, agent_name=agent_name)
        try:  # the tape counts as taken while the agent loads: no second run can start
            agent, env = await asyncio.to_thread(load_agent, self.agents[agent_name])
            tape = await asyncio.to_thread(self.store.get, tape_id)
        except BaseException:
            if previous is None:
                self._states.pop(tape_id, None)
            else:
                self._states[tape_id] = previous
            raise
        if message:
            tape.append(UserMessage(content=message))
        task = asyncio.create_task(self._drive(state, agent, env, tape, max_steps, force))
        self._tasks[tape_id] = task
        self._notify(tape_id)
        return state

    async def _drive(
        self,
        state: RunState,
        agent: Agent,
        env: Environment | None,
        tape: Tape[Any, Any],
        max_steps: int,
        force: bool = False,
    ) -> None:
        try:
            async with AsyncExitStack() as stack:
                if env is not None:
                    await stack.enter_async_context(env)
                events = run(agent, tape, env, max_steps=max_steps, store=self.store, force=force)
                async for event in events:
                    if isinstance(event, Finished):
                        state.reason, state.error = event.reason, event.error
                    elif isinstance(event, StepAppended):
                        state.steps += 1
                        self._notify(state.tape_id)
        except asyncio.CancelledError:
            state.reason, state.error = "cancelled", "The studio stopped while the agent ran."
            raise
        except Exception as error:  # the run recorded a NodeFailure; say what happened
            state.reason = "error"
            state.error = "".join(traceback.format_exception_only(error)).strip()
        finally:
            state.done = True
            self._tasks.pop(state.tape_id, None)
            self._notify(state.tape_id)

    async def aclose(self) -> None:
        """Cancel the runs still going (their tapes stay resumable) and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
