"""`OpenAICompatLLM` against a real HTTP server: an OpenAI-compatible stub under uvicorn."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Iterator

import pytest

from tapeagents import Agent, AssistantMessage, FinalAnswer, LLMNode, ToolEnvironment, run
from tapeagents.errors import ContextWindowExceeded, LLMError, UsageError
from tapeagents.llms import LLMOutput, OpenAICompatLLM, Prompt, RateLimit, TextDelta
from tapeagents.orchestrator import Finished
from tapeagents.store import TapeStore
from tests.batch.openai_stub import Stub, serve

PROMPT = Prompt(messages=[{"role": "user", "content": "Say hello"}])
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
        },
    }
]


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with serve() as server:
        yield server


def make(stub: Stub, model: str = "echo", **options: object) -> OpenAICompatLLM:
    return OpenAICompatLLM(model, base_url=stub.base_url, backoff=0.001, **options)  # type: ignore[arg-type]


async def collect(llm: OpenAICompatLLM, prompt: Prompt = PROMPT) -> tuple[list[str], LLMOutput]:
    items = [item async for item in llm.stream(prompt)]
    *deltas, final = items
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert isinstance(final, LLMOutput)
    return [d.text for d in deltas], final


async def test_chat_completion_with_usage_and_recorded_parameters(stub: Stub) -> None:
    async with make(stub, temperature=0.2, max_tokens=50, top_p=0.9) as llm:
        call = await llm.call(PROMPT)
    assert call.output.content == "echo: Say hello"
    assert (call.output.usage.prompt_tokens, call.output.usage.completion_tokens) == (2, 3)
    assert call.output.cost is None  # a self-hosted server has no price unless given one
    assert call.parameters == {"temperature": 0.2, "max_tokens": 50, "top_p": 0.9}
    sent = stub.requests[-1]["body"]
    assert sent["model"] == "echo" and sent["temperature"] == 0.2 and sent["top_p"] == 0.9
    assert "stream" not in sent and "tools" not in sent


async def test_tools_and_prices(stub: Stub) -> None:
    prompt = Prompt(messages=[{"role": "user", "content": "call add"}], tools=TOOLS)
    async with make(stub, prices=(1.0, 2.0)) as llm:
        output = await llm.generate(prompt)
    assert output.content is None
    assert [(c.id, c.name, c.arguments) for c in output.tool_calls] == [
        ("call_1", "add", '{"a": 2, "b": 3}')
    ]
    assert stub.requests[-1]["body"]["tools"] == TOOLS
    assert output.cost == pytest.approx((2 * 1.0 + 3 * 2.0) / 1e6)


async def test_streaming_text_logprobs_and_usage(stub: Stub) -> None:
    async with make(stub, logprobs=True) as llm:
        deltas, final = await collect(llm)
    assert deltas == ["echo:", " Say", " hello"]
    assert final.content == "echo: Say hello"
    assert final.logprobs is not None and [lp.token for lp in final.logprobs] == [
        "echo:",
        "Say",
        "hello",
    ]
    assert final.usage.completion_tokens == 3
    sent = stub.requests[-1]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_streamed_tool_call_is_assembled(stub: Stub) -> None:
    prompt = Prompt(messages=[{"role": "user", "content": "call add"}], tools=TOOLS)
    async with make(stub) as llm:
        deltas, final = await collect(llm, prompt)
    assert deltas == []
    assert final.content is None
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("call_1", "add", '{"a": 2, "b": 3}')
    ]


async def test_logprobs_in_a_plain_completion(stub: Stub) -> None:
    async with make(stub, logprobs=True, top_logprobs=1) as llm:
        output = await llm.generate(PROMPT)
    assert output.logprobs is not None and output.logprobs[0].logprob == -0.5


async def test_rate_limited_requests_are_retried_and_recorded(stub: Stub) -> None:
    async with make(stub, "flaky-2-a", max_retries=3) as llm:
        call = await llm.call(PROMPT)
        assert call.output.content == "echo: Say hello"
        assert call.retries == 2 and llm.gate.retries == 2
        calls = [item async for item in llm.stream_call(PROMPT)]  # no failure left
    assert calls[-1].retries == 0  # type: ignore[union-attr]


async def test_streaming_retries_before_the_first_text(stub: Stub) -> None:
    async with make(stub, "flaky-1-b") as llm:
        items = [item async for item in llm.stream_call(PROMPT)]
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "echo: Say hello"
    assert items[-1].retries == 1  # type: ignore[union-attr]


async def test_gives_up_after_max_retries(stub: Stub) -> None:
    async with make(stub, "down-c", max_retries=2) as llm:
        with pytest.raises(LLMError, match="after 2 retries: HTTP 503: overloaded"):
            await llm.generate(PROMPT)
    assert stub.counts["down-c"] == 3


async def test_broken_stream_after_text_is_not_retried(stub: Stub) -> None:
    seen = []
    async with make(stub, "drop") as llm:
        with pytest.raises(LLMError, match="Cannot reach|failed"):
            async for item in llm.stream(PROMPT):
                seen.append(item)
    assert seen == [TextDelta(text="echo:")]
    assert stub.counts["drop"] == 1


async def test_context_window_exceeded(stub: Stub) -> None:
    async with make(stub, "long") as llm:
        with pytest.raises(ContextWindowExceeded, match="maximum context length"):
            await llm.generate(PROMPT)
        with pytest.raises(ContextWindowExceeded):
            await collect(llm)
    assert stub.counts["long"] == 2  # never retried


async def test_api_key_is_sent_but_never_recorded(stub: Stub) -> None:
    secret = "sk-test"
    async with make(stub, "secure", api_key=secret) as llm:
        call = await llm.call(PROMPT)
    assert stub.requests[-1]["headers"]["authorization"] == f"Bearer {secret}"
    assert secret not in call.model_dump_json()
    assert secret not in repr(llm) and secret not in str(llm.parameters)
    assert secret not in repr(vars(llm))
    async with make(stub, "secure", api_key="sk-wrong") as wrong:
        with pytest.raises(LLMError, match="HTTP 401: invalid api key. Check the API key") as info:
            await wrong.generate(PROMPT)
    assert "sk-wrong" not in str(info.value)


async def test_unreachable_server_and_wrong_answers(stub: Stub) -> None:
    async with OpenAICompatLLM("echo", base_url="http://127.0.0.1:9/v1", max_retries=0) as dead:
        with pytest.raises(LLMError, match="Cannot reach 'echo' at http://127.0.0.1:9/v1"):
            await dead.generate(PROMPT)
    async with make(stub, "garbage") as garbage:
        with pytest.raises(LLMError, match="not a chat completion"):
            await garbage.generate(PROMPT)
    wrong_root = OpenAICompatLLM("echo", base_url=stub.base_url.removesuffix("/v1"))
    async with wrong_root:
        with pytest.raises(LLMError, match="HTTP 404.*ends with /v1"):
            await wrong_root.generate(PROMPT)


async def test_base_url_with_a_query_keeps_it_after_the_endpoint_path(stub: Stub) -> None:
    # gateways such as Azure OpenAI require `?api-version=...` on every request
    for base_url in (
        f"{stub.base_url}?api-version=2024-06-01",
        f"{stub.base_url}/?api-version=2024-06-01",
    ):
        async with OpenAICompatLLM("echo", base_url=base_url, max_retries=0) as llm:
            output = await llm.generate(PROMPT)
        assert output.content == "echo: Say hello"
        assert stub.requests[-1]["query"] == "api-version=2024-06-01"
    async with make(stub) as plain:
        await plain.generate(PROMPT)
    assert stub.requests[-1]["query"] == ""


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="api_key= or headers="):
        OpenAICompatLLM("m", base_url="http://x/v1", secret_token="s")
    with pytest.raises(UsageError, match="sets stream"):
        OpenAICompatLLM("m", base_url="http://x/v1", stream=True)
    with pytest.raises(UsageError, match="http"):
        OpenAICompatLLM("m", base_url="127.0.0.1:8000")
    OpenAICompatLLM("m", base_url="http://x/v1", max_completion_tokens=5)  # not a secret


async def test_rate_limit_spaces_requests_of_concurrent_sessions(stub: Stub) -> None:
    limit = RateLimit(requests_per_minute=1200)  # 20 a second, at most one second's worth at once
    async with make(stub, rate_limit=limit) as llm:
        start = time.monotonic()
        await asyncio.gather(*(llm.generate(PROMPT) for _ in range(30)))
        elapsed = time.monotonic() - start
    assert limit.requests == 30
    assert 0.45 < elapsed < 10  # 20 at once, then 10 more at 20 a second: at least 0.5 s


async def test_pickled_backend_opens_its_own_connections(stub: Stub) -> None:
    llm = make(stub, api_key="sk-test", rate_limit=RateLimit(requests_per_minute=600))
    await llm.generate(PROMPT)
    copy = pickle.loads(pickle.dumps(llm))
    assert copy.gate.rate_limit is not None and copy.gate.rate_limit.requests_per_minute == 600
    assert (await copy.generate(PROMPT)).content == "echo: Say hello"
    await llm.aclose()
    await copy.aclose()


async def test_agent_with_tools_on_a_real_server(stub: Stub) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    env = ToolEnvironment([add])
    async with make(stub) as llm:
        agent = Agent(
            "calc",
            nodes=[LLMNode(steps=[AssistantMessage, FinalAnswer], tools=env.tools)],
            llms=llm,
        )
        store = TapeStore("sqlite:///:memory:")
        finished = None
        async for event in run(agent, "call add", env, store=store):
            if isinstance(event, Finished):
                finished = event
    assert finished is not None
    assert finished.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]
    assert finished.tape.steps[2].content == "5"  # type: ignore[attr-defined]
    stored = store.llm_calls_of(store.get(finished.tape.id))
    assert [c.model for c in stored] == ["echo", "echo"]
