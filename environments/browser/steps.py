"""Browser step types: what an agent can do in a web page, and what it sees there.

Actions name elements by the references of the latest page snapshot (`e12` for
`[ref=e12]`); a Playwright selector (`css=#login`, `text=Submit`) works too. Every action is
answered by one `PageObservation`: the page after the action, or the reason it failed.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tapeagents.steps import Action, Observation

__all__ = [
    "ACTION_TYPES",
    "BrowserAction",
    "Check",
    "Click",
    "Fill",
    "GoBack",
    "Goto",
    "PageObservation",
    "Press",
    "Scroll",
    "SelectOption",
]


class BrowserAction(Action):
    """An action performed in the browser; answered by one `PageObservation`."""


class Goto(BrowserAction):
    """Open a URL in the current tab."""

    kind: Literal["browser_goto"] = "browser_goto"
    url: str
    """The address to open (only allowed origins can be visited)."""


class Click(BrowserAction):
    """Click an element."""

    kind: Literal["browser_click"] = "browser_click"
    ref: str
    """The element's reference in the page snapshot, like e12."""


class Fill(BrowserAction):
    """Replace the text of an input field or text area."""

    kind: Literal["browser_fill"] = "browser_fill"
    ref: str
    """The field's reference in the page snapshot, like e12."""
    text: str
    """The text to put in the field."""


class SelectOption(BrowserAction):
    """Choose an option of a drop-down list (a select element)."""

    kind: Literal["browser_select"] = "browser_select"
    ref: str
    """The list's reference in the page snapshot, like e12."""
    option: str
    """The label (or value) of the option to choose."""


class Check(BrowserAction):
    """Tick or untick a checkbox or radio button."""

    kind: Literal["browser_check"] = "browser_check"
    ref: str
    """The checkbox's reference in the page snapshot, like e12."""
    checked: bool = True
    """True to tick it, false to untick it."""


class Press(BrowserAction):
    """Press a key or a key combination, like Enter, Tab or Control+A."""

    kind: Literal["browser_press"] = "browser_press"
    key: str
    """The key, in Playwright's notation (Enter, ArrowDown, Control+A)."""
    ref: str | None = None
    """The element to focus first; by default the key goes to the focused element."""


class Scroll(BrowserAction):
    """Scroll the page by most of a screen, or bring an element into view."""

    kind: Literal["browser_scroll"] = "browser_scroll"
    direction: Literal["down", "up"] = "down"
    """Which way to scroll the page."""
    ref: str | None = None
    """An element to scroll into view instead."""


class GoBack(BrowserAction):
    """Go back to the previous page in the tab's history."""

    kind: Literal["browser_back"] = "browser_back"


ACTION_TYPES: tuple[type[BrowserAction], ...] = (
    Goto,
    Click,
    Fill,
    SelectOption,
    Check,
    Press,
    Scroll,
    GoBack,
)
"""Every browser action, in the order agents are offered them."""


class PageObservation(Observation):
    """The page after an action: its accessibility snapshot, address and title, and any error.

    `snapshot` is the page's ARIA tree in YAML with element references (`[ref=e12]`). For a
    task page, `goal` is set on the first observation of an episode and `reward`/`done` once
    the task is scored. `screenshot` (optional) is a `data:image/png;base64,...` URL: an image
    field, which a prompt shows to a model that reads images as an image, and never as text.
    """

    kind: Literal["browser_page"] = "browser_page"
    url: str
    """The page's address."""
    title: str = ""
    """The page's title."""
    snapshot: str = ""
    """The page's accessibility tree with element references, trimmed if very long."""
    error: str | None = None
    """Why the action failed; None when it succeeded."""
    blocked: list[str] = Field(default_factory=list)
    """Requests to origins that are not allowed, blocked since the previous observation."""
    notice: str | None = None
    """Something the agent should know that is not about its action (a browser restart)."""
    goal: str | None = None
    """The task's instruction, on the first observation of a task."""
    reward: float | None = None
    """The task's score, once the task is over."""
    done: bool = False
    """True once the task is over; further actions are refused."""
    screenshot: str | None = None
    """A PNG screenshot as a data URL, when the environment takes screenshots."""
    image_fields: ClassVar[tuple[str, ...]] = ("screenshot",)

    def llm_text(self) -> str:
        """The observation as the model reads it: plain lines, then the page tree."""
        lines = []
        if self.notice:
            lines.append(f"Notice: {self.notice}")
        if self.goal:
            lines.append(f"Task: {self.goal}")
        if self.error:
            lines.append(f"Error: {self.error}")
        if self.blocked:
            lines.append("Blocked requests (origin not allowed): " + ", ".join(self.blocked))
        if self.done:
            lines.append(f"The task is over. Reward: {self.reward}")
        lines.append(f"URL: {self.url}")
        if self.title:
            lines.append(f"Title: {self.title}")
        if self.snapshot:
            lines.append("Page:")
            lines.append(self.snapshot)
        return "\n".join(lines)
