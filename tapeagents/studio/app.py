"""The studio's web application: server-rendered pages over a `TapeStore` (FastAPI + jinja2).

Pages (`browse`): the tape list (`/`), a tape (`/tapes/{id}`), one LLM call (`/calls/{id}`) and
the comparison of two tapes (`/diff?a=..&b=..`). Changes (`changes`) are POSTs of plain forms
(fork, edit, resume, annotate), guarded as `security` explains; a running agent's new steps
reach the tape page as server-sent events (`live`, `/tapes/{id}/events`).

    from tapeagents.store import TapeStore
    from tapeagents.studio import create_app

    app = create_app(TapeStore("tapes.db"), agents={"calc": "my_agents:calc_agent"})
    # uvicorn.run(app, host="127.0.0.1", port=8765)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"The studio needs FastAPI and uvicorn ({error}); install them with "
        "pip install 'tapeagents[studio]'."
    ) from None

from tapeagents.errors import TapeAgentsError
from tapeagents.render.html import STATIC
from tapeagents.store import TapeStore
from tapeagents.studio import browse, changes, live
from tapeagents.studio.context import Studio
from tapeagents.studio.runs import Runs
from tapeagents.studio.security import Guard

__all__ = ["create_app"]

STUDIO_STATIC = Path(__file__).parent / "static"
"""The studio's own stylesheet, script and icon (the step view's stylesheet is `render`'s)."""


def create_app(
    store: TapeStore,
    *,
    agents: Mapping[str, str] | None = None,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> FastAPI:
    """The studio application over `store`.

    Args:
        store: The tape store to browse and change.
        agents: Names shown in the studio mapped to agents as `package.module:attribute` (an
            `Agent`, or a no-argument function returning one or `(agent, environment)`); these
            are the agents a tape can be resumed with.
        token: An access token every request must carry (see `tapeagents.studio.security`);
            None for a studio that only listens on 127.0.0.1.
        allowed_hosts: Host names the studio answers to; by default loopback names only when
            there is no token, any name when there is one.

    Returns:
        A FastAPI application; serve it with uvicorn (`tapeagents studio` does).
    """
    runs = Runs(store, agents or {})
    counter = ThreadPoolExecutor(max_workers=2, thread_name_prefix="studio-count")
    studio = Studio(store=store, runs=runs, counter=counter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await runs.aclose()
        counter.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="tapeagents studio",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.studio = studio

    # the step view's stylesheet first: the mount at /static would answer for it otherwise
    app.mount("/static/view", StaticFiles(directory=STATIC), name="view-static")
    app.mount("/static", StaticFiles(directory=STUDIO_STATIC), name="static")
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    for module in (browse, live, changes):
        app.include_router(module.router)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if request.query_params.get("fragment") or request.url.path.endswith("/events"):
            return Response(str(error.detail), error.status_code, media_type="text/plain")
        return studio.page(
            request,
            "error.html",
            status=error.status_code,
            code=error.status_code,
            message=str(error.detail),
        )

    @app.exception_handler(TapeAgentsError)
    async def tapeagents_error(request: Request, error: TapeAgentsError) -> Response:
        return studio.page(request, "error.html", status=400, code=400, message=str(error))

    return app
