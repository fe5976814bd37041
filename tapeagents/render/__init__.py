"""Rendering tapes for people: `render.text` for the terminal, `render.html` for the studio and
notebooks, both deciding how a step looks through `render.classify`.

    from tapeagents.render import print_tape, tape_html

`print_tape` imports rich and `tape_html` jinja2 only when first used, so importing this package
costs nothing; `render.notebook` makes a tape show itself as HTML in Jupyter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapeagents.render.html import tape_html
    from tapeagents.render.text import print_tape

__all__ = ["print_tape", "tape_html"]


def __getattr__(name: str) -> Any:
    if name == "print_tape":
        from tapeagents.render.text import print_tape

        return print_tape
    if name == "tape_html":
        from tapeagents.render.html import tape_html

        return tape_html
    raise AttributeError(f"module 'tapeagents.render' has no attribute {name!r}")
