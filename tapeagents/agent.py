"""Agents and nodes: what reads a tape and writes the next thoughts and actions.

An `Agent` has a name, named LLMs, an ordered list of `Node`s, subagents and jinja2 templates.
Each turn, the agent that holds the tape (the root, or a subagent it `Call`ed) picks its next
node: the one a `SetNextNode` step names, the same node again after a parsing failure, else the
node after the one that acted last (wrapping around). The node yields steps and the LLM calls
they came from; the agent stamps each step with its path and the node's name.

`LLMNode` is the workhorse: it renders the tape as chat messages under a system prompt, offers
its step types to the model as tools (or as a JSON format), and parses the answer into steps.
`LLMNode.inverse` is the exact inverse of that parse, so any tape becomes training data.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from tapeagents.core import (
    Action,
    AssistantMessage,
    Call,
    Error,
    LLMFailure,
    Observation,
    ParsingFailure,
    Reasoning,
    Respond,
    SetNextNode,
    Step,
    Tape,
    ToolCall,
    UnknownStep,
)
from tapeagents.environment import ToolSpec
from tapeagents.errors import LLMError, UsageError
from tapeagents.llms import LLM, LLMCall, LLMOutput, Prompt, TextDelta, ToolCallRequest, resolve_llm
from tapeagents.prompts import TemplateSet

__all__ = ["Agent", "LLMNode", "Node", "NodeOutput", "output_groups"]

NodeOutput = Step | LLMCall | TextDelta
"""What a node yields: steps, the LLM calls they came from, and streamed text."""

_ACK = "recorded"
"""Tool-message content that acknowledges a step the model emitted as a tool call."""


class Node:
    """One kind of move of an agent. Override `generate` to yield steps (and LLM calls)."""

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
            path = step.metadata.agent
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
        for step in reversed(tape.steps):
            if isinstance(step, Call) and f"{step.metadata.agent}/{step.agent_name}" == path:
                return agent.nodes[0]  # a fresh call starts at the first node
            if step.metadata.agent != path or not step.metadata.node:
                continue
            if isinstance(step, SetNextNode):
                return agent.node(step.next_node)
            if isinstance(step, Error) and step.metadata.node in agent._node_index:
                return agent.node(step.metadata.node)  # let the node try again
            index = agent._node_index.get(step.metadata.node)
            if index is not None:
                return agent.nodes[(index + 1) % len(agent.nodes)]
        return agent.nodes[0]

    def with_llm(self, llm: LLM) -> Agent:
        """A copy of this agent (and its subagents) whose every LLM is `llm`; used by replay."""
        clone = copy.copy(self)
        clone.llms = {name: llm for name in self.llms} or {"default": llm}
        clone.subagents = {name: sub.with_llm(llm) for name, sub in self.subagents.items()}
        return clone

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
        async for item in node.generate(agent, tape):
            if isinstance(item, Step):
                item.metadata.agent = path
                item.metadata.node = node.name
            yield item

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, nodes={[n.name for n in self.nodes]})"


# ----------------------------------------------------------------------------- LLMNode

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class LLMNode(Node):
    """A node that asks an LLM for its next steps.

    The prompt is the rendered `system_prompt` (jinja2; it sees `tape`, `context` and `agent`)
    followed by the tape as chat messages. The step types in `steps`, and the environment's
    `tools`, are offered to the model:

    - `mode="tools"`: as native tools; plain text in the answer becomes a `text_step`.
    - `mode="json"`: as a JSON format described in the system prompt, for models without
      tool calling; the answer must be a JSON list of step objects, each with its `kind`.

    An answer that cannot be parsed becomes a `ParsingFailure` step with the raw text, and the
    node is asked again (the model sees its answer and the error).

    Args:
        name: The node's name, unique within the agent.
        system_prompt: Jinja2 template of the system message.
        steps: Step types the model may produce.
        tools: Tools of the environment the model may call (they become `ToolCall`s).
        llm: Name of the agent's LLM to use.
        mode: "tools" or "json", as above.
        text_step: Step type that plain text becomes (default: `AssistantMessage` when allowed).
    """

    def __init__(
        self,
        name: str = "main",
        *,
        system_prompt: str = "",
        steps: Sequence[type[Step]] = (AssistantMessage,),
        tools: Sequence[ToolSpec] = (),
        llm: str = "default",
        mode: Literal["tools", "json"] = "tools",
        text_step: type[Step] | None = None,
    ) -> None:
        super().__init__(name)
        self.system_prompt = system_prompt
        self.llm = llm
        self.mode = mode
        self.tools = list(tools)
        self._tool_names = {tool.name for tool in self.tools}
        if text_step is None and AssistantMessage in steps:
            text_step = AssistantMessage
        if text_step is not None and _single_text_field(text_step) is None:
            raise UsageError(f"text_step {text_step.__name__} must have exactly one str field.")
        self.text_step = text_step
        self.step_types: dict[str, type[Step]] = {
            cls.model_fields["kind"].default: cls for cls in steps if cls is not text_step
        }
        # Text beside tool calls is kept as the model's reasoning when there is no text step.
        self._content_type: type[Step] | None = text_step or (
            None if "reasoning" in self.step_types else Reasoning
        )
        clash = self._tool_names & set(self.step_types)
        if clash:
            raise UsageError(f"Tools and step kinds share names {sorted(clash)}; rename the tools.")
        self._schema_cache: list[dict[str, Any]] | None = None

    # --------------------------------------------------------------------- prompt

    def tool_schemas(self) -> list[dict[str, Any]]:
        """Environment tools and step types, in the OpenAI tools format."""
        if self._schema_cache is None:
            schemas = [tool.openai_schema() for tool in self.tools]
            for kind, cls in self.step_types.items():
                schemas.append(
                    {
                        "type": "function",
                        "function": {
                            "name": kind,
                            "description": (cls.__doc__ or kind).strip().split("\n")[0],
                            "parameters": _fields_schema(cls),
                        },
                    }
                )
            self._schema_cache = schemas
        return self._schema_cache

    def json_instructions(self) -> str:
        """The output format explained to a model in JSON mode."""
        formats = [
            json.dumps({"kind": kind, **_example_fields(cls)})
            for kind, cls in self.step_types.items()
        ]
        formats += [
            json.dumps({"kind": "tool_call", "name": tool.name, "arguments": tool.parameters})
            for tool in self.tools
        ]
        if self.text_step is not None:
            formats.insert(
                0,
                json.dumps(
                    {
                        "kind": self.text_step.model_fields["kind"].default,
                        **_example_fields(self.text_step),
                    }
                ),
            )
        return (
            "Answer with a JSON list of steps and nothing else. Each step is one of:\n"
            + "\n".join(formats)
        )

    def make_prompt(self, agent: Agent, tape: Tape[Any, Any]) -> Prompt:
        """The exact request this node sends for `tape`."""
        messages = self._system_messages(agent, tape) + self.tape_messages(tape)
        return Prompt(messages=messages, tools=self._prompt_tools())

    def make_prompts(
        self,
        agent: Agent,
        tape: Tape[Any, Any],
        ends: Sequence[int],
        *,
        inverses: Mapping[int, LLMOutput] | None = None,
    ) -> list[Prompt]:
        """`make_prompt` for each prefix `tape.steps[:end]`, in one pass over the tape.

        This is how exporters rebuild the request behind every model output of a tape without
        rendering the tape again for each one. An `end` inside a group of steps that came from
        one model output gets `make_prompt` of that prefix, so the result is always exact. The
        prompts share their message dicts (copy one before changing it). `inverses` holds
        this node's `inverse` of groups already computed, by the group's first step, so that
        they are not computed again. A subclass with its own `make_prompt` gets that for each
        prefix, so its exports stay exact without more code.
        """
        if type(self).make_prompt is not LLMNode.make_prompt:
            return [
                self.make_prompt(agent, tape.model_copy(update={"steps": tape.steps[:end]}))
                for end in ends
            ]
        wanted = set(ends)
        upto = max(wanted, default=0)
        snapshots: dict[int, list[dict[str, Any]]] = {0: []}
        messages: list[dict[str, Any]] = []
        if upto > 0:
            for stop, group in self._group_messages(tape.steps[:upto], inverses):
                messages.extend(group)
                if stop in wanted:
                    snapshots[stop] = list(messages)
        tools = self._prompt_tools()
        prompts = []
        system: list[dict[str, Any]] | None = None
        for end in ends:
            if not 0 <= end <= len(tape.steps):
                raise UsageError(f"No prefix of {end} steps: the tape has {len(tape.steps)}.")
            if end not in snapshots:
                prefix = tape.model_copy(update={"steps": tape.steps[:end]})
                prompts.append(self.make_prompt(agent, prefix))
                continue
            if system is None or not self._system_ignores_steps():
                prefix = tape.model_copy(update={"steps": tape.steps[:end]})
                rendered = self._system_messages(agent, prefix)
                if rendered != system:  # an unchanged system message stays the same dict
                    system = rendered
            # Built from messages made here: no validation, and no copies of them.
            prompts.append(Prompt.model_construct(messages=system + snapshots[end], tools=tools))
        return prompts

    def _system_ignores_steps(self) -> bool:
        """Whether the system prompt cannot depend on the tape's steps: its template never names
        `tape` and includes no other template (it may still use `context` and `agent`)."""
        source = self.system_prompt
        if "{" not in source:
            return True
        if "tape" in source:
            return False
        return not any(word in source for word in ("include", "import", "extends", "from"))

    def _system_messages(self, agent: Agent, tape: Tape[Any, Any]) -> list[dict[str, Any]]:
        system = agent.templates.render(
            self.system_prompt, tape=tape, context=tape.context, agent=agent
        )
        if self.mode == "json":
            system = (
                f"{system}\n\n{self.json_instructions()}" if system else self.json_instructions()
            )
        return [{"role": "system", "content": system}] if system else []

    def _prompt_tools(self) -> list[dict[str, Any]] | None:
        return self.tool_schemas() if self.mode == "tools" and self.tool_schemas() else None

    def tape_messages(self, tape: Tape[Any, Any], end: int | None = None) -> list[dict[str, Any]]:
        """The first `end` steps of the tape (default: all) as chat messages in this node's format.

        Steps from one LLM call form one assistant message, rebuilt with `inverse`.
        """
        steps = tape.steps[:end] if end is not None else tape.steps
        messages: list[dict[str, Any]] = []
        for _, group in self._group_messages(steps):
            messages.extend(group)
        return messages

    def _group_messages(
        self, steps: Sequence[Step], inverses: Mapping[int, LLMOutput] | None = None
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """For each group of `output_groups(steps)`: where it ends, and its chat messages."""
        tool_ids: dict[str, str] = {}  # action metadata id -> tool call id
        for start, stop in output_groups(steps):
            step = steps[start]
            if isinstance(step, Observation):
                yield stop, [self._observation_message(step, tool_ids)]
            elif isinstance(step, ParsingFailure):
                yield (
                    stop,
                    [
                        {"role": "assistant", "content": step.raw_output},
                        {
                            "role": "user",
                            "content": f"Your answer could not be used: {step.error}\n"
                            "Answer again in the required format.",
                        },
                    ],
                )
            elif isinstance(step, Error):
                yield stop, []  # infrastructure failures are not part of the conversation
            elif isinstance(step, UnknownStep):
                yield stop, [{"role": "user", "content": f"[{step.kind}] {step.llm_text()}"}]
            else:
                group = steps[start:stop]
                known = inverses.get(start) if inverses else None
                output = known if known is not None else self.inverse(group)
                messages = [output.as_message()]
                for step_in_group, request in zip(
                    _tool_call_steps(self, group), output.tool_calls, strict=True
                ):
                    if isinstance(step_in_group, Action):
                        tool_ids[step_in_group.metadata.id] = request.id
                    else:
                        messages.append(
                            {"role": "tool", "tool_call_id": request.id, "content": _ACK}
                        )
                yield stop, messages

    def _observation_message(
        self, step: Observation, tool_ids: Mapping[str, str]
    ) -> dict[str, Any]:
        call_id = tool_ids.get(step.action_id) if step.action_id else None
        if step.kind == "user":
            return {"role": "user", "content": step.llm_text()}
        text = step.llm_dict().get("content") if step.kind == "tool_result" else None
        if text is None:
            text = step.llm_text()
        if call_id is not None and self.mode == "tools":
            return {"role": "tool", "tool_call_id": call_id, "content": text}
        return {"role": "user", "content": f"[{step.kind}] {text}"}

    # --------------------------------------------------------------------- output

    def parse(self, output: LLMOutput) -> list[Step]:
        """Turn a model's answer into steps, or one `ParsingFailure` that keeps the raw answer."""
        try:
            if self.mode == "json":
                return self._parse_json(output.content or "")
            return self._parse_tools(output)
        except _ParseError as error:
            return [ParsingFailure(error=str(error), raw_output=output.raw_text())]

    def _parse_tools(self, output: LLMOutput) -> list[Step]:
        steps: list[Step] = []
        text = (output.content or "").strip()
        if text:
            if self.text_step is not None:
                steps.append(_text_step(self.text_step, text))
            elif output.tool_calls and self._content_type is not None:
                steps.append(_text_step(self._content_type, text))
            else:
                raise _ParseError(
                    "The answer is plain text, but this node expects tool calls: "
                    f"{', '.join(sorted(self._tool_names | set(self.step_types)))}. (Developers: "
                    "add AssistantMessage to the node's steps to accept text answers.)"
                )
        for request in output.tool_calls:
            try:
                arguments = json.loads(request.arguments or "{}")
            except json.JSONDecodeError as error:
                message = f"Arguments of tool call {request.name!r} are not JSON: {error}"
                raise _ParseError(message) from None
            if not isinstance(arguments, dict):
                raise _ParseError(f"Arguments of tool call {request.name!r} must be an object.")
            step = self._step_from_call(request.name, arguments, request.id)
            steps.append(step)
        if not steps:
            raise _ParseError("The answer is empty.")
        return steps

    def _parse_json(self, text: str) -> list[Step]:
        fenced = _FENCE.search(text)
        body = (fenced.group(1) if fenced else text).strip()
        start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
        if start < 0:
            if self.text_step is not None and body:
                return [_text_step(self.text_step, body)]
            raise _ParseError("The answer contains no JSON.")
        try:
            data, _ = json.JSONDecoder().raw_decode(body[start:])
        except json.JSONDecodeError as error:
            raise _ParseError(f"The answer is not valid JSON: {error}") from None
        items = data if isinstance(data, list) else [data]
        steps: list[Step] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
                raise _ParseError(f"Each step must be an object with a 'kind', got {item!r:.200}.")
            fields = {k: v for k, v in item.items() if k != "kind"}
            kind = item["kind"]
            if kind == "tool_call":
                name = fields.get("name")
                arguments = fields.get("arguments", {})
                if not isinstance(name, str) or not isinstance(arguments, dict):
                    raise _ParseError(
                        "A tool_call needs a string 'name' and an object 'arguments'."
                    )
                steps.append(self._step_from_call(name, arguments, None))
            elif self.text_step is not None and kind == self.text_step.model_fields["kind"].default:
                steps.append(self._validate(self.text_step, fields, None))
            else:
                steps.append(self._step_from_call(kind, fields, None))
        if not steps:
            raise _ParseError("The answer is an empty list of steps.")
        return steps

    def _step_from_call(self, name: str, arguments: dict[str, Any], call_id: str | None) -> Step:
        if name in self._tool_names:
            extra = {"call_id": call_id} if call_id else {}
            return ToolCall(name=name, arguments=arguments, **extra)
        cls = self.step_types.get(name)
        if cls is None:
            known = sorted(self._tool_names | set(self.step_types))
            raise _ParseError(
                f"Unknown tool or step {name!r}; expected one of: {', '.join(known)}."
            )
        return self._validate(cls, arguments, call_id)

    @staticmethod
    def _validate(cls: type[Step], fields: dict[str, Any], call_id: str | None) -> Step:
        if "metadata" in fields or "kind" in fields:
            raise _ParseError(f"Step {cls.__name__} cannot set 'kind' or 'metadata'.")
        try:
            step = cls.model_validate(fields)
        except ValidationError as error:
            raise _ParseError(f"Invalid {cls.model_fields['kind'].default}: {error}") from None
        if call_id:
            step.metadata.extra["tool_call_id"] = call_id
        return step

    def inverse(self, steps: Sequence[Step]) -> LLMOutput:
        """The model output that `parse` turns into exactly these steps (metadata aside)."""
        if self.mode == "json":
            items: list[dict[str, Any]] = []
            for step in steps:
                if isinstance(step, ToolCall):
                    items.append(
                        {"kind": "tool_call", "name": step.name, "arguments": step.arguments}
                    )
                else:
                    items.append({"kind": step.kind, **step.llm_dict()})
            return LLMOutput(content=json.dumps(items, ensure_ascii=False))
        texts: list[str] = []
        calls: list[ToolCallRequest] = []
        for step in steps:
            if self._is_content(step):
                texts.append(_text_of(step))
            elif isinstance(step, ToolCall):
                calls.append(
                    ToolCallRequest(
                        id=step.call_id,
                        name=step.name,
                        arguments=json.dumps(step.arguments, ensure_ascii=False),
                    )
                )
            else:
                calls.append(
                    ToolCallRequest(
                        id=step.metadata.extra.get("tool_call_id")
                        or f"call_{step.metadata.id[:24]}",
                        name=step.kind,
                        arguments=json.dumps(step.llm_dict(), ensure_ascii=False),
                    )
                )
        return LLMOutput(content="\n\n".join(texts) if texts else None, tool_calls=calls)

    def _is_content(self, step: Step) -> bool:
        """Whether `inverse` renders this step as the message text (not as a tool call)."""
        return self._content_type is not None and type(step) is self._content_type

    # --------------------------------------------------------------------- run

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        prompt = self.make_prompt(agent, tape)
        llm = agent.llm(self.llm)
        call: LLMCall | None = None
        try:
            async for item in llm.stream_call(prompt):
                if isinstance(item, LLMCall):
                    call = item
                else:
                    yield item
        except LLMError as error:
            yield LLMFailure(error=f"{type(error).__name__}: {error}")
            return
        if call is None:
            raise UsageError(f"{llm!r}.stream() ended without a final LLMOutput.")
        yield call
        steps = self.parse(call.output)
        unknown = [
            s.agent_name
            for s in steps
            if isinstance(s, Call) and s.agent_name not in agent.subagents
        ]
        if unknown:
            known = ", ".join(agent.subagents) or "none"
            steps = [
                ParsingFailure(
                    error=f"Unknown agent {unknown[0]!r} in call; agents you can call: {known}.",
                    raw_output=call.output.raw_text(),
                )
            ]
        for step in steps:
            step.metadata.llm_call_id = call.id
            if call.retries:  # kept on the tape: the store does not keep LLMCall.retries
                step.metadata.extra["llm_retries"] = call.retries
            yield step


