"""Small but real agents of every shape, and the sessions that recorded tests replay.

- ReAct: one `LLMNode` with a tool and `FinalAnswer`, on `TestLLM`.
- plan-act: a planner `LLMNode` writes a `Plan`, an actor `LLMNode` with a tool carries out its
  first item, and the planner plans again from what is left; each node has its own model.
- subagents: a root `LLMNode` `Call`s a researcher subagent, which uses a tool and `Respond`s;
  control returns to the root, which answers. Sessions have a follow-up question, so the
  researcher is called twice on one tape (a fresh conversation each time).
- routing: a code `Node` makes a fixed `ToolCall` and routes with `SetNextNode` to one of two
  `LLMNode`s on `TestLLM`, by what the user asked.

`SHAPES` names each shape's factory and `session(shape, i)` the user messages of its i-th
session, different for every i. Scripted models answer as functions of the prompt, so a session
depends only on its messages and can be recorded again exactly.

`run_session` runs one session; `replay_hits` and `cache_hits` count how many model requests of
recorded sessions are answered from the recording (`tests/test_agent_shapes.py`,
`benchmarks/replay_hits.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tapeagents import (
    Agent,
    Call,
    FinalAnswer,
    LLMNode,
    Node,
    Respond,
    SetNextNode,
    Tape,
    Thought,
    ToolCall,
    ToolEnvironment,
    UserMessage,
    run_sync,
)
from tapeagents.agent import NodeOutput
from tapeagents.errors import LLMError
from tapeagents.llms import LLM, CachedLLM, LLMOutput, Prompt, ScriptedLLM, TestLLM, tool_call
from tapeagents.replay import replay_sync
from tapeagents.store import TapeStore

__all__ = [
    "CITIES",
    "SHAPES",
    "Hits",
    "Plan",
    "Route",
    "Shape",
    "Unreachable",
    "add",
    "agents",
    "cache_hits",
    "plan_act",
    "react",
    "replay_hits",
    "routing",
    "run_session",
    "session",
    "subagents",
    "weather",
]

CITIES = ["Oslo", "Rome", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Dakar", "Hanoi", "Paris"]
"""Cities the sessions ask about."""

_WEATHER = ["cold", "warm", "windy", "rainy", "sunny", "foggy"]

Shape = Literal["react", "plan_act", "subagents", "routing"]


def weather(city: str) -> str:
    """Look up today's weather in a city."""
    return f"{_WEATHER[sum(map(ord, city)) % len(_WEATHER)]} in {city}"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Plan(Thought):
    """The steps still to take, in order."""

    kind: Literal["shapes_plan"] = "shapes_plan"
    items: list[str]
    """One short instruction per step."""


def _cities(text: str) -> list[str]:
    """The known cities named in `text`, in order."""
    return re.findall("|".join(CITIES), text)


def _user_texts(prompt: Prompt) -> list[str]:
    return [str(m["content"]) for m in prompt.messages if m["role"] == "user"]


def _since_last_user(prompt: Prompt) -> list[dict[str, Any]]:
    """The messages after the last user message: this turn's work so far."""
    last = max(i for i, m in enumerate(prompt.messages) if m["role"] == "user")
    return prompt.messages[last + 1 :]


