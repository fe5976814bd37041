"""Prompts are valid and deterministic on any tape: a property test over random tapes of every
step family, written by every agent shape (ReAct, plan-act, subagents, routing), by hand and
by other agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapeagents import (
    Agent,
    AssistantMessage,
    Call,
    FinalAnswer,
    LLMNode,
    Node,
    Reasoning,
    Respond,
    SetNextNode,
    Summary,
    Tape,
    Thought,
    ToolCall,
    ToolEnvironment,
    ToolResult,
    UserMessage,
    run_sync,
)
from tapeagents.chat_rules import validate_chat
from tapeagents.export.prefixes import prefix_prompts
from tapeagents.llms import ScriptedLLM
from tapeagents.steps import (
    ErrorObservation,
    LLMFailure,
    ParsingFailure,
    Step,
    StepMetadata,
    load_step,
)


def lookup(city: str) -> str:
    """Look up the weather in a city."""
    return city


def search(query: str) -> str:
    """Search the web."""
    return query


class Plan(Thought):
    """A plan."""

    kind: Literal["conversation_test_plan"] = "conversation_test_plan"
    items: list[str]


TOOLS = ToolEnvironment([lookup, search]).tools


def shapes() -> Agent:
    """One root agent holding every shape: ReAct, plan-act, routing, JSON mode, a subagent."""
    helper = Agent(
        "helper",
        nodes=[
            LLMNode("work", tools=TOOLS[:1], steps=[Respond]),
            LLMNode("json", mode="json", steps=[Respond, Reasoning], tools=TOOLS[1:]),
        ],
    )
    return Agent(
        "root",
        nodes=[
            LLMNode("react", tools=TOOLS, steps=[AssistantMessage, FinalAnswer]),
            LLMNode("plan", steps=[Plan, SetNextNode, Reasoning]),
            LLMNode("call", steps=[AssistantMessage, Call]),
            LLMNode("json", mode="json", steps=[AssistantMessage, Plan], tools=TOOLS),
        ],
        subagents=[helper],
        llms=ScriptedLLM([]),
    )


AGENT = shapes()
NODES = [(AGENT, node) for node in AGENT.nodes] + [
    (AGENT.subagents["helper"], node) for node in AGENT.subagents["helper"].nodes
]
PATHS = ["root", "root/helper", "other", ""]
NODE_NAMES = ["react", "plan", "call", "json", "work", "route"]
IDS = ["c1", "c2", "call_0", ""]
TEXT = st.text(alphabet='ab c\n"{}é', max_size=12)


@st.composite
def agent_step(draw: Any) -> Step:
    """One step an agent (or a hand) could write: thoughts, actions, control, stops."""
    kind = draw(
        st.sampled_from(
            [
                "reasoning",
                "assistant",
                "plan",
                "tool",
                "final",
                "next",
                "call",
                "respond",
                "summary",
            ]
        )
    )
    if kind == "reasoning":
        return Reasoning(text=draw(TEXT))
    if kind == "assistant":
        return AssistantMessage(content=draw(TEXT))
    if kind == "plan":
        return Plan(items=draw(st.lists(TEXT, max_size=2)))
    if kind == "tool":
        name = draw(st.sampled_from(["lookup", "search", "undeclared"]))
        call_id = draw(st.sampled_from(IDS[:3]))
        return ToolCall(name=name, arguments={"city": draw(TEXT)}, call_id=call_id)
    if kind == "final":
        return FinalAnswer(answer=draw(TEXT))
    if kind == "summary":
        return Summary(text=draw(TEXT))
    if kind == "next":
        return SetNextNode(next_node=draw(st.sampled_from(NODE_NAMES)))
    if kind == "call":
        return Call(agent_name=draw(st.sampled_from(["helper", "nobody"])), content=draw(TEXT))
    return Respond(content=draw(TEXT))


@st.composite
def tapes(draw: Any) -> Tape[Any, Any]:
    """A random tape: outputs of agents with and without LLM calls, observations that answer
    earlier actions (or none), users, errors, and steps of kinds this program does not know."""
    steps: list[Step] = [UserMessage(content=draw(TEXT))]
    actions: list[str] = []
    for turn in range(draw(st.integers(0, 14))):
        move = draw(st.sampled_from(["output", "output", "output", "observe", "user", "error"]))
        if move == "output":
            path = draw(st.sampled_from(PATHS))
            node = draw(st.sampled_from(NODE_NAMES)) if path else ""
            from_model = draw(st.booleans())
            for step in draw(st.lists(agent_step(), min_size=1, max_size=3)):
                extra = {}
                if from_model and draw(st.booleans()):
                    extra["tool_call_id"] = draw(st.sampled_from(IDS))
                step.metadata.agent, step.metadata.node = path, node
                step.metadata.llm_call_id = f"llm{turn}" if from_model else None
                step.metadata.extra.update(extra)
                steps.append(step)
                if isinstance(step, ToolCall | AssistantMessage):
                    actions.append(step.metadata.id)
        elif move == "observe":
            answers = draw(st.sampled_from([None, *actions])) if actions else None
            content = draw(TEXT)
            steps.append(
                draw(
                    st.sampled_from(
                        [
                            ToolResult(
                                name="lookup", call_id="x", content=content, action_id=answers
                            ),
                            ErrorObservation(error=content, action_id=answers),
                        ]
                    )
                )
            )
        elif move == "user":
            steps.append(UserMessage(content=draw(TEXT)))
        else:
            steps.append(
                draw(
                    st.sampled_from(
                        [
                            LLMFailure(error="down"),
                            ParsingFailure(error="bad", raw_output=draw(TEXT)),
                            load_step({"kind": "from_the_future", "x": 1}),
                        ]
                    )
                )
            )
    return Tape(steps=steps)


def requests(tape: Tape[Any, Any]) -> list[str]:
    """Every node's request for the tape, as the exact JSON a backend would send."""
    return [
        json.dumps(node.make_prompt(agent, tape).model_dump(exclude_none=True), sort_keys=True)
        for agent, node in NODES
    ]


