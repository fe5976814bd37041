"""Tapes show themselves as HTML in Jupyter through a formatter registered from above the tape.

IPython is not a dependency, so these tests drive the registration with a stand-in shell that
has the one thing it touches: `display_formatter.formatters["text/html"].for_type_by_name`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from tapeagents import Tape, UserMessage
from tapeagents.render.notebook import load_ipython_extension, register_notebook_formatter


class HTMLFormatter:
    """IPython's `BaseFormatter` lookup by deferred type name, reduced to what we use."""

    def __init__(self) -> None:
        self.deferred: dict[tuple[str, str], Callable[[Any], str]] = {}

    def for_type_by_name(self, module: str, name: str, func: Callable[[Any], str]) -> None:
        self.deferred[(module, name)] = func

    def __call__(self, obj: Any) -> str | None:
        for cls in type(obj).__mro__:
            func = self.deferred.get((cls.__module__, cls.__name__))
            if func is not None:
                return func(obj)
        return None


def shell() -> Any:
    formatter = HTMLFormatter()
    return SimpleNamespace(display_formatter=SimpleNamespace(formatters={"text/html": formatter}))


def test_a_registered_shell_draws_tapes_as_html() -> None:
    ipython = shell()
    assert register_notebook_formatter(ipython)
    draw = ipython.display_formatter.formatters["text/html"]
    html = draw(Tape(steps=[UserMessage(content="hello <b>there</b>")]))
    assert 'class="ta ta-notebook"' in html and "hello &lt;b&gt;there&lt;/b&gt;" in html
    assert draw("not a tape") is None


def test_load_ext_registers_too() -> None:
    ipython = shell()
    load_ipython_extension(ipython)
    assert ("tapeagents.tape", "Tape") in ipython.display_formatter.formatters["text/html"].deferred


def test_without_a_running_shell_nothing_is_registered() -> None:
    assert "IPython" not in sys.modules  # the test run has no IPython
    assert register_notebook_formatter() is False


def test_import_tapeagents_registers_with_a_running_ipython_and_imports_no_html() -> None:
    """`import tapeagents` under IPython registers the formatter; the HTML code waits for a tape."""
    code = """
import sys, types
registered = []
formatter = types.SimpleNamespace(for_type_by_name=lambda *args: registered.append(args[:2]))
shell = types.SimpleNamespace(display_formatter=types.SimpleNamespace(
    formatters={"text/html": formatter}))
sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: shell)
import tapeagents
print(registered, "tapeagents.render.html" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[('tapeagents.tape', 'Tape')] False"
