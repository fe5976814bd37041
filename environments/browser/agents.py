"""Agents for the browser: an LLM web agent, and scripted expert policies for MiniWoB++.

`web_agent(llm)` is an `LLMNode` offered the browser actions and `FinalAnswer` as tools; it
reads each page as its accessibility snapshot, and as a screenshot when the environment takes
them and the model reads images (older snapshots and screenshots are left out of the prompt to
keep it short). `expert_agent()` solves the MiniWoB++ tasks of `EXPERT_POLICIES` with
hand-written rules that read the same snapshots; its tapes are ordinary tapes, usable as
demonstrations for fine-tuning the web agent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from tapeagents.agent import Agent, Node, NodeOutput
from tapeagents.errors import UsageError
from tapeagents.llm_node import LLMNode
from tapeagents.llms import LLM
from tapeagents.steps import FinalAnswer
from tapeagents.tape import Tape

from .miniwob import task_of
from .snapshot import Element, parse_snapshot
from .steps import (
    ACTION_TYPES,
    BrowserAction,
    Check,
    Click,
    Fill,
    PageObservation,
    SelectOption,
)

__all__ = [
    "EXPERT_POLICIES",
    "WEB_AGENT_PROMPT",
    "ExpertNode",
    "GaveUp",
    "Policy",
    "WebNode",
    "expert_agent",
    "web_agent",
]

WEB_AGENT_PROMPT = """\
You control a web browser to complete a task. After each action you see the page as an \
accessibility tree: one element per line, with its role, its name and a reference like \
[ref=e12]. Act on elements by their reference from the latest page. If an element you need \
has no reference, give a Playwright selector instead, such as text="Submit". Do one or a few \
actions at a time and check the page after them.{% if context and context.goal %}

Task: {{ context.goal }}{% endif %}

