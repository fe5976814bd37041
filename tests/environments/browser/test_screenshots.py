"""Screenshots of a real Chromium reach a vision model as images, a text-only model not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from tapeagents.environments.browser import (
    BrowserEnvironment,
    MiniWoBServer,
    PageObservation,
    web_agent,
)

from tapeagents import Tape, run
from tapeagents.chat_rules import validate_chat
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(pages: MiniWoBServer) -> AsyncIterator[BrowserEnvironment]:
    async with BrowserEnvironment(
        allowed_origins=[pages.origin], action_timeout=2.0, screenshots=True
    ) as env:
        yield env


def image_urls(prompt: Prompt) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in prompt.messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


async def browse(
    env: BrowserEnvironment, pages: MiniWoBServer, *, vision: bool, keep_screenshots: int = 1
) -> tuple[Tape[Any, Any], ScriptedLLM]:
    """The web agent opens the second page, then answers; the model is scripted."""
    second = f"{pages.origin}/second.html"
    llm = ScriptedLLM(
        [
            LLMOutput(tool_calls=[tool_call("browser_goto", json.dumps({"url": second}))]),
            LLMOutput(tool_calls=[tool_call("final_answer", json.dumps({"answer": "Seen."}))]),
        ],
        vision=vision,
    )
    tape = await env.start_tape("Open the second page.", url=f"{pages.origin}/form.html")
    try:
        async for _ in run(web_agent(llm, keep_screenshots=keep_screenshots), tape, env):
            pass
    finally:
        await env.close_session(tape)
    assert tape.kinds() == ["browser_page", "browser_goto", "browser_page", "final_answer"]
    return tape, llm


async def test_a_vision_model_sees_the_latest_screenshot_as_an_image(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    tape, llm = await browse(env, pages, vision=True)
    form, second = (s for s in tape.steps if isinstance(s, PageObservation))
    assert form.screenshot and second.screenshot and form.screenshot != second.screenshot
    assert form.screenshot.startswith("data:image/png;base64,iVBOR")
    first_prompt, second_prompt = llm.prompts
    assert image_urls(first_prompt) == [form.screenshot]
    # the older screenshot is left out; the new one follows the tool message that answers
    # the goto, in a user message
    assert image_urls(second_prompt) == [second.screenshot]
    *_, call, result, picture = second_prompt.messages
    assert call["tool_calls"][0]["function"]["name"] == "browser_goto"
    assert result["role"] == "tool" and "URL: " in result["content"]
    assert "base64" not in result["content"]  # the page's text, not the picture
    assert picture["role"] == "user" and picture["content"][-1]["type"] == "image_url"
    for prompt in llm.prompts:
        validate_chat(prompt.messages, prompt.tools)

    _, keep_two = await browse(env, pages, vision=True, keep_screenshots=2)
    assert len(image_urls(keep_two.prompts[1])) == 2


async def test_a_text_only_model_gets_no_screenshot(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    tape, llm = await browse(env, pages, vision=False)
    assert all(s.screenshot for s in tape.steps if isinstance(s, PageObservation))
    for prompt in llm.prompts:
        sent = json.dumps(prompt.messages)
        assert "image_url" not in sent and "base64" not in sent
        assert "not shown: this model does not read images" in sent
        validate_chat(prompt.messages, prompt.tools)