class _ParseError(Exception):
    pass


def output_groups(steps: Sequence[Step]) -> list[tuple[int, int]]:
    """The `(start, stop)` index ranges of `steps` that one model output produced.

    Consecutive agent steps with the same `llm_call_id` form a group, and so do consecutive
    agent steps without one from the same agent and node (a non-LLM turn, or steps written by
    hand). Every observation, error and unknown step is a group of its own. Prompts render each
    group as one message, and exporters make one training example of each LLM-produced group.
    """
    groups: list[tuple[int, int]] = []
    i, n = 0, len(steps)
    while i < n:
        step = steps[i]
        j = i + 1
        if not isinstance(step, Observation | Error | UnknownStep):
            while j < n and _same_output(step, steps[j]):
                j += 1
        groups.append((i, j))
        i = j
    return groups


def _same_output(first: Step, other: Step) -> bool:
    """Whether two agent steps came from the same model output (or the same non-LLM turn)."""
    if isinstance(other, Observation | Error | UnknownStep):
        return False
    meta, other_meta = first.metadata, other.metadata
    if meta.llm_call_id is not None:
        return other_meta.llm_call_id == meta.llm_call_id
    return (
        other_meta.llm_call_id is None
        and other_meta.agent == meta.agent
        and other_meta.node == meta.node
    )


