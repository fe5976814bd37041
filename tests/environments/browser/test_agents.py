"""The LLM web agent (with a scripted model), the experts, and replay of stored browser tapes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from tapeagents.environments.browser import (
    Click,
    MiniWoBEnvironment,
    PageObservation,
    WebNode,
    expert_agent,
    web_agent,
)

from tapeagents import FinalAnswer, Tape
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.replay import replay
from tapeagents.store import TapeFilter, TapeStore

pytestmark = pytest.mark.asyncio(loop_scope="module")


def latest_page(prompt: Prompt) -> str:
    """The text of the last page the prompt shows."""
    pages = [m["content"] for m in prompt.messages if "Page:" in str(m.get("content"))]
    return pages[-1]


def click_the_button(prompt: Prompt) -> LLMOutput:
    """A model that reads the task and the page from the prompt and clicks the right button."""
    system = prompt.messages[0]["content"]
    (wanted,) = re.findall(r'Click on the "(.*)" button', system)
    (ref,) = re.findall(rf'button "{re.escape(wanted)}" \[ref=(e\d+)\]', latest_page(prompt))[:1]
    return LLMOutput(
        content="The button is " + ref,
        tool_calls=[tool_call("browser_click", json.dumps({"ref": ref}))],
    )


async def test_web_agent_clicks_the_button_and_replays(miniwob: MiniWoBEnvironment) -> None:
    llm = ScriptedLLM(click_the_button)
    agent = web_agent(llm)
    with TapeStore("sqlite:///:memory:") as store:
        tape = await miniwob.run_episode(agent, "click-button", seed=5, store=store)
        assert (tape.metadata.outcome, tape.metadata.reward) == ("success", 1.0)
        assert tape.kinds() == [
            "browser_page",
            "reasoning",
            "browser_click",
            "browser_page",
            "final_answer",
        ]
        assert len(llm.prompts) == 1  # the environment's score ends the episode, not the model
        tools = {t["function"]["name"] for t in llm.prompts[0].tools or []}
        assert {"browser_click", "browser_fill", "browser_select", "final_answer"} <= tools

        stored = store.get(tape.id)
        assert stored.metadata.reward == 1.0 and stored.metadata.task_id == "miniwob/click-button"
        found = store.list(TapeFilter(task_id="miniwob/click-button", outcome="success"))
        assert found[0].id == tape.id

        # replay from the store: the recorded LLM calls, the recorded pages
        report = await replay(web_agent(ScriptedLLM([])), stored, store=store)
        assert report.passed, report.explain()
        # ... and against a live browser: the same seed shows the same pages again
        live = await replay(web_agent(ScriptedLLM([])), stored, store=store, env=miniwob)
        assert live.passed, live.explain()


async def test_expert_tapes_replay_and_a_changed_agent_is_caught(
    miniwob: MiniWoBEnvironment,
) -> None:
    with TapeStore("sqlite:///:memory:") as store:
        tape = await miniwob.run_episode(expert_agent(), "login-user", seed=3, store=store)
        stored = store.get(tape.id)
    assert stored.metadata.reward == 1.0
    assert (await replay(expert_agent(), stored, llm_calls=[], env=miniwob)).passed

    def click_first_button(goal: str, page: Any) -> list[Any]:
        return [Click(ref="e5")]

    changed = expert_agent(policies={"login-user": click_first_button})
    report = await replay(changed, stored, llm_calls=[])
    assert not report.passed and report.first_difference == 1
    assert report.actual == Click(ref="e5", metadata=report.actual.metadata)


async def test_web_agent_in_json_mode(miniwob: MiniWoBEnvironment) -> None:
    def answer(prompt: Prompt) -> str:
        (ref,) = re.findall(r"textbox \[ref=(e\d+)\]", latest_page(prompt))
        return json.dumps([{"kind": "browser_click", "ref": ref}])

    tape = await miniwob.run_episode(web_agent(ScriptedLLM(answer), mode="json"), "focus-text")
    assert tape.metadata.outcome == "success"


async def test_model_errors_and_bad_refs_stay_on_the_tape(miniwob: MiniWoBEnvironment) -> None:
    answers: list[str | LLMOutput] = [
        "I am not sure.",  # not a tool call: a parsing failure, and the model is asked again
        LLMOutput(tool_calls=[tool_call("browser_click", '{"ref": "e99"}')]),
        LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "giving up"}')]),
    ]
    tape = await miniwob.run_episode(web_agent(ScriptedLLM(answers)), "click-button", seed=1)
    assert tape.kinds() == [
        "browser_page",
        "parsing_failure",
        "browser_click",
        "browser_page",
        "final_answer",
    ]
    page = tape.steps[3]
    assert isinstance(page, PageObservation) and page.error is not None
    assert page.error.startswith("No element e99")
    assert (tape.metadata.outcome, tape.metadata.reward) == ("failure", 0.0)


async def test_the_prompt_shows_only_the_latest_page_snapshot() -> None:
    tape: Tape[Any, Any] = Tape(
        context={"goal": "Click OK."},
        steps=[
            PageObservation(url="http://a/", snapshot='- button "Old" [ref=e1]', goal="Click OK."),
            Click(ref="e1"),
            PageObservation(url="http://a/", snapshot='- button "OK" [ref=e2]'),
        ],
    )
    tape.steps[2] = tape.steps[2].model_copy(update={"action_id": tape.steps[1].metadata.id})
    agent = web_agent(ScriptedLLM([]))
    node = agent.nodes[0]
    assert isinstance(node, WebNode)
    prompt = node.make_prompt(agent, tape)
    text = json.dumps(prompt.messages)
    assert "Task: Click OK." in prompt.messages[0]["content"]
    assert 'button \\"OK\\"' in text and 'button \\"Old\\"' not in text
    assert "an older page snapshot, left out" in text
    assert isinstance(tape.steps[0], PageObservation) and "Old" in tape.steps[0].snapshot


async def test_expert_gives_up_after_a_failed_action(miniwob: MiniWoBEnvironment) -> None:
    def missing(goal: str, page: Any) -> list[Any]:
        return [Click(ref="css=#nothing-here")]

    agent = expert_agent(policies={"click-test": missing})
    tape = await miniwob.run_episode(agent, "click-test", seed=0)
    last = tape.last
    assert isinstance(last, FinalAnswer) and last.answer.startswith("The expert policy gave up")
    assert len(tape) == 4 and tape.metadata.outcome == "failure"
