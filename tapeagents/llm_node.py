"""LLMNode: the node that asks a model, and the exact inverse of how it reads the answer.

It renders the tape as chat messages under a system prompt, offers its step types to the model
as tools (or as a JSON format), and parses the answer into steps. `LLMNode.inverse` is the exact
inverse of that parse, so any tape becomes training data (see `tapeagents.export`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from tapeagents.agent import Agent, Node, NodeOutput
from tapeagents.answer_schema import example_fields, fields_schema, steps_response_format
from tapeagents.context import (
    ContextPolicy,
    ElideObservations,
    SummaryNeeded,
    Unit,
    fit_context,
)
from tapeagents.conversation import Conversations, messages, output_groups
from tapeagents.environment import ToolSpec
from tapeagents.errors import LLMError, UsageError
from tapeagents.llms import LLM, LLMCall, LLMOutput, Prompt, ToolCallRequest
from tapeagents.steps import (
    AssistantMessage,
    Call,
    LLMFailure,
    ParsingFailure,
    Reasoning,
    SetNextNode,
    Step,
    Summary,
    ToolCall,
)
from tapeagents.tape import Tape

__all__ = ["LLMNode", "Summarizer", "output_groups"]  # output_groups: from conversation

DEFAULT_POLICY = ElideObservations()
"""What an `LLMNode` does with a prompt too long for its model's window, unless told."""

