"""Agents and nodes: what reads a tape and writes the next thoughts and actions.

An `Agent` has a name, named LLMs, an ordered list of `Node`s, subagents and jinja2 templates.
Each turn, the agent that holds the tape (the root, or a subagent it `Call`ed) picks its next
node: the one a `SetNextNode` step names (a hand-written one, without an agent, steers whoever
holds the tape), the calling node again when a subagent it `Call`ed has responded, the same
node again after a parsing failure, else the node after the one that acted last (wrapping
around). The node yields steps and the LLM calls they came from; the agent stamps each step with
its path and the node's name, and links the steps that follow an `LLMCall` to it.

`LLMNode` (in `tapeagents.llm_node`) is the node that asks a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from tapeagents.errors import UsageError
from tapeagents.llms import LLM, LLMCall, TextDelta, resolve_llm
from tapeagents.prompts import TemplateSet
from tapeagents.steps import Call, Error, Respond, SetNextNode, Step
from tapeagents.tape import Tape

__all__ = ["Agent", "Node", "NodeOutput"]

NodeOutput = Step | LLMCall | TextDelta
"""What a node yields: steps, the LLM calls they came from, and streamed text."""


class Node:
    """One kind of move of an agent. Override `generate` to yield steps (and LLM calls)."""

    in_order: bool = True
    """Whether the node takes its turn in the order of the agent's nodes; False for a node
    that runs only when a `SetNextNode` names it (a `Summarizer`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        """Yield the steps this node adds to the tape."""
        raise NotImplementedError(f"Node {self.name!r} must implement generate().")
        yield  # pragma: no cover  (makes this an async generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Agent:
    """A named set of nodes and the LLMs and templates they use.

    Args:
        name: The agent's name; steps it produces carry it (subagents: `parent/child`).
        nodes: The nodes, in the order they act.
        llms: One LLM (or model string) as "default", or a mapping of names to LLMs.
        subagents: Agents this one can hand the tape to with a `Call` step.
        templates: Named jinja2 templates that prompts can `{% include %}`.

    Example:
        >>> from tapeagents.llms import ScriptedLLM
        >>> agent = Agent("helper", nodes=[LLMNode()], llms=ScriptedLLM(["Hi!"]))
    """

    def __init__(
        self,
        name: str,
        *,
        nodes: Sequence[Node],
        llms: LLM | str | Mapping[str, LLM | str] | None = None,
        subagents: Sequence[Agent] = (),
        templates: Mapping[str, str] | None = None,
    ) -> None:
        if not nodes:
            raise UsageError(f"Agent {name!r} needs at least one node.")
        if "/" in name:
            raise UsageError(f"Agent name {name!r} cannot contain '/'.")
        self.name = name
        self.nodes = list(nodes)
        self._node_index = {node.name: i for i, node in enumerate(self.nodes)}
        if len(self._node_index) != len(self.nodes):
            raise UsageError(f"Agent {name!r} has two nodes with the same name.")
        if llms is None:
            llms = {}
        elif isinstance(llms, LLM | str):
            llms = {"default": llms}
        self.llms: dict[str, LLM] = {key: resolve_llm(value) for key, value in llms.items()}
        self.subagents = {agent.name: agent for agent in subagents}
        self.templates = TemplateSet(templates)

    # --------------------------------------------------------------------- lookups

    def llm(self, name: str = "default") -> LLM:
        """The LLM registered under `name`."""
        try:
            return self.llms[name]
        except KeyError:
            known = ", ".join(sorted(self.llms)) or "none"
            raise UsageError(
                f"Agent {self.name!r} has no LLM named {name!r} (it has: {known}). "
                f"Pass llms={{'{name}': ...}} to the Agent."
            ) from None

    def node(self, name: str) -> Node:
        """The node called `name`."""
        index = self._node_index.get(name)
        if index is None:
            raise UsageError(
                f"Agent {self.name!r} has no node {name!r}; its nodes are: "
                f"{', '.join(self._node_index)}."
            )
        return self.nodes[index]

    def find(self, path: str) -> Agent:
        """The agent at `path` (`root/child/...`) below and including this one."""
        names = path.split("/")
        if names[0] != self.name:
            raise UsageError(f"Path {path!r} does not start with agent {self.name!r}.")
        agent = self
        for name in names[1:]:
            sub = agent.subagents.get(name)
            if sub is None:
                raise UsageError(
                    f"Agent {agent.name!r} has no subagent {name!r}; it has: "
                    f"{', '.join(agent.subagents) or 'none'}."
                )
            agent = sub
        return agent

    # --------------------------------------------------------------------- control flow

    def active_path(self, tape: Tape[Any, Any]) -> str:
        """Path of the agent that holds the tape now (after `Call`s and `Respond`s)."""
        for step in reversed(tape.steps):
            path: str = step.metadata.agent
            if not path or not (path == self.name or path.startswith(self.name + "/")):
                continue  # the environment, the user, or a foreign agent
            if isinstance(step, Call):
                return f"{path}/{step.agent_name}"
            if isinstance(step, Respond):
                return path.rpartition("/")[0] or path
            return path
        return self.name

    def next_node(self, tape: Tape[Any, Any], path: str) -> Node:
        """The node of the agent at `path` that acts next on `tape`."""
        agent = self.find(path)
        answered = False  # a subagent responded: the node that called it goes on
        for step in reversed(tape.steps):
            if isinstance(step, Call) and f"{step.metadata.agent}/{step.agent_name}" == path:
                return agent.following(-1)  # a fresh call starts at the first node
            if isinstance(step, SetNextNode) and not step.metadata.agent:
                return agent.node(step.next_node)  # written by hand: for whoever holds the tape
            if isinstance(step, Respond) and step.metadata.agent.rpartition("/")[0] == path:
                answered = True
                continue
            if step.metadata.agent != path or not step.metadata.node:
                continue
            if isinstance(step, SetNextNode):
                return agent.node(step.next_node)
            if answered:
                if isinstance(step, Call):
                    return agent.node(step.metadata.node)
                continue
            if isinstance(step, Error) and step.metadata.node in agent._node_index:
                return agent.node(step.metadata.node)  # let the node try again
            index = agent._node_index.get(step.metadata.node)
            if index is not None:
                return agent.following(index)
        return agent.following(-1)

    def following(self, index: int) -> Node:
        """The node that runs after the node at `index` (-1: the first), wrapping around and
        skipping nodes that run only when named (`Node.in_order` False)."""
        count = len(self.nodes)
        for step in range(1, count + 1):
            node = self.nodes[(index + step) % count]
            if node.in_order:
                return node
        raise UsageError(f"Agent {self.name!r} has no node that runs in order.")

    def plan(self, tape: Tape[Any, Any]) -> tuple[str, Node]:
        """Which agent (by path) holds the tape, and which of its nodes acts next."""
        path = self.active_path(tape)
        return path, self.next_node(tape, path)

    async def step(
        self, tape: Tape[Any, Any], *, path: str | None = None, node: Node | None = None
    ) -> AsyncIterator[NodeOutput]:
        """Run one node of the agent holding the tape; its steps come stamped with their origin.

        `path` and `node` default to `plan(tape)`.
        """
        if path is None or node is None:
            path, node = self.plan(tape)
        agent = self.find(path)
        call_id: str | None = None
        async for item in node.generate(agent, tape):
            if isinstance(item, Step):
                item.metadata.agent = path
                item.metadata.node = node.name
                if item.metadata.llm_call_id is None and not isinstance(item, SetNextNode):
                    item.metadata.llm_call_id = call_id  # what follows a call came from it
            elif isinstance(item, LLMCall):
                call_id = item.id
            elif not isinstance(item, TextDelta):  # user code: check what it yields
                raise UsageError(
                    f"Node {node.name!r} yielded {type(item).__name__}; "
                    "nodes yield steps, LLM calls and text deltas."
                )
            yield item

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, nodes={[n.name for n in self.nodes]})"
