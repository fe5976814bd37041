"""The studio: a local web app to browse, step through, fork, edit, resume and compare tapes.

`create_app(store, agents=..., token=...)` builds the FastAPI application (extra `studio`);
`tapeagents studio` serves it. The step view it shows is `tapeagents.render.html` (jinja2 only,
also what notebooks show), so importing this package imports no web framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapeagents.studio.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from tapeagents.studio.app import create_app

        return create_app
    raise AttributeError(f"module 'tapeagents.studio' has no attribute {name!r}")