ANSWER_RESERVE = 1024
"""Tokens kept free for the answer when the backend sets no `max_tokens`."""

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
        text_step: Step type that an answer of plain text becomes (default: `AssistantMessage`
            when allowed).
        thought_step: Step type that text beside tool calls becomes (default: `Reasoning`): the
            model thinking aloud before it acts, so the tools run and the model is asked again.
            Offer it in `steps` too to let the model also call it as a tool.
        tool_choice: In tools mode, OpenAI's `tool_choice` sent with the prompt: "auto" (the
            default), "required" (the answer must call a tool or emit a step type; local models
            are then decoded under a grammar of the offered tools, so the call always parses),
            "none", or one tool's name.
        structured: In JSON mode, send with the prompt a `response_format` JSON schema of
            exactly the answers the node accepts (`response_schema`): a list of the offered
            steps, each written as `inverse` writes it. Local models are then decoded under
            that schema's grammar, so every answer parses; hosted backends get the schema as
            structured output. Off by default: it changes the request (and its id).
        max_answer_steps: With `structured`, the most steps one answer may hold (None: any
            number). A small model may otherwise repeat a step until its token budget ends
            mid-step; 1 or 2 keeps its answers short and complete.
        context: What to do when the prompt would not fit the model's context window (see
            `tapeagents.context`): `ElideObservations()` (the default) replaces old observation
            bodies with markers, `KeepLast(n)` keeps the last n turns, `FailOnOverflow()` sends
            nothing and records an `LLMFailure` naming the sizes, None sends the prompt as it
            is (the provider may refuse it). Prompts that fit are never changed.
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
        thought_step: type[Step] = Reasoning,
        tool_choice: Literal["auto", "required", "none"] | str = "auto",
        structured: bool = False,
        max_answer_steps: int | None = None,
        context: ContextPolicy | None = DEFAULT_POLICY,
    ) -> None:
        super().__init__(name)
        self.system_prompt = system_prompt
        self.llm = llm
        self.mode = mode
        self.tools = list(tools)
        self.tool_names = {tool.name for tool in self.tools}
        self.tool_choice = tool_choice
        if text_step is None and AssistantMessage in steps:
            text_step = AssistantMessage
        if text_step is not None and _single_text_field(text_step) is None:
            raise UsageError(f"text_step {text_step.__name__} must have exactly one str field.")
        if _single_text_field(thought_step) is None:
            raise UsageError(
                f"thought_step {thought_step.__name__} must have exactly one str field."
            )
        self.text_step = text_step
        self.thought_step = thought_step
        self.step_types: dict[str, type[Step]] = {
            cls.model_fields["kind"].default: cls for cls in steps if cls is not text_step
        }
        clash = self.tool_names & set(self.step_types)
        if clash:
            raise UsageError(f"Tools and step kinds share names {sorted(clash)}; rename the tools.")
        choices = {"auto", "required", "none", *self.tool_names, *self.step_types}
        if tool_choice not in choices:
            raise UsageError(
                f"tool_choice {tool_choice!r} is not one of {sorted(choices)}: use 'auto', "
                "'required', 'none' or the name of one of the node's tools or step kinds."
            )
        if structured and mode != "json":
            raise UsageError(
                "structured=True is for mode='json'; in tools mode use tool_choice='required' "
                "to decode local models under a grammar of the tools."
            )
        if max_answer_steps is not None and (not structured or max_answer_steps < 1):
            raise UsageError(
                f"max_answer_steps={max_answer_steps} needs structured=True and at least 1 step."
            )
        self.structured = structured
        self.max_answer_steps = max_answer_steps
        self.context = context
        self._conversations = Conversations(self)
        self._schema_cache: list[dict[str, Any]] | None = None
        self._response_cache: dict[str, Any] | None = None

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
                            "parameters": fields_schema(cls),
                        },
                    }
                )
            self._schema_cache = schemas
        return self._schema_cache

    def json_instructions(self) -> str:
        """The output format explained to a model in JSON mode."""
        formats = [
            json.dumps({"kind": kind, **example_fields(cls)})
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
                        **example_fields(self.text_step),
                    }
                ),
            )
        return (
            "Answer with a JSON list of steps and nothing else. Each step is one of:\n"
            + "\n".join(formats)
        )

    def response_schema(self) -> dict[str, Any]:
        """The JSON-mode answers this node accepts, as an OpenAI `response_format`.

        A non-empty JSON array whose items are the offered step types (`kind` first, then
        every field the step writes, in declaration order, all present) and tool calls
        (`{"kind": "tool_call", "name": ..., "arguments": ...}` with the tool's parameters
        schema): the shape `inverse` writes, so a model decoded under it writes what exported
        training examples show.
        """
        if self._response_cache is None:
            step_types = [self.text_step] if self.text_step else []
            step_types += [cls for cls in self.step_types.values() if cls is not ToolCall]
            if not step_types and not self.tools:
                raise UsageError(
                    f"Node {self.name!r} offers no step types or tools to answer with."
                )
            self._response_cache = steps_response_format(
                step_types, self.tools, max_items=self.max_answer_steps
            )
        return self._response_cache

    def make_prompt(self, agent: Agent, tape: Tape[Any, Any]) -> Prompt:
        """The exact request this node sends for `tape`."""
        llm = agent.llms.get(self.llm)
        images = llm is not None and llm.supports_images
        units = self._conversations.units(tape.id, tape.steps, images=images)
        tools = self.prompt_tools()
        return self.prompt(self.fit(llm, self.system_messages(agent, tape), units, tools), tools)

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Prompt:
        """The request of these messages: with the node's tools, tool choice and format.

        Built without validation or copies: the messages are made by this node.
        """
        return Prompt.model_construct(
            messages=messages,
            tools=tools,
            tool_choice=self._tool_choice(tools),
            response_format=self.response_schema() if self.structured else None,
        )

    def _tool_choice(self, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
        """The prompt's `tool_choice`: None for "auto" (every API's default, and it keeps the
        request, hence its id, as it was before the option existed)."""
        if tools is None or self.tool_choice == "auto":
            return None
        if self.tool_choice in ("required", "none"):
            return self.tool_choice
        return {"type": "function", "function": {"name": self.tool_choice}}

    def system_messages(self, agent: Agent, tape: Tape[Any, Any]) -> list[dict[str, Any]]:
        system = agent.templates.render(
            self.system_prompt, tape=tape, context=tape.context, agent=agent
        )
        if self.mode == "json":
            system = (
                f"{system}\n\n{self.json_instructions()}" if system else self.json_instructions()
            )
        return [{"role": "system", "content": system}] if system else []

    def prompt_tools(self) -> list[dict[str, Any]] | None:
        return self.tool_schemas() if self.mode == "tools" and self.tool_schemas() else None

    def fit(
        self,
        llm: LLM | None,
        system: list[dict[str, Any]],
        units: Sequence[Unit],
        tools: list[dict[str, Any]] | None,
    ) -> list[dict[str, Any]]:
        """The system messages and the conversation, cut to the model's context window by the
        node's `context` policy (whole when the window is unknown or they fit);
        `ContextOverflow` if they cannot be cut to fit."""
        window = llm.context_window if llm is not None else None
        if llm is None or window is None or self.context is None:
            return system + messages(units)
        answer = llm.parameters.get("max_tokens") or llm.parameters.get("max_completion_tokens")
        reserve = int(answer or ANSWER_RESERVE) + llm.count_tokens([], tools)
        count = llm.count_message_tokens
        return fit_context(self.context, system, units, window=window, reserve=reserve, count=count)

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
            if output.tool_calls:  # thinking aloud before acting: the tools run, then it goes on
                steps.append(_text_step(self.thought_step, text))
            elif self.text_step is not None:
                steps.append(_text_step(self.text_step, text))
            else:
                raise _ParseError(
                    "The answer is plain text, but this node expects tool calls: "
                    f"{', '.join(sorted(self.tool_names | set(self.step_types)))}. (Developers: "
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
        if name in self.tool_names:
            if call_id:
                return ToolCall(name=name, arguments=arguments, call_id=call_id)
            return ToolCall(name=name, arguments=arguments)
        cls = self.step_types.get(name)
        if cls is None:
            known = sorted(self.tool_names | set(self.step_types))
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
            items = [self.json_item(step) for step in steps]
            return LLMOutput(
                content=json.dumps(items, ensure_ascii=False, default=to_jsonable_python)
            )
        texts, calls = self.inverse_parts(steps)
        return LLMOutput(
            content="\n\n".join(texts) if texts else None,
            tool_calls=[request for _, request in calls],
        )

    @property
    def own_inverse(self) -> bool:
        """Whether a subclass writes its own `inverse` (its own answer format)."""
        return type(self).inverse is not LLMNode.inverse

    def inverse_parts(
        self, steps: Sequence[Step]
    ) -> tuple[list[str], list[tuple[Step, ToolCallRequest]]]:
        """Tools mode `inverse`: the message texts, and each step written as a tool call."""
        calls = self.call_steps(steps)
        called = {id(step) for step in calls}
        texts = [self.content_text(step) for step in steps if id(step) not in called]
        return texts, [(step, self.tool_request(step)) for step in calls]

    def call_steps(self, steps: Sequence[Step]) -> list[Step]:
        """The steps of one answer that tools-mode `inverse` writes as tool calls, in order:
        all but the text and the thought (a thought alone, which `parse` reads back only from
        a call of its tool, is a call too when the node offers it)."""
        acts = any(not self.is_content(step) for step in steps)
        return [
            step
            for step in steps
            if not self.is_content(step)
            or (type(step) is self.thought_step and not acts and step.kind in self.step_types)
        ]

    def tool_request(self, step: Step) -> ToolCallRequest:
        """The step as the tool call a model writes for it (the model's id when it gave one)."""
        if isinstance(step, ToolCall):
            return ToolCallRequest(
                id=step.call_id,
                name=step.name,
                arguments=json.dumps(step.arguments, ensure_ascii=False),
            )
        return ToolCallRequest(
            id=step.metadata.extra.get("tool_call_id") or f"call_{step.metadata.id[:24]}",
            name=step.kind,
            arguments=json.dumps(step.llm_dict(), ensure_ascii=False, default=to_jsonable_python),
        )

    def json_item(self, step: Step) -> dict[str, Any]:
        """The step as one item of a JSON-mode answer."""
        if isinstance(step, ToolCall):
            return {"kind": "tool_call", "name": step.name, "arguments": step.arguments}
        return {"kind": step.kind, **step.llm_dict()}

    def is_content(self, step: Step) -> bool:
        """Whether the step is answer text in tools mode: the text step or the thought step."""
        return type(step) is self.text_step or type(step) is self.thought_step

    def content_text(self, step: Step) -> str:
        """The text of a step that `is_content`."""
        return _text_of(step)

    def offers(self, step: Step) -> bool:
        """Whether this node's model could write the step: a call of one of its tools, one of
        its step kinds, or (tools mode) its text or thought."""
        if isinstance(step, ToolCall):
            return step.name in self.tool_names
        if step.kind in self.step_types:
            return True
        if self.mode == "json":
            return self.text_step is not None and type(step) is self.text_step
        return self.is_content(step)

    # --------------------------------------------------------------------- run

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        llm = agent.llm(self.llm)
        call: LLMCall | None = None
        try:
            prompt = self.make_prompt(agent, tape)
        except SummaryNeeded as needed:  # the summarizer writes a summary, then hands back
            yield SetNextNode(next_node=needed.node)
            return
        except LLMError as error:  # a prompt that cannot be cut to fit
            yield LLMFailure(error=f"{type(error).__name__}: {error}")
            return
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
            yield step


class Summarizer(LLMNode):
    """The node that `Summarize` hands a conversation to: it writes a `Summary` step of the
    conversation so far (a plain-text answer is the summary), then hands the tape back to the
    node that asked for it. Prompts show the summary in place of the steps before it.

    Add it to the agent's nodes under the name the policy gives (`Summarize(node=...)`); it
    runs only when asked (not in the order of the nodes), and cuts its own prompt with
    `context` (default: `ElideObservations()`).
    """

    in_order = False

    def __init__(
        self,
        name: str = "summarize",
        *,
        system_prompt: str = (
            "Summarize the conversation so far for whoever continues it: the task, what has "
            "been done and found (with the exact facts, names and numbers that matter), and "
            "what remains to do. Answer with the summary only."
        ),
        llm: str = "default",
        context: ContextPolicy | None = DEFAULT_POLICY,
    ) -> None:
        super().__init__(
            name,
            system_prompt=system_prompt,
            steps=[Summary],
            text_step=Summary,
            llm=llm,
            context=context,
        )

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        summarized = False
        async for item in super().generate(agent, tape):
            summarized = summarized or isinstance(item, Summary)
            yield item
        if not summarized:  # a failure: the run stops or asks this node again
            return
        asked = next(
            (
                step.metadata.node
                for step in reversed(tape.steps)
                if isinstance(step, SetNextNode) and step.next_node == self.name
            ),
            None,
        )
        if asked and asked != self.name:
            yield SetNextNode(next_node=asked)


class _ParseError(Exception):
    pass


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