When the task is done (or the page says it is over), call final_answer with a short answer."""

_ELIDED = "(an older page snapshot, left out; see the latest one)"


def _last_page(tape: Tape[Any, Any]) -> PageObservation | None:
    for step in reversed(tape.steps):
        if isinstance(step, PageObservation):
            return step
    return None


def _finished(page: PageObservation) -> FinalAnswer:
    return FinalAnswer(answer=f"The task is over (reward {page.reward}).")


class WebNode(LLMNode):
    """An `LLMNode` for web pages: shows only the latest snapshots and stops when a task ends.

    Screenshots (`BrowserEnvironment(screenshots=True)`) reach a model that reads images
    (`LLM.supports_images`) as image parts; other models see a note in their place.

    Args:
        name: The node's name.
        keep_snapshots: How many of the most recent page snapshots the prompt shows in full.
        keep_screenshots: How many of the most recent screenshots the prompt shows (each costs
            a model hundreds of tokens).
        **options: `LLMNode` options (`system_prompt`, `mode`, `llm`, ...).
    """

    def __init__(
        self,
        name: str = "act",
        *,
        keep_snapshots: int = 1,
        keep_screenshots: int = 1,
        **options: Any,
    ) -> None:
        options.setdefault("system_prompt", WEB_AGENT_PROMPT)
        options.setdefault("steps", (*ACTION_TYPES, FinalAnswer))
        super().__init__(name, **options)
        self.keep_snapshots = keep_snapshots
        self.keep_screenshots = keep_screenshots

    def make_prompt(self, agent: Agent, tape: Tape[Any, Any]) -> Any:
        return super().make_prompt(agent, self._elide(tape))

    def _elide(self, tape: Tape[Any, Any]) -> Tape[Any, Any]:
        """A view of the tape whose older page observations have no snapshot or screenshot."""
        pages = [i for i, step in enumerate(tape.steps) if isinstance(step, PageObservation)]
        old_snapshots = set(pages[: max(0, len(pages) - self.keep_snapshots)])
        shots = [i for i in pages if getattr(tape.steps[i], "screenshot", None)]
        old_shots = set(shots[: max(0, len(shots) - self.keep_screenshots)])
        if not old_snapshots and not old_shots:
            return tape
        steps = list(tape.steps)
        for i in old_snapshots | old_shots:
            update: dict[str, Any] = {}
            if i in old_snapshots:
                update["snapshot"] = _ELIDED
            if i in old_shots:
                update["screenshot"] = None
            steps[i] = steps[i].model_copy(update=update)
        return tape.model_copy(update={"steps": steps})

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        page = _last_page(tape)
        if page is not None and page.done:
            yield _finished(page)  # the environment scored the task: nothing to ask the model
            return
        async for item in super().generate(agent, tape):
            yield item


def web_agent(
    llm: LLM | str = "local",
    *,
    name: str = "web-agent",
    mode: str = "tools",
    keep_snapshots: int = 1,
    keep_screenshots: int = 1,
) -> Agent:
    """An LLM agent that browses: one `WebNode` with the browser actions as tools.

    Args:
        llm: The model (an `LLM`, or a model string such as "local" or "litellm:gpt-4o-mini").
        name: The agent's name.
        mode: "tools" (native tool calls) or "json" (a JSON list of steps in the answer text).
        keep_snapshots: How many recent page snapshots the prompt shows in full.
        keep_screenshots: How many recent screenshots the prompt shows to a model that reads
            images (the environment takes them with `screenshots=True`).
    """
    node = WebNode(
        keep_snapshots=keep_snapshots,
        keep_screenshots=keep_screenshots,
        mode=mode,  # type: ignore[arg-type]
    )
    return Agent(name, nodes=[node], llms=llm)


# ----------------------------------------------------------------------------- experts

Policy = Callable[[str, Element], list[BrowserAction]]
"""An expert policy: (the task's instruction, the parsed latest page) -> the next actions."""


class ExpertNode(Node):
    """Acts with the scripted policy of the tape's MiniWoB++ task; stops once it is scored."""

    def __init__(self, name: str = "act", *, policies: Mapping[str, Policy] | None = None) -> None:
        super().__init__(name)
        self.policies = dict(EXPERT_POLICIES if policies is None else policies)

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        page = _last_page(tape)
        if page is None:
            raise UsageError("The expert needs a page: start the tape with env.start_episode().")
        if page.done:
            yield _finished(page)
            return
        failed = _failure_since_last_turn(tape)
        if failed is not None:  # the policy is deterministic: the same actions would fail again
            yield FinalAnswer(answer=f"The expert policy gave up: {failed}")
            return
        task = task_of(tape)
        policy = self.policies.get(task.task)
        if policy is None:
            known = ", ".join(sorted(self.policies))
            raise UsageError(f"No expert policy for task {task.task!r}; there are: {known}.")
        try:
            actions = policy(task.goal, parse_snapshot(page.snapshot))
        except GaveUp as reason:
            yield FinalAnswer(answer=f"The expert policy gave up: {reason}")
            return
        if not actions:
            yield FinalAnswer(answer="The expert policy found nothing to do on this page.")
            return
        for action in actions:
            yield action


def _failure_since_last_turn(tape: Tape[Any, Any]) -> str | None:
    """The error of an observation after the agent's last step, if any."""
    for step in reversed(tape.steps):
        if not isinstance(step, PageObservation):
            return None
        if step.error:
            return step.error
    return None


def expert_agent(
    name: str = "miniwob-expert", *, policies: Mapping[str, Policy] | None = None
) -> Agent:
    """A scripted agent that solves the MiniWoB++ tasks it has policies for."""
    return Agent(name, nodes=[ExpertNode(policies=policies)])


class GaveUp(Exception):
    """A policy met an instruction or a page it does not handle."""


# The policies read only the instruction and the snapshot, as a model would. Each returns the
# actions for the current page; multi-page tasks (tabs, accordions) take one turn per page.


def _quoted(goal: str, index: int = 0) -> str:
    found = re.findall(r'"([^"]*)"', goal)
    if len(found) <= index:
        raise GaveUp(f"Expected a quoted value in the instruction {goal!r}.")
    return found[index]


def _find(page: Element, role: str, name: str | None = None) -> list[Element]:
    return [
        e
        for e in page.walk()
        if e.role == role and e.ref is not None and (name is None or e.name == name)
    ]


def _ref(page: Element, role: str, name: str | None = None, index: int = 0) -> str:
    found = _find(page, role, name)
    if len(found) <= index:
        raise GaveUp(f"No {role} {name or ''} #{index} on the page.")
    assert found[index].ref is not None
    return found[index].ref


def _click_named(role: str) -> Policy:
    return lambda goal, page: [Click(ref=_ref(page, role, _quoted(goal)))]


def _click_link(goal: str, page: Element) -> list[BrowserAction]:
    # MiniWoB's "links" are plain spans without a role, so they have no reference: use text.
    return [Click(ref=f"#area span.alink >> text={_js_string(_quoted(goal))} >> nth=0")]


def _js_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selection(goal: str) -> list[str]:
    match = re.match(r"Select (.*) and click Submit\.", goal)
    if not match:
        raise GaveUp(f"Unexpected instruction {goal!r}.")
    names = match.group(1)
    return [] if names == "nothing" else names.split(", ")


def _click_checkboxes(goal: str, page: Element) -> list[BrowserAction]:
    wanted = set(_selection(goal))
    actions: list[BrowserAction] = [
        Check(ref=box.ref, checked=box.name in wanted)
        for box in _find(page, "checkbox")
        if box.ref is not None and ("checked" in box.attributes) != (box.name in wanted)
    ]
    return [*actions, Click(ref=_ref(page, "button", "Submit"))]


def _click_option(goal: str, page: Element) -> list[BrowserAction]:
    (wanted,) = _selection(goal)
    return [Check(ref=_ref(page, "radio", wanted)), Click(ref=_ref(page, "button", "Submit"))]


def _choose_list(goal: str, page: Element) -> list[BrowserAction]:
    match = re.match(r"Select (.*) from the list and click Submit\.", goal)
    if not match:
        raise GaveUp(f"Unexpected instruction {goal!r}.")
    return [
        SelectOption(ref=_ref(page, "combobox"), option=match.group(1)),
        Click(ref=_ref(page, "button", "Submit")),
    ]


def _enter_text(goal: str, page: Element) -> list[BrowserAction]:
    text = _quoted(goal)
    if "upper case" in goal:
        text = text.upper()
    elif "lower case" in goal:
        text = text.lower()
    return [Fill(ref=_ref(page, "textbox"), text=text), Click(ref=_ref(page, "button", "Submit"))]


def _enter_password(goal: str, page: Element) -> list[BrowserAction]:
    password = _quoted(goal)
    return [
        Fill(ref=_ref(page, "textbox", index=0), text=password),
        Fill(ref=_ref(page, "textbox", index=1), text=password),
        Click(ref=_ref(page, "button", "Submit")),
    ]


def _login_user(goal: str, page: Element) -> list[BrowserAction]:
    return [
        Fill(ref=_ref(page, "textbox", index=0), text=_quoted(goal, 0)),
        Fill(ref=_ref(page, "textbox", index=1), text=_quoted(goal, 1)),
        Click(ref=_ref(page, "button", "Login")),
    ]


def _focus_text(goal: str, page: Element) -> list[BrowserAction]:
    match = re.search(r"(\d)(?:st|nd|rd|th) input", goal)
    index = int(match.group(1)) - 1 if match else 0
    return [Click(ref=_ref(page, "textbox", index=index))]


def _click_button_sequence(goal: str, page: Element) -> list[BrowserAction]:
    return [Click(ref=_ref(page, "button", "ONE")), Click(ref=_ref(page, "button", "TWO"))]


def _click_test_2(goal: str, page: Element) -> list[BrowserAction]:
    match = re.search(r"Click button (\w+)\.", goal)
    if not match:
        raise GaveUp(f"Unexpected instruction {goal!r}.")
    return [Click(ref=_ref(page, "button", match.group(1)))]


def _click_dialog_2(goal: str, page: Element) -> list[BrowserAction]:
    label = _quoted(goal)
    return [Click(ref=_ref(page, "button", "Close" if label == "x" else label))]


def _click_tab(goal: str, page: Element) -> list[BrowserAction]:
    match = re.search(r"Tab #(\d+)", goal)
    if not match:
        raise GaveUp(f"Unexpected instruction {goal!r}.")
    return [Click(ref=_ref(page, "link", f"Tab #{match.group(1)}"))]


def _click_collapsible(goal: str, page: Element) -> list[BrowserAction]:
    sections = [tab for tab in _find(page, "tab") if tab.name.startswith("Section")]
    if sections and "expanded" not in sections[0].attributes:
        assert sections[0].ref is not None
        return [Click(ref=sections[0].ref)]
    return [Click(ref=_ref(page, "button", "Submit"))]


EXPERT_POLICIES: dict[str, Policy] = {
    "choose-list": _choose_list,
    "click-button": _click_named("button"),
    "click-button-sequence": _click_button_sequence,
    "click-checkboxes": _click_checkboxes,
    "click-collapsible": _click_collapsible,
    "click-dialog": lambda goal, page: [Click(ref=_ref(page, "button", "Close"))],
    "click-dialog-2": _click_dialog_2,
    "click-link": _click_link,
    "click-option": _click_option,
    "click-tab": _click_tab,
    "click-test": lambda goal, page: [Click(ref=_ref(page, "button"))],
    "click-test-2": _click_test_2,
    "enter-password": _enter_password,
    "enter-text": _enter_text,
    "enter-text-2": _enter_text,
    "focus-text": _focus_text,
    "focus-text-2": _focus_text,
    "login-user": _login_user,
}
"""Scripted policies by MiniWoB++ task name."""
