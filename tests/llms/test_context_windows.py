"""Every backend knows its context window and counts tokens: litellm's model map and tokenizer,
and a window given by hand for servers that cannot say theirs."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

import pytest

from tapeagents.context import ElideObservations, fit_context, units_from_messages
from tapeagents.llms import CachedLLM, OpenAICompatLLM, Prompt
from tapeagents.llms.base import IMAGE_TOKENS, IMAGE_TOKENS_LOW_DETAIL
from tapeagents.llms.litellm import LiteLLM

litellm = pytest.importorskip("litellm")

QUESTION = {"role": "user", "content": "What is the capital of France? Answer in one word."}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/large-photo.png"}}


def test_litellm_reads_the_window_of_a_known_model_from_its_bundled_map() -> None:
    llm = LiteLLM("gpt-4o-mini")
    assert llm.context_window == litellm.get_model_info("gpt-4o-mini")["max_input_tokens"]
    assert llm.context_window == 128_000


def test_litellm_window_is_unknown_for_an_unmapped_model() -> None:
    assert LiteLLM("my-own-finetune-that-litellm-never-heard-of").context_window is None


def test_litellm_window_given_by_hand_wins_and_is_not_recorded() -> None:
    llm = LiteLLM("hosted_vllm/my-model", context_window=32_768, temperature=0.0)
    assert llm.context_window == 32_768
    assert llm.parameters == {"temperature": 0.0}
    assert "context_window" not in llm._kwargs(Prompt(messages=[QUESTION]))


def test_litellm_counts_with_the_models_tokenizer() -> None:
    llm = LiteLLM("gpt-4o-mini")
    expected = litellm.token_counter(model="gpt-4o-mini", messages=[QUESTION])
    assert llm.count_tokens([QUESTION]) == expected
    # one message's count leaves out the request's own overhead
    empty = litellm.token_counter(model="gpt-4o-mini", messages=[])
    assert llm.count_message_tokens(QUESTION) == expected - empty
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert llm.count_tokens([QUESTION], tools) > llm.count_tokens([QUESTION])


def test_litellm_counts_images_at_the_documented_price_without_fetching_them() -> None:
    llm = LiteLLM("gpt-4o-mini")
    text = {"type": "text", "text": QUESTION["content"]}
    low = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}
    with_images = {"role": "user", "content": [text, IMAGE, low]}
    # the network is off in tests: a fetch of the image would fail the test
    assert llm.count_tokens([with_images]) == (
        llm.count_tokens([QUESTION]) + IMAGE_TOKENS + IMAGE_TOKENS_LOW_DETAIL
    )
    assert llm.count_message_tokens(with_images) == (
        llm.count_message_tokens(QUESTION) + IMAGE_TOKENS + IMAGE_TOKENS_LOW_DETAIL
    )
    assert with_images["content"] == [text, IMAGE, low]  # not changed


def test_openai_compatible_server_window_is_given_by_hand() -> None:
    llm = OpenAICompatLLM("qwen", base_url="http://127.0.0.1:8000/v1", context_window=8192)
    assert llm.context_window == 8192
    assert "context_window" not in llm.parameters
    plain = OpenAICompatLLM("qwen", base_url="http://127.0.0.1:8000/v1")
    assert plain.context_window is None
    assert llm.request_id(Prompt(messages=[QUESTION])) == plain.request_id(
        Prompt(messages=[QUESTION])
    )
    assert "context_window" not in llm._body(Prompt(messages=[QUESTION]), stream=False)
    # no tokenizer: the conservative estimate
    assert llm.count_tokens([QUESTION]) >= len(QUESTION["content"]) // 3
    assert CachedLLM(llm).context_window == 8192


def test_a_policy_fits_a_long_conversation_to_a_litellm_window() -> None:
    llm = LiteLLM("gpt-4o-mini", context_window=8192)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Research."}, QUESTION]
    for i in range(60):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "read", "arguments": "{}"}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"page {i} " * 300})
    head, units = units_from_messages(messages)
    window = llm.context_window
    assert window == 8192
    out = fit_context(
        ElideObservations(),
        head,
        units,
        window=window,
        reserve=1024 + llm.count_tokens([]),  # the answer, and the request's own tokens
        count=llm.count_message_tokens,
    )
    assert llm.count_tokens(out) <= 8192 - 1024
    assert out[-2:] == messages[-2:]