def _tool_call_steps(node: LLMNode, group: Sequence[Step]) -> list[Step]:
    """The steps of a group that `inverse` renders as tool calls, in order."""
    if node.mode == "json":
        return []
    return [s for s in group if not node._is_content(s)]


def _single_text_field(cls: type[Step]) -> str | None:
    names = [n for n in cls.model_fields if n not in ("kind", "metadata")]
    required = [n for n in names if cls.model_fields[n].is_required()]
    if len(required) == 1 and cls.model_fields[required[0]].annotation is str:
        return required[0]
    return None


def _text_step(cls: type[Step], text: str) -> Step:
    field = _single_text_field(cls)
    assert field is not None
    return cls.model_validate({field: text})


def _text_of(step: Step) -> str:
    field = _single_text_field(type(step))
    assert field is not None
    return str(getattr(step, field))


def _fields_schema(cls: type[Step]) -> dict[str, Any]:
    schema = cls.model_json_schema()
    props = {
        k: {kk: vv for kk, vv in v.items() if kk != "title"}
        for k, v in schema.get("properties", {}).items()
        if k not in ("kind", "metadata")
    }
    result: dict[str, Any] = {"type": "object", "properties": props}
    required = [r for r in schema.get("required", []) if r not in ("kind", "metadata")]
    if required:
        result["required"] = required
    if "$defs" in schema:
        defs = {k: v for k, v in schema["$defs"].items() if k != "StepMetadata"}
        if defs:
            result["$defs"] = defs
    return result


def _example_fields(cls: type[Step]) -> dict[str, Any]:
    return {
        name: (
            field.annotation.__name__
            if isinstance(field.annotation, type)
            else str(field.annotation)
        )
        for name, field in cls.model_fields.items()
        if name not in ("kind", "metadata")
    }
