"""Tapes that show themselves as HTML in Jupyter, registered from above the tape.

`Tape` (layer 1) knows nothing of HTML. When IPython is running, `import tapeagents` calls
`register_notebook_formatter`, which teaches IPython's `text/html` formatter to draw a `Tape`
(and its subclasses) with `render.html.tape_html`. The formatter is registered by the class's
module and name and imports jinja2 on the first tape it draws, so nothing HTML is imported
until a notebook shows a tape. In a shell that imported tapeagents before IPython, run
`%load_ext tapeagents.render.notebook`.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["load_ipython_extension", "register_notebook_formatter", "tape_to_html"]


def tape_to_html(tape: Any) -> str:
    """The tape as self-contained HTML (what a notebook shows for a tape)."""
    from tapeagents.render.html import tape_html

    return tape_html(tape)


def register_notebook_formatter(shell: Any | None = None) -> bool:
    """Make IPython draw tapes as HTML; True when a shell was found and the formatter registered.

    Args:
        shell: An IPython `InteractiveShell`; by default the running one, if IPython is already
            imported (this never imports IPython itself).
    """
    if shell is None:
        ipython = sys.modules.get("IPython")
        get_ipython = getattr(ipython, "get_ipython", None)
        shell = get_ipython() if get_ipython is not None else None
    if shell is None:
        return False
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type_by_name("tapeagents.tape", "Tape", tape_to_html)
    return True


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext tapeagents.render.notebook`: draw tapes as HTML in this shell."""
    register_notebook_formatter(ipython)
