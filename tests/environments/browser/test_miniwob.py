"""MiniWoB++ served offline: episodes with the expert policies, seeds, in-place resets, scoring."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from tapeagents.environments.browser import (
    Click,
    MiniWoBEnvironment,
    MiniWoBServer,
    MiniWoBTask,
    PageObservation,
    expert_agent,
    miniwob_tasks,
)

from tapeagents import FinalAnswer
from tapeagents.environment import observe
from tapeagents.errors import UsageError

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCRIPTED = [
    "click-button",
    "click-checkboxes",
    "enter-text",
    "login-user",
    "choose-list",
    "click-collapsible",
    "click-link",
]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


async def test_the_task_pages_are_served_on_loopback() -> None:
    assert len(miniwob_tasks()) == 130
    with MiniWoBServer() as server:
        assert server.origin.startswith("http://127.0.0.1:")
        page = await asyncio.to_thread(fetch, server.task_url("click-button"))
        assert b"<title>Click Button Task</title>" in page


@pytest.mark.parametrize("task", SCRIPTED)
async def test_expert_solves_the_task(miniwob: MiniWoBEnvironment, task: str) -> None:
    tape = await miniwob.run_episode(expert_agent(), task, seed=7)
    assert (tape.metadata.task_id, tape.metadata.outcome) == (f"miniwob/{task}", "success")
    assert tape.metadata.reward == 1.0
    first, last = tape.steps[0], tape.steps[-1]
    assert isinstance(first, PageObservation) and isinstance(tape.context, MiniWoBTask)
    assert (tape.context.task, tape.context.seed) == (task, 7)
    assert first.goal == tape.context.goal and first.goal in first.snapshot
    assert isinstance(last, FinalAnswer)
    scored = tape.steps[-2]
    assert isinstance(scored, PageObservation) and (scored.done, scored.reward) == (True, 1.0)


async def test_a_seed_gives_the_same_episode_on_a_reused_or_a_new_page(
    miniwob: MiniWoBEnvironment,
) -> None:
    reused = [await miniwob.start_episode("click-button", seed=s) for s in (3, 4, 3)]
    for tape in reused:
        await miniwob.end_episode(tape)
    assert reused[0].steps[0].llm_dict() == reused[2].steps[0].llm_dict()
    assert reused[0].context != reused[1].context
    # two episodes at once: the second gets a freshly loaded page
    both = [await miniwob.start_episode("click-button", seed=3) for _ in range(2)]
    assert both[0].steps[0].llm_dict() == both[1].steps[0].llm_dict()
    assert both[1].steps[0].llm_dict() == reused[0].steps[0].llm_dict()
    for tape in both:
        await miniwob.end_episode(tape)


async def test_episodes_reset_in_place_without_new_pages(miniwob: MiniWoBEnvironment) -> None:
    await miniwob.run_episode(expert_agent(), "click-test", seed=0)  # warm: the page is loaded
    assert miniwob.browser is not None
    contexts = len(miniwob.browser.contexts)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for seed in range(1, 6):
        tape = await miniwob.run_episode(expert_agent(), "click-test", seed=seed)
        assert tape.metadata.reward == 1.0
    assert len(miniwob.browser.contexts) == contexts
    assert (loop.time() - started) / 5 < 2.0  # about 0.07 s each; see benchmarks/miniwob.py


async def test_concurrent_episodes_get_their_own_pages(miniwob: MiniWoBEnvironment) -> None:
    tapes = await asyncio.gather(
        *(miniwob.run_episode(expert_agent(), "enter-text", seed=s) for s in range(3))
    )
    assert [t.metadata.reward for t in tapes] == [1.0, 1.0, 1.0]
    goals = {t.context.goal for t in tapes}
    assert len(goals) == 3


async def test_no_action_after_the_episode_is_over(miniwob: MiniWoBEnvironment) -> None:
    tape = await miniwob.run_episode(expert_agent(), "click-test", seed=1)
    click = Click(ref="e3")
    tape.append(click)
    observation = await observe(miniwob, click, tape)
    assert isinstance(observation, PageObservation)
    assert observation.done and observation.error is not None
    assert "The episode is over" in observation.error
    assert tape.metadata.reward == 1.0


async def test_an_episode_past_its_time_limit_is_scored_minus_one(
    miniwob: MiniWoBEnvironment,
) -> None:
    miniwob.time_limit = 0.2
    try:
        tape = await miniwob.start_episode("click-test", seed=0)
    finally:
        miniwob.time_limit = None
    await asyncio.sleep(0.4)
    click = Click(ref="e3")
    tape.append(click)
    observation = await observe(miniwob, click, tape)
    assert isinstance(observation, PageObservation)
    assert observation.error == "The episode ended before this action (timed out)."
    assert (observation.done, observation.reward) == (True, -1.0)
    assert (tape.metadata.outcome, tape.metadata.reward) == ("failure", -1.0)


async def test_an_unfinished_episode_is_scored_as_a_failure(miniwob: MiniWoBEnvironment) -> None:
    # click-collapsible takes two turns: open the section, then submit
    tape = await miniwob.run_episode(expert_agent(), "click-collapsible", seed=2, max_steps=1)
    assert (tape.metadata.outcome, tape.metadata.reward) == ("failure", 0.0)
    assert tape.metadata.extra["reason"] == "the agent stopped before the task was over"


async def test_unknown_tasks_are_named_with_suggestions(miniwob: MiniWoBEnvironment) -> None:
    with pytest.raises(UsageError, match="Did you mean click-button"):
        await miniwob.start_episode("click-buton")


async def test_idle_pages_beyond_the_limit_are_closed(miniwob: MiniWoBEnvironment) -> None:
    miniwob.max_idle = 1
    try:
        for task in ("click-test", "focus-text", "click-button"):
            await miniwob.run_episode(expert_agent(), task, seed=0)
        assert miniwob.browser is not None and len(miniwob.browser.contexts) == 1
        tape = await miniwob.run_episode(expert_agent(), "click-test", seed=1)
        assert tape.metadata.reward == 1.0  # its page was closed: a new one is loaded
    finally:
        miniwob.max_idle = 16
