"""LLM records, scripted/replay/cached backends and model strings."""

from __future__ import annotations

import pytest

from tapeagents import ReplayMismatch, UsageError
from tapeagents.llms import CachedLLM, LLMOutput, Prompt, ReplayLLM, ScriptedLLM, resolve_llm


def prompt(text: str) -> Prompt:
    return Prompt(
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": text}]
    )


async def test_calls_are_recorded_with_a_request_hash_id() -> None:
    llm = ScriptedLLM(["a", "b"])
    first, second = await llm.call(prompt("hi")), await llm.call(prompt("hi"))
    assert first.id == second.id and len(first.id) == 32
    assert (await ScriptedLLM(["c"]).call(prompt("other"))).id != first.id
    assert first.output.content == "a" and second.output.content == "b"
    assert first.usage.completion_tokens == 1 and first.latency >= 0
    assert first.prompt == prompt("hi")


async def test_scripted_llm_says_when_it_runs_out() -> None:
    llm = ScriptedLLM(["only"])
    await llm.generate(prompt("x"))
    with pytest.raises(UsageError, match="ran out of answers after 1 calls"):
        await llm.generate(prompt("y"))


async def test_replay_answers_recorded_prompts_in_order_and_explains_misses() -> None:
    live = ScriptedLLM(["one", "two", "three"])
    calls = [await live.call(prompt(t)) for t in ("What is 2+2?", "What is 2+2?", "Bye")]
    replay = ReplayLLM(calls)
    assert (await replay.call(prompt("What is 2+2?"))).output.content == "one"
    again = await replay.call(prompt("What is 2+2?"))
    assert again.output.content == "two" and again.id == calls[1].id
    with pytest.raises(ReplayMismatch) as error:
        await replay.generate(prompt("What is 2+3?"))
    message = str(error.value)
    assert "No recorded LLM call matches" in message
    assert '- "content": "What is 2+2?",' in message and '+ "content": "What is 2+3?",' in message


async def test_cache_answers_repeated_requests_without_calling_the_model() -> None:
    inner = ScriptedLLM(["fresh", "never"])
    cached = CachedLLM(inner)
    assert (await cached.generate(prompt("q"))).content == "fresh"
    assert (await cached.generate(prompt("q"))).content == "fresh"
    assert (cached.hits, cached.misses, len(inner.prompts)) == (1, 1, 1)


def test_model_strings_resolve_lazily_and_typos_get_suggestions() -> None:
    assert isinstance(resolve_llm("scripted"), ScriptedLLM)
    assert type(resolve_llm("litellm:gpt-4o-mini")).__name__ == "LiteLLM"
    assert type(resolve_llm("local")).__name__ == "LocalLLM"
    with pytest.raises(UsageError, match="Did you mean 'litellm'"):
        resolve_llm("litelm:gpt-4o")
    with pytest.raises(UsageError, match="Name the litellm model"):
        resolve_llm("litellm")


def test_output_as_message_keeps_tool_calls() -> None:
    from tapeagents.llms import tool_call

    output = LLMOutput(content=None, tool_calls=[tool_call("f", '{"x": 1}', id="c")])
    assert output.as_message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
        ],
    }
