"""A tape far longer than the model's window: the node's context policy decides what is sent."""

from __future__ import annotations

from typing import Any

import pytest

from tapeagents import (
    Agent,
    AssistantMessage,
    LLMNode,
    Summarize,
    Summarizer,
    Tape,
    ToolCall,
    ToolEnvironment,
    ToolResult,
    UserMessage,
    run_sync,
)
from tapeagents.chat_rules import validate_chat
from tapeagents.context import ElideObservations, FailOnOverflow, KeepLast
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.llms.base import estimate_prompt_tokens
from tapeagents.replay import assert_replays
from tapeagents.steps import LLMFailure, StepMetadata
from tapeagents.store import TapeStore

WINDOW = 8_192


def read(page: int) -> str:
    """Read a page of the manual."""
    return str(page)


TOOLS = ToolEnvironment([read]).tools


def long_tape(tokens: int = 200_000) -> Tape[Any, Any]:
    """A session of tool calls whose results add up to about `tokens` tokens (estimated)."""
    tape = Tape(steps=[UserMessage(content="Summarize the manual.")])
    page = 0
    while (
        estimate_prompt_tokens(
            [{"role": "user", "content": s.model_dump_json()} for s in tape.steps]
        )
        < tokens
    ):
        meta = StepMetadata(agent="reader", node="main", llm_call_id=f"call{page}")
        call = ToolCall(name="read", arguments={"page": page}, call_id=f"c{page}", metadata=meta)
        tape.append(call)
        body = f"Page {page}. " + "The manual explains the machine in detail. " * 200
        tape.append(
            ToolResult(name="read", call_id=f"c{page}", content=body, action_id=call.metadata.id)
        )
        page += 1
    return tape


def sent(policy: Any) -> tuple[list[Prompt], Any]:
    prompts: list[Prompt] = []

    def answer(prompt: Prompt) -> LLMOutput:
        prompts.append(prompt)
        return LLMOutput(content="It is a long manual.")

    llm = ScriptedLLM(answer, context_window=WINDOW)
    node = LLMNode(steps=[AssistantMessage], tools=TOOLS, context=policy)
    agent = Agent("reader", nodes=[node], llms=llm)
    result = run_sync(agent, long_tape(), ToolEnvironment([read]), max_steps=1)
    return prompts, result


@pytest.mark.parametrize("policy", [ElideObservations(), KeepLast(2)], ids=["elide", "keep-last"])
def test_a_200k_token_tape_is_cut_to_an_8k_window(policy: Any) -> None:
    prompts, result = sent(policy)
    assert result.tape.kinds()[-1] == "assistant"
    (prompt,) = prompts
    llm = ScriptedLLM([], context_window=WINDOW)
    assert llm.count_tokens(prompt.messages, prompt.tools) <= WINDOW - 1024
    validate_chat(prompt.messages, prompt.tools)
    assert prompt.messages[0]["content"] == "Summarize the manual."  # the task is kept
    last_call, last_result = long_tape().steps[-2:]
    assert prompt.messages[-1]["content"] == last_result.content  # the newest result, whole
    assert prompt.messages[-2]["tool_calls"][0]["id"] == last_call.call_id  # type: ignore[attr-defined]
    texts = " ".join(str(m.get("content")) for m in prompt.messages)
    assert "omitted to fit the context window" in texts


def test_failing_on_overflow_records_the_sizes_and_sends_nothing() -> None:
    prompts, result = sent(FailOnOverflow())
    assert prompts == []
    assert result.reason == "error"
    failure = result.tape.steps[-1]
    assert isinstance(failure, LLMFailure)
    assert "8,192" in failure.error and "ElideObservations" in failure.error


def test_a_prompt_that_fits_is_sent_unchanged() -> None:
    tape = long_tape(2_000)
    llm = ScriptedLLM([], context_window=WINDOW)
    node = LLMNode(steps=[AssistantMessage], tools=TOOLS)
    agent = Agent("reader", nodes=[node], llms=llm)
    unlimited = Agent("reader", nodes=[node], llms=ScriptedLLM([]))
    assert node.make_prompt(agent, tape) == node.make_prompt(unlimited, tape)


def summarizing_agent(prompts: list[Prompt]) -> Agent:
    """Reads pages until its window is full, has the conversation summarized, then answers."""

    def answer(prompt: Prompt) -> LLMOutput:
        prompts.append(prompt)
        if prompt.messages[0]["content"].startswith("Summarize the conversation"):
            pages = sum(1 for m in prompt.messages if m["role"] == "tool")
            return LLMOutput(content=f"Read {pages} pages; the machine is explained in detail.")
        if any(
            "[summary of the conversation so far]" in str(m["content"]) for m in prompt.messages
        ):
            return LLMOutput(content="The manual explains the machine.")
        page = sum(1 for m in prompt.messages if m["role"] == "tool")
        return LLMOutput(tool_calls=[tool_call("read", f'{{"page": {page}}}', id=f"r{page}")])

    llm = ScriptedLLM(answer, context_window=WINDOW)
    return Agent(
        "reader",
        nodes=[
            LLMNode("main", steps=[AssistantMessage], tools=TOOLS, context=Summarize()),
            Summarizer(),
        ],
        llms=llm,
    )


def test_summarize_writes_a_summary_step_that_replaces_the_steps_before_it() -> None:
    prompts: list[Prompt] = []
    agent = summarizing_agent(prompts)

    def read_long(page: int) -> str:
        """Read a page of the manual."""
        return f"Page {page}. " + "The manual explains the machine in detail. " * 150

    store = TapeStore("sqlite:///:memory:")
    env = ToolEnvironment([TOOLS[0].model_copy(update={"function": read_long})])
    result = run_sync(agent, "Summarize the manual.", env, store=store)
    kinds = result.tape.kinds()
    assert result.reason == "awaiting_input", result.error
    at = kinds.index("summary")
    assert kinds[at - 1 : at + 2] == ["set_next_node", "summary", "set_next_node"]
    assert kinds[-1] == "assistant"
    summary, back = result.tape.steps[at : at + 2]
    assert summary.metadata.node == "summarize" and back.next_node == "main"  # type: ignore[attr-defined]
    last = prompts[-1]
    validate_chat(last.messages, last.tools)
    assert [m["role"] for m in last.messages] == ["user", "user"]  # the task, then the summary
    assert last.messages[0]["content"] == "Summarize the manual."
    assert summary.text in last.messages[1]["content"]  # type: ignore[attr-defined]
    # the summary is a step on the tape: the session replays with the recorded answers
    assert_replays(summarizing_agent([]), store)
