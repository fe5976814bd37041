"""Run whole dialogues: the assistant on its tape, the simulated user on its own, taking turns.

Each turn the user agent writes a message on its tape; the driver appends it to the
assistant's tape as a `UserMessage` and runs the assistant (with the environment) until it
asks the user something or stops; what the assistant asked is appended to the user's tape as
a `UserMessage`, and so on. The assistant's tape is then scored against the goal and the score
is written into its metadata, so the tape is the dialogue's complete record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tapeagents.agent import Agent
from tapeagents.orchestrator import Finished, run
from tapeagents.steps import AssistantMessage, UserMessage
from tapeagents.tape import Tape, TapeMetadata

from .catalog import get_company
from .environment import FormFillerEnvironment, form_state
from .scoring import DialogueScore, apply_score, score_dialogue
from .simulator import (
    UserGoal,
    scripted_user,
    user_instructions,
)
from .steps import AskUser, ConfirmForm

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = ["GREETING", "Dialogue", "evaluate", "run_dialogue", "user_view"]

GREETING = "Hello! How can I help you today?"
"""What the user's tape starts with: the assistant's greeting."""


@dataclass
class Dialogue:
    """One finished dialogue: the assistant's tape (scored), the user's tape and how it ended."""

    tape: Tape[Any, Any]
    user_tape: Tape[Any, Any]
    score: DialogueScore
    reason: str
    """Why it ended: "stopped" (the assistant finished), "max_turns", "error", "max_steps",
    "user_error" (the user agent produced no message), ..."""


def user_view(tape: Tape[Any, Any]) -> UserMessage:
    """What the user sees of the assistant's pending questions, as a message for the user's tape.

    `confirm_form` is shown as the form's current values. `metadata.extra` carries the same in
    structured form for the scripted user: the action, the field asked about, the values, and
    whether the form is already submitted.
    """
    state = form_state(tape)
    texts: list[str] = []
    extra: dict[str, Any] = {"submitted": state.submitted is not None}
    for action in tape.pending_actions():
        if not action.awaits_input:
            continue
        extra["action"] = action.kind
        if isinstance(action, AskUser):
            texts.append(action.question)
            extra["field"] = action.field or state.asked
        elif isinstance(action, ConfirmForm):
            lines = [f"Please check the {state.form.name if state.form else ''} form:"]
            if state.form is not None:
                for spec in state.form.fields:
                    value = state.values.get(spec.name)
                    lines.append(f"- {spec.label}: {'(empty)' if value is None else value}")
            lines.append("Shall I submit it?")
            texts.append("\n".join(lines))
            extra["values"] = dict(state.values)
        elif isinstance(action, AssistantMessage):
            texts.append(action.content)
        else:
            texts.append(action.llm_text())
    message = UserMessage(content="\n".join(texts))
    message.metadata.extra.update(extra)
    return message


async def _finish(events: Any) -> Finished:
    async for event in events:
        if isinstance(event, Finished):
            return event
    raise AssertionError("run() ended without a Finished event")


async def run_dialogue(
    agent: Agent,
    goal: UserGoal,
    *,
    user: Agent | None = None,
    env: FormFillerEnvironment | None = None,
    store: TapeStore | None = None,
    max_turns: int = 30,
    max_steps_per_turn: int = 12,
    tags: Sequence[str] = (),
) -> Dialogue:
    """Let `agent` help the simulated user reach `goal`; return the scored dialogue.

    Args:
        agent: The assistant.
        goal: The user's hidden goal.
        user: The simulated user (default: `scripted_user()`).
        env: The forms environment (default: the goal's company's forms).
        store: Persist the assistant's tape (as it grows) and its score.
        max_turns: Most user messages before the dialogue is cut off.
        max_steps_per_turn: Most assistant steps between two user messages.
        tags: Tags for the assistant's tape (it always has "form_filler").
    """
    user = user or scripted_user()
    env = env or FormFillerEnvironment.for_company(goal.company)
    company = get_company(goal.company)
    tape: Tape[Any, Any] = Tape(
        context={"company": company.id, "company_name": company.name},
        metadata=TapeMetadata(task_id=goal.id, tags=["form_filler", *tags]),
        author=agent.name,
    )
    user_tape: Tape[Any, Any] = Tape(
        context={"goal": goal.model_dump(), "instructions": user_instructions(goal)},
        steps=[UserMessage(content=GREETING)],
        author=user.name,
    )
    reason = "max_turns"
    for _ in range(max_turns):
        said = await _finish(run(user, user_tape, max_steps=2))
        reply = user_tape.last
        if said.reason != "awaiting_input" or not isinstance(reply, AssistantMessage):
            reason = "user_error"
            break
        message = UserMessage(content=reply.content)
        message.metadata.extra.update(reply.metadata.extra)
        tape.append(message)
        done = await _finish(run(agent, tape, env, max_steps=max_steps_per_turn, store=store))
        if done.reason != "awaiting_input":
            reason = done.reason
            break
        user_tape.append(user_view(tape))
    score = score_dialogue(tape, goal)
    apply_score(tape, score)
    user_tape.metadata.task_id = goal.id
    user_tape.metadata.extra["dialogue"] = tape.id
    if store is not None:
        if store.writes_inline:
            store.save(tape, status=reason)
        else:
            await asyncio.to_thread(store.save, tape, status=reason)
    return Dialogue(tape=tape, user_tape=user_tape, score=score, reason=reason)


async def evaluate(
    agent: Agent | Callable[[UserGoal], Agent],
    goals: Sequence[UserGoal],
    *,
    user: Callable[[], Agent] = scripted_user,
    store: TapeStore | None = None,
    concurrency: int = 1,
    on_dialogue: Callable[[Dialogue], None] | None = None,
    **options: Any,
) -> list[Dialogue]:
    """Run one dialogue per goal (`concurrency` at a time) and return them in goal order.

    Args:
        agent: The assistant, or a function that builds one for a goal.
        goals: The user goals.
        user: Builds the simulated user for each dialogue.
        store: Persist every assistant tape.
        concurrency: Dialogues run at once (local models take turns anyway).
        on_dialogue: Called with each dialogue as it finishes (progress reports).
        **options: Passed to `run_dialogue` (`max_turns`, `max_steps_per_turn`, `tags`).
    """
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(goal: UserGoal) -> Dialogue:
        async with gate:
            assistant = agent if isinstance(agent, Agent) else agent(goal)
            dialogue = await run_dialogue(assistant, goal, user=user(), store=store, **options)
        if on_dialogue is not None:
            on_dialogue(dialogue)
        return dialogue

    return list(await asyncio.gather(*(one(goal) for goal in goals)))
