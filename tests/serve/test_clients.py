"""Clients through the server: our `OpenAICompatLLM` (an agent run included) and litellm."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

import json
from collections.abc import Iterator

import pytest

from tapeagents import Agent, FinalAnswer, LLMNode, ToolEnvironment, run
from tapeagents.errors import LLMError
from tapeagents.llms import (
    LLMOutput,
    OpenAICompatLLM,
    Prompt,
    ScriptedLLM,
    TestLLM,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from tapeagents.orchestrator import Finished
from tapeagents.serve import serving
from tests.serve.doubles import TOOLS

HELLO = Prompt(messages=[{"role": "user", "content": "Say hello"}])
KEY = "k-123"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(TestLLM(text="Hello there"), name="tiny", api_key=KEY) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def logprobs_url() -> Iterator[str]:
    tokens = ["Hello", " there"]
    output = LLMOutput(
        content="".join(tokens),
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        logprobs=[
            TokenLogprob(
                token=token,
                logprob=-0.25,
                top_logprobs=[
                    TopLogprob(token=token, logprob=-0.25),
                    TopLogprob(token="!", logprob=-2.0),
                ],
            )
            for token in tokens
        ],
    )
    with serving(ScriptedLLM(lambda prompt: output), name="scored") as base_url:
        yield base_url


# ----------------------------------------------------------------------------- OpenAICompatLLM


async def test_openai_compat_text_and_tools(url: str) -> None:
    async with OpenAICompatLLM("tiny", base_url=url, api_key=KEY) as llm:
        text = await llm.generate(HELLO)
        called = await llm.generate(HELLO.model_copy(update={"tools": TOOLS}))
    assert text.content == "Hello there" and text.tool_calls == []
    assert text.usage == Usage(prompt_tokens=2, completion_tokens=2)
    assert called.content is None
    assert [(c.name, json.loads(c.arguments)) for c in called.tool_calls] == [
        ("add", {"a": 0, "b": 0})
    ]


async def test_openai_compat_streams(url: str) -> None:
    async with OpenAICompatLLM("tiny", base_url=url, api_key=KEY) as llm:
        items = [item async for item in llm.stream(HELLO)]
        tool_items = [item async for item in llm.stream(HELLO.model_copy(update={"tools": TOOLS}))]
    *deltas, final = items
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["Hello there"]
    assert isinstance(final, LLMOutput) and final.content == "Hello there"
    assert final.usage.completion_tokens == 2  # the stream's usage chunk
    (tool_final,) = tool_items
    assert isinstance(tool_final, LLMOutput)
    assert [c.name for c in tool_final.tool_calls] == ["add"]


async def test_openai_compat_logprobs(logprobs_url: str) -> None:
    llm = OpenAICompatLLM("scored", base_url=logprobs_url, logprobs=True, top_logprobs=1)
    async with llm:
        output = await llm.generate(HELLO)
        *_, streamed = [item async for item in llm.stream(HELLO)]
    for result in (output, streamed):
        assert isinstance(result, LLMOutput) and result.logprobs is not None
        assert [(t.token, t.logprob) for t in result.logprobs] == [
            ("Hello", -0.25),
            (" there", -0.25),
        ]
        assert [[a.token for a in t.top_logprobs or []] for t in result.logprobs] == [
            ["Hello"],
            [" there"],
        ]


async def test_openai_compat_reports_a_wrong_key(url: str) -> None:
    async with OpenAICompatLLM("tiny", base_url=url, api_key="wrong", max_retries=0) as llm:
        with pytest.raises(LLMError, match="HTTP 401.*Check the API key"):
            await llm.generate(HELLO)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_an_agent_runs_against_the_server(url: str) -> None:
    """The whole loop: prompts, tool calls and their results go through the server."""
    env = ToolEnvironment([add])
    llm = OpenAICompatLLM("tiny", base_url=url, api_key=KEY)
    agent = Agent("calc", nodes=[LLMNode(steps=[FinalAnswer], tools=env.tools)], llms=llm)
    async with llm:
        events = [event async for event in run(agent, "What is 2 + 3?", env)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    # TestLLM calls `add` with zeros, then emits the final answer (offered as a tool too)
    assert finished.tape.kinds() == ["user", "tool_call", "tool_result", "final_answer"]
    assert finished.tape.steps[2].content == "0"  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- litellm


litellm = pytest.importorskip("litellm")


async def test_litellm_text_tools_and_logprobs(url: str, logprobs_url: str) -> None:
    messages = [{"role": "user", "content": "Say hello"}]
    reply = await litellm.acompletion(
        model="openai/tiny", api_base=url, api_key=KEY, messages=messages
    )
    assert reply.choices[0].message.content == "Hello there"
    assert reply.usage.total_tokens == 4
    called = await litellm.acompletion(
        model="openai/tiny", api_base=url, api_key=KEY, messages=messages, tools=TOOLS
    )
    assert called.choices[0].finish_reason == "tool_calls"
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 0, "b": 0}
    scored = await litellm.acompletion(
        model="openai/scored",
        api_base=logprobs_url,
        api_key="unused",
        messages=messages,
        logprobs=True,
        top_logprobs=2,
    )
    content = scored.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hello", " there"]
    assert [a.token for a in content[0].top_logprobs] == ["Hello", "!"]


async def test_litellm_streams(url: str) -> None:
    chunks = await litellm.acompletion(
        model="openai/tiny",
        api_base=url,
        api_key=KEY,
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts = [chunk async for chunk in chunks]
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == "Hello there"
    assert litellm.stream_chunk_builder(parts).usage.total_tokens == 4


async def test_our_litellm_backend(url: str) -> None:
    from tapeagents.llms import LiteLLM

    llm = LiteLLM("openai/tiny", api_base=url, api_key=KEY)
    output = await llm.generate(HELLO.model_copy(update={"tools": TOOLS}))
    assert [c.name for c in output.tool_calls] == ["add"]
    deltas = [item async for item in llm.stream(HELLO) if isinstance(item, TextDelta)]
    assert "".join(d.text for d in deltas) == "Hello there"