def _results(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [str(m["content"]) for m in messages if m["role"] == "tool"]


def _answer(text: str, id: str) -> LLMOutput:
    return LLMOutput(tool_calls=[tool_call("final_answer", json.dumps({"answer": text}), id=id)])


# ------------------------------------------------------------------------- ReAct


def react() -> tuple[Agent, ToolEnvironment]:
    """One node with a tool and `FinalAnswer`: the test model calls the tool, then answers."""
    env = ToolEnvironment([weather])
    node = LLMNode(
        "react",
        system_prompt="Answer the user's question. Use the tools when they help.",
        tools=env.tools,
        steps=[FinalAnswer],
    )
    return Agent("react", nodes=[node], llms=TestLLM()), env


# ------------------------------------------------------------------------- plan-act


def _reported(prompt: Prompt) -> set[str]:
    """The cities whose weather a message after the task reports ("... in Rome")."""
    later = [str(m["content"]) for m in prompt.messages if m["role"] in ("user", "tool")][1:]
    return {city for city in CITIES if any(f" in {city}" in text for text in later)}


def _planner(prompt: Prompt) -> LLMOutput:
    """Plans, and plans again after each step of the actor: the cities not reported yet."""
    done = _reported(prompt)
    todo = [city for city in _cities(_user_texts(prompt)[0]) if city not in done]
    items = [f"look up {city}" for city in todo] + ["answer"]
    arguments = json.dumps({"items": items})
    return LLMOutput(tool_calls=[tool_call("shapes_plan", arguments, id="call_plan")])


def _actor(prompt: Prompt) -> LLMOutput:
    """Carries out the first item of the latest plan (shown to it as text)."""
    plans = [
        str(m["content"])
        for m in prompt.messages
        if m["role"] == "assistant" and str(m.get("content") or "").startswith("[shapes_plan]")
    ]
    items: list[str] = json.loads(plans[-1].partition(" ")[2])["items"] if plans else ["answer"]
    if items[0].startswith("look up "):
        city = items[0].removeprefix("look up ")
        call = tool_call("weather", json.dumps({"city": city}), id=f"call_{city.lower()}")
        return LLMOutput(content=f"Next: {city}.", tool_calls=[call])
    return _answer("; ".join(_results(prompt.messages)), "call_final")


def plan_act(*, actor_window: int | None = 16384) -> tuple[Agent, ToolEnvironment]:
    """A planner writes a `Plan`; an actor with a tool carries out its first item; repeat until
    the plan says to answer. The two nodes use different models (and context windows)."""
    env = ToolEnvironment([weather])
    planner = LLMNode(
        "plan",
        system_prompt="Write a plan: one item per city still to look up, then 'answer'.",
        steps=[Plan],
        llm="planner",
    )
    actor = LLMNode(
        "act",
        system_prompt="Carry out the first item of the plan.",
        tools=env.tools,
        steps=[FinalAnswer],
        llm="actor",
    )
    llms = {
        "planner": ScriptedLLM(_planner, model="planner", context_window=4096),
        "actor": ScriptedLLM(_actor, model="actor", context_window=actor_window),
    }
    return Agent("plan_act", nodes=[planner, actor], llms=llms), env


# ------------------------------------------------------------------------- subagents


def _delegate(prompt: Prompt) -> LLMOutput:
    """Asks the researcher about the city of the latest question; answers with its response."""
    results = _results(_since_last_user(prompt))
    if results:
        return _answer(f"The researcher says: {results[-1]}", "call_answer")
    texts = _user_texts(prompt)
    request = re.findall(r"Request \d+", texts[0])[0]
    city = _cities(texts[-1])[0]
    arguments = json.dumps({"agent_name": "researcher", "content": f"{request}: {city}?"})
    return LLMOutput(
        content=f"I will ask the researcher about {city}.",
        tool_calls=[tool_call("call", arguments, id="call_researcher")],
    )


def _research(prompt: Prompt) -> LLMOutput:
    """Looks up the city it was asked about, then responds."""
    results = _results(prompt.messages)
    if results:
        content = json.dumps({"content": f"It is {results[-1]}."})
        return LLMOutput(tool_calls=[tool_call("respond", content, id="call_respond")])
    city = _cities(_user_texts(prompt)[0])[0]
    call = tool_call("weather", json.dumps({"city": city}), id="call_weather")
    return LLMOutput(tool_calls=[call])


def subagents() -> tuple[Agent, ToolEnvironment]:
    """A root agent calls a researcher subagent, which uses a tool and responds; control
    returns to the root, which answers with the response."""
    env = ToolEnvironment([weather])
    research = LLMNode(
        "research",
        system_prompt="Find what you are asked with the tools, then respond.",
        tools=env.tools,
        steps=[Respond],
    )
    researcher = Agent(
        "researcher", nodes=[research], llms=ScriptedLLM(_research, model="researcher")
    )
    delegate = LLMNode(
        "delegate",
        system_prompt="Delegate research to the researcher, then answer the user.",
        steps=[Call, FinalAnswer],
    )
    llm = ScriptedLLM(_delegate, model="assistant")
    return Agent("assistant", nodes=[delegate], subagents=[researcher], llms=llm), env


# ------------------------------------------------------------------------- routing


class Route(Node):
    """Routes by the user's message, without a model: two numbers go to `math` after a fixed
    `add` call, anything else to `weather` after a fixed `weather` call."""

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        text = str(getattr(tape.steps[-1], "content", "")).partition(":")[2]
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        if len(numbers) >= 2:
            yield ToolCall(name="add", arguments={"a": numbers[-2], "b": numbers[-1]})
            yield SetNextNode(next_node="math")
        else:
            yield ToolCall(name="weather", arguments={"city": (_cities(text) or CITIES)[0]})
            yield SetNextNode(next_node="weather")


def routing() -> tuple[Agent, ToolEnvironment]:
    """A code node routes to one of two model nodes, after a tool call of its own."""
    env = ToolEnvironment([weather, add])
    nodes = [
        Route("route"),
        LLMNode(
            "weather", system_prompt="Report the weather.", tools=env.tools[:1], steps=[FinalAnswer]
        ),
        LLMNode("math", system_prompt="Report the sum.", tools=env.tools[1:], steps=[FinalAnswer]),
    ]
    return Agent("routing", nodes=nodes, llms=TestLLM()), env


SHAPES: dict[Shape, Callable[[], tuple[Agent, ToolEnvironment]]] = {
    "react": react,
    "plan_act": plan_act,
    "subagents": subagents,
    "routing": routing,
}
"""Each shape's factory: a fresh agent and its environment."""


def session(shape: Shape, i: int) -> list[str]:
    """The user messages of the i-th session of a shape, different for every i."""
    city = CITIES[i % len(CITIES)]
    other = CITIES[(i * 3 + 1) % len(CITIES)]
    if shape == "plan_act":
        return [f"Request {i}: compare the weather in {city} and {other}."]
    if shape == "subagents":
        return [f"Request {i}: what is the weather in {city}?", f"And in {other}?"]
    if shape == "routing" and i % 2:
        return [f"Request {i}: what is {i} plus {i * 7 % 13}?"]
    return [f"Request {i}: what is the weather in {city}?"]


def run_session(
    agent: Agent,
    env: ToolEnvironment,
    messages: Sequence[str],
    *,
    tape_id: str | None = None,
    store: TapeStore | None = None,
) -> Tape[Any, Any]:
    """Run one session: each user message in turn on one tape, each turn until it stops."""
    tape: Tape[Any, Any] = Tape() if tape_id is None else Tape(id=tape_id)
    for message in messages:
        tape.append(UserMessage(content=message))
        result = run_sync(agent, tape, env, max_steps=30, store=store)
        if result.reason != "stopped":
            raise AssertionError(f"Session {tape.id} ended with {result.reason}: {result.error}")
        tape = result.tape
    return tape


# ------------------------------------------------------------------------- hits


def agents(agent: Agent) -> Iterator[Agent]:
    """The agent and all its subagents."""
    yield agent
    for sub in agent.subagents.values():
        yield from agents(sub)


class Unreachable(LLM):
    """Stands in for a recorded model under `CachedLLM`: same name, parameters and token counts,
    and it fails if asked, so every answer must come from the cache."""

    def __init__(self, like: LLM) -> None:
        super().__init__(like.model, context_window=like.context_window, **like.parameters)
        self.like = like

    async def generate(self, prompt: Prompt) -> LLMOutput:
        raise LLMError(f"Model {self.model!r} was asked a prompt that the cache does not hold.")

    @property
    def supports_images(self) -> bool:
        return self.like.supports_images

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        return self.like.count_tokens(messages, tools)

    def count_message_tokens(self, message: dict[str, Any]) -> int:
        return self.like.count_message_tokens(message)


@dataclass
class Hits:
    """Model requests answered from a recording (hits) and not (misses)."""

    hits: int = 0
    misses: int = 0


def replay_hits(shape: Shape, store: TapeStore, tape_ids: Sequence[str]) -> Hits:
    """Replay the recorded tapes (`replay_sync`, answers from `ReplayLLM`s): hits are the model
    requests answered from the recording, misses the replays that asked something else or
    produced other steps (each stops there). The agent's own models would fail if asked."""
    counts = Hits()
    for tape_id in tape_ids:
        agent, _ = SHAPES[shape]()
        for each in agents(agent):
            each.llms = {name: Unreachable(llm) for name, llm in each.llms.items()}
        report = replay_sync(agent, store.get(tape_id), store=store)
        counts.hits += report.llm_calls
        counts.misses += 0 if report.passed else 1
    return counts


def cache_hits(
    shape: Shape,
    cache: MutableMapping[str, LLMOutput],
    sessions: Sequence[int],
    *,
    live: bool,
    store: TapeStore | None = None,
) -> Hits:
    """Run the sessions with every model behind a `CachedLLM` over `cache`. With `live`, a miss
    asks the real (scripted) model and fills the cache; without, a miss fails. With `store`,
    the sessions are recorded there, as tapes `<shape>-<i>`."""
    counts = Hits()
    for i in sessions:
        agent, env = SHAPES[shape]()
        cached: list[CachedLLM] = []
        for each in agents(agent):
            for name, llm in each.llms.items():
                cached.append(CachedLLM(llm if live else Unreachable(llm), cache))
                each.llms[name] = cached[-1]
        try:
            run_session(agent, env, session(shape, i), tape_id=f"{shape}-{i}", store=store)
        finally:
            counts.hits += sum(c.hits for c in cached)
            counts.misses += sum(c.misses for c in cached)
    return counts
