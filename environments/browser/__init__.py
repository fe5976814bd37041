"""A web environment on Playwright and a real Chromium, with MiniWoB++ served offline.

Agents read pages as accessibility snapshots with element references and act with clicks,
typing and selections; observations and actions are ordinary steps on the tape.

    from tapeagents.environments.browser import MiniWoBEnvironment, expert_agent

    async with MiniWoBEnvironment() as env:
        tape = await env.run_episode(expert_agent(), "click-button", seed=0)
        print(tape.metadata.outcome, tape.metadata.reward)   # success 1.0

Needs the `browser` extra (Playwright), a system Chromium (`/usr/bin/chromium` or
`$TAPEAGENTS_CHROMIUM`) and, for MiniWoB++, the `miniwob` package (`pip install --no-deps
miniwob`). Playwright is imported only when a browser starts.
"""

from .agents import (
    EXPERT_POLICIES,
    WEB_AGENT_PROMPT,
    ExpertNode,
    GaveUp,
    Policy,
    WebNode,
    expert_agent,
    web_agent,
)
from .environment import CHROMIUM_FLAGS, BrowserEnvironment, find_chromium, origin_of
from .miniwob import (
    MiniWoBEnvironment,
    MiniWoBServer,
    MiniWoBTask,
    miniwob_html_dir,
    miniwob_tasks,
    task_of,
)
from .snapshot import Element, RefMap, parse_snapshot, trim_snapshot
from .steps import (
    ACTION_TYPES,
    BrowserAction,
    Check,
    Click,
    Fill,
    GoBack,
    Goto,
    PageObservation,
    Press,
    Scroll,
    SelectOption,
)

__all__ = [
    "ACTION_TYPES",
    "CHROMIUM_FLAGS",
    "EXPERT_POLICIES",
    "WEB_AGENT_PROMPT",
    "BrowserAction",
    "BrowserEnvironment",
    "Check",
    "Click",
    "Element",
    "ExpertNode",
    "Fill",
    "GaveUp",
    "GoBack",
    "Goto",
    "MiniWoBEnvironment",
    "MiniWoBServer",
    "MiniWoBTask",
    "PageObservation",
    "Policy",
    "Press",
    "RefMap",
    "Scroll",
    "SelectOption",
    "WebNode",
    "expert_agent",
    "find_chromium",
    "miniwob_html_dir",
    "miniwob_tasks",
    "origin_of",
    "parse_snapshot",
    "task_of",
    "trim_snapshot",
    "web_agent",
]
