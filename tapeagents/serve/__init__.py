"""`tapeagents serve`: any `LLM`, the local model first, behind an OpenAI-compatible API.

`create_app(llm, ...)` builds the FastAPI application (`GET /v1/models`,
`POST /v1/chat/completions` with tools, streaming and logprobs); `serving(llm)` runs it in a
background thread; `tapeagents serve` runs it from the command line. Needs the `serve` extra
(FastAPI and uvicorn); importing this package imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapeagents.serve.app import create_app
    from tapeagents.serve.server import serving

__all__ = ["create_app", "serving"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from tapeagents.serve.app import create_app

        return create_app
    if name == "serving":
        from tapeagents.serve.server import serving

        return serving
    raise AttributeError(f"module 'tapeagents.serve' has no attribute {name!r}")