@settings(
    max_examples=int(os.environ.get("TAPEAGENTS_PROPERTY_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tapes())
def test_every_tape_renders_valid_deterministic_requests(tape: Tape[Any, Any]) -> None:
    rendered = requests(tape)
    for text in rendered:
        prompt = json.loads(text)
        validate_chat(prompt["messages"], prompt.get("tools"))
    # the same tape, loaded again (new objects, as in another run), renders byte-identical requests
    assert requests(Tape.model_validate_json(tape.model_dump_json())) == rendered
    # and the exporter's one-pass rendering of every prefix equals rendering each prefix
    ends = list(range(len(tape.steps) + 1))
    for agent, node in NODES[:3]:
        fast = prefix_prompts(node, agent, tape, ends)
        for end, prompt in zip(ends, fast, strict=True):
            alone = node.make_prompt(agent, tape.model_copy(update={"steps": tape.steps[:end]}))
            assert prompt.messages == alone.messages, end


def test_requests_are_the_same_in_another_process() -> None:
    """Ids derived from tape positions, never from random ids or hash seeds."""
    tape = Tape(steps=[UserMessage(content="weather?")])
    code = StepMetadata(agent="root", node="route")
    tape.append(SetNextNode(next_node="react", metadata=code))
    tape.append(ToolCall(name="lookup", arguments={"city": "Oslo"}, metadata=code.model_copy()))
    tape.append(
        ToolResult(
            name="lookup", call_id="x", content="sunny", action_id=tape.steps[-1].metadata.id
        )
    )
    tape.append(Call(agent_name="helper", content="more", metadata=code.model_copy()))
    script = (
        "import sys, json; from tests.test_conversation import requests;"
        "from tapeagents import Tape;"
        "print(json.dumps(requests(Tape.model_validate_json(sys.stdin.read()))))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script],
            input=tape.model_dump_json(),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1] == json.dumps(requests(tape)) + "\n"


def routing_agent() -> Agent:
    """A code node makes a fixed tool call and routes to the model: no LLM call of its own."""

    class Fixed(Node):
        async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[Step]:
            yield ToolCall(name="lookup", arguments={"city": "Oslo"})
            yield SetNextNode(next_node="react")

    return Agent(
        "root",
        nodes=[Fixed("fixed"), LLMNode("react", tools=TOOLS, steps=[AssistantMessage])],
        llms=ScriptedLLM(["It is sunny."]),
    )


def test_a_code_node_gives_the_same_request_on_every_run() -> None:
    """Its steps get new random ids on each run; the model's request (hashed into the call's
    id) must not change, or replays mismatch and caches never hit."""
    ids = []
    for _ in range(2):
        result = run_sync(routing_agent(), "Weather?", ToolEnvironment([lookup]))
        assert result.tape.kinds() == [
            "user",
            "tool_call",
            "set_next_node",
            "tool_result",
            "assistant",
        ]
        ids.append(result.tape.steps[-1].metadata.llm_call_id)
    assert ids[0] is not None and ids[0] == ids[1]
