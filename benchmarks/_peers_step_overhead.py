"""Peer workloads for `step_overhead.py`; run ONLY with the bench venv's Python.

    .bench-venv/bin/python -I benchmarks/_peers_step_overhead.py tapeagents-0.1.16 1000 5

The bench venv holds the original TapeAgents 0.1.16 (import name `tapeagents`, like ours, which
is why it lives in its own venv) and LangGraph. Run it with `-I` from a directory other than the
repository root, so that `import tapeagents` finds 0.1.16 and not our package.

Workload (identical for every framework): a single node that, per step, builds a prompt from the
LAST step only, calls an instant scripted LLM returning a fixed 500-character string, and appends
one thought step holding it. The tape starts with one 500-character user message and the run
goes until the tape has N steps (N - 1 appended steps). No persistence anywhere.

Prints one JSON object on stdout: {"framework", "version", "steps", "seconds": [...]} where
each entry of "seconds" is the wall time of one run (graph/agent construction excluded).
"""

import gc
import json
import sys
import time

ANSWER = ("The quick brown fox jumps over the lazy dog. " * 12)[:500]
SEED = ("Please think step by step about the lazy dog. " * 12)[:500]
assert len(ANSWER) == len(SEED) == 500


# ----------------------------------------------------------------------------- TapeAgents 0.1.16


def _tapeagents_0116():
    """A faithful 0.1.16 workload: Node.make_prompt + Node.generate_steps, driven by Agent.run."""
    from importlib.metadata import version

    from tapeagents.core import LLMOutput, Prompt, TrainingText
    from tapeagents.dialog_tape import AssistantThought, DialogTape, UserStep

    import tapeagents
    from tapeagents.agent import Agent, Node
    from tapeagents.llms.base import LLM, LLMEvent, LLMStream

    assert "site-packages" in (tapeagents.__file__ or ""), tapeagents.__file__

    class InstantLLM(LLM):
        """Like 0.1.16's MockLLM (which sleeps 10 ms per call), minus the sleep and the HTTP call.

        Records the call through `LLM.log_output` like the real `LiteLLM` backend does, with token
        counting off (no tokenizer) and `observe_llm_calls=False` (no SQLite persistence).
        """

        model_name: str = "instant"
        observe_llm_calls: bool = False

        def generate(self, prompt: Prompt, **kwargs) -> LLMStream:
            def _implementation():
                output = LLMOutput(content=ANSWER)
                llm_call = self.log_output(prompt, output, count_tokens=False)
                yield LLMEvent(output=output, llm_call=llm_call)

            return LLMStream(_implementation(), prompt=prompt)

        def count_tokens(self, messages) -> int:
            return 0

        def make_training_text(self, prompt: Prompt, output: LLMOutput) -> TrainingText:
            raise NotImplementedError

    class LastStepNode(Node):
        def make_prompt(self, agent, tape) -> Prompt:
            return Prompt(messages=[{"role": "user", "content": tape.steps[-1].content}])

        def generate_steps(self, agent, tape, llm_stream):
            yield AssistantThought(content=llm_stream.get_text())

    class LoopingAgent(Agent):
        """0.1.16 raises "Next node not found" after the last node; wrap around to node 0.

        The original `select_node` still runs in full (it computes the tape view), so the cost
        of the framework path is kept; only the wrap-around is added.
        """

        def select_node(self, tape):
            try:
                return super().select_node(tape)
            except ValueError:
                return self.nodes[0]

    def one_run(n: int) -> float:
        llm = InstantLLM()
        agent = LoopingAgent.create(llms=llm, nodes=[LastStepNode()], name="bench")
        tape = DialogTape(steps=[UserStep(content=SEED)])
        final = None
        gc.collect()
        start = time.perf_counter()
        for event in agent.run(tape, max_iterations=n - 1):
            if event.final_tape is not None:
                final = event.final_tape
        elapsed = time.perf_counter() - start
        assert final is not None and len(final) == n, (final and len(final), n)
        assert final.steps[-1].content == ANSWER
        return elapsed

    return version("tapeagents"), one_run


# ----------------------------------------------------------------------------- LangGraph


def _langgraph():
    """StateGraph, no checkpointer: list state with an appending reducer, one looping node."""
    import operator
    from importlib.metadata import version
    from typing import Annotated, TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        messages: Annotated[list, operator.add]

    def instant_llm(messages: list[dict]) -> str:
        return ANSWER

    def one_run(n: int) -> float:
        def agent_node(state: State) -> dict:
            prompt = [{"role": "user", "content": state["messages"][-1]["content"]}]
            return {"messages": [{"role": "assistant", "content": instant_llm(prompt)}]}

        def route(state: State) -> str:
            return END if len(state["messages"]) >= n else "agent"

        builder = StateGraph(State)
        builder.add_node("agent", agent_node)
        builder.add_edge(START, "agent")
        builder.add_conditional_edges("agent", route)
        graph = builder.compile()  # no checkpointer
        gc.collect()
        start = time.perf_counter()
        result = graph.invoke(
            {"messages": [{"role": "user", "content": SEED}]}, {"recursion_limit": n + 10}
        )
        elapsed = time.perf_counter() - start
        assert len(result["messages"]) == n and result["messages"][-1]["content"] == ANSWER
        return elapsed

    return version("langgraph"), one_run


FRAMEWORKS = {"tapeagents-0.1.16": _tapeagents_0116, "langgraph": _langgraph}


def main() -> None:
    framework, steps, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    version, one_run = FRAMEWORKS[framework]()
    one_run(min(steps, 20))  # warm-up: imports, pydantic schemas, caches
    seconds = [one_run(steps) for _ in range(runs)]
    print(
        json.dumps({"framework": framework, "version": version, "steps": steps, "seconds": seconds})
    )


if __name__ == "__main__":
    main()
