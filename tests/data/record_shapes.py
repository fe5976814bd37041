"""Record the sessions of every agent shape that `tests/test_agent_shapes.py` replays:
`python -m tests.data.record_shapes`.

Each shape of `tests/agent_shapes.py` (ReAct, plan-act, subagents, routing) runs a few sessions,
and their tapes, with the LLM calls behind them, go into `tests/data/shapes.db`. One plan-act
session runs with an actor whose context window is too small for the whole conversation, so
its last prompt is cut by the default context policy. The suite replays every tape with the
current code (`assert_replays`), and records them all again to check that every request is
byte-identical to the committed one (the calls' ids hash the requests). Regenerate after an
intended change of prompts, and look at `git diff --stat` to see that only `shapes.db` changed.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tapeagents import Agent, ToolEnvironment
from tapeagents.store import TapeStore
from tests.agent_shapes import SHAPES, plan_act, run_session, session

__all__ = ["RECORDED_SHAPES", "SMALL_WINDOW", "SESSIONS", "record"]

RECORDED_SHAPES = Path(__file__).with_name("shapes.db")
"""The committed store of recorded sessions."""

SMALL_WINDOW = 1300
"""The actor's context window (tokens) in the session `plan_act-window-3`: with the answer's
reserve of 1,024 tokens and the tools, the actor's last prompt drops its oldest turns."""

Factory = Callable[[], tuple[Agent, ToolEnvironment]]

SESSIONS: dict[str, tuple[Factory, list[str]]] = {
    "react-0": (SHAPES["react"], session("react", 0)),
    "react-1": (SHAPES["react"], session("react", 1)),
    "plan_act-0": (SHAPES["plan_act"], session("plan_act", 0)),
    "plan_act-1": (SHAPES["plan_act"], session("plan_act", 1)),
    "plan_act-window-3": (
        functools.partial(plan_act, actor_window=SMALL_WINDOW),
        session("plan_act", 3),
    ),
    "subagents-0": (SHAPES["subagents"], session("subagents", 0)),
    "subagents-1": (SHAPES["subagents"], session("subagents", 1)),
    "routing-0": (SHAPES["routing"], session("routing", 0)),  # to the weather node
    "routing-1": (SHAPES["routing"], session("routing", 1)),  # to the math node
}
"""Each recorded tape's id, the factory of the agent that recorded it, and its user messages."""


def record(path: Path = RECORDED_SHAPES) -> list[str]:
    """Run the sessions into a fresh store at `path`; return the ids of their tapes."""
    path.unlink(missing_ok=True)
    store = TapeStore(f"sqlite:///{path}")
    try:
        for tape_id, (factory, messages) in SESSIONS.items():
            agent, env = factory()
            run_session(agent, env, messages, tape_id=tape_id, store=store)
    finally:
        store.close()
    with sqlite3.connect(path) as connection:  # keep the committed file small
        connection.execute("VACUUM")
    return list(SESSIONS)


if __name__ == "__main__":
    tape_ids = record()
    size = RECORDED_SHAPES.stat().st_size
    print(f"Recorded {len(tape_ids)} tapes into {RECORDED_SHAPES} ({size} bytes).")
