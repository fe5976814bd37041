"""A tape's new steps as server-sent events, so an open tape page follows a running agent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from tapeagents.render.html import step_views
from tapeagents.studio.context import Studio, int_or

__all__ = ["HEARTBEAT_S", "POLL_S", "router"]

HEARTBEAT_S = 15.0
POLL_S = 1.0
"""How often a live view looks at the store when no run of this studio signals a change."""

router = APIRouter()


@router.get("/tapes/{tape_id}/events")
async def tape_events(request: Request, tape_id: str) -> StreamingResponse:
    """Steps from index `from` on, each as a rendered step card, then an `end` event."""
    studio = Studio.of(request)
    full = await asyncio.to_thread(studio.resolve, tape_id)
    start = max(0, int_or(request.query_params.get("from"), 0))
    return StreamingResponse(
        _tail(studio, request, full, start),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _tail(studio: Studio, request: Request, tape_id: str, sent: int) -> AsyncIterator[str]:
    """Steps appended to the tape from index `sent` on, as they are stored; then the end."""
    store, runs = studio.store, studio.runs
    beat = time.monotonic()
    while True:
        signal = runs.signal(tape_id)
        # Whether a run is going, asked before the store: a run that ends during the read
        # below is seen as still going, never as ended with a stale status.
        active = runs.active(tape_id)
        summary = await asyncio.to_thread(store.summary, tape_id)
        if summary.length > sent:
            tape = await asyncio.to_thread(store.get, tape_id)
            ids = [s.metadata.llm_call_id for s in tape.steps[sent:] if s.metadata.llm_call_id]
            calls = await asyncio.to_thread(store.get_llm_calls, ids)
            views = step_views(tape, {c.id: c for c in calls}, start=sent)
            for view in views:
                html = str(studio.macros.step_card(view, studio.opts(request, tape_id)))
                yield _event("step", {"index": view.index, "html": html})
            sent = len(tape.steps)
            beat = time.monotonic()
        state = runs.get(tape_id)
        if not active and (state is not None or summary.status != "running"):
            error = state.error if state is not None else None
            yield _event("end", {"status": summary.status, "steps": sent, "error": error})
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - beat > HEARTBEAT_S:
            beat = time.monotonic()
            yield ": still running\n\n"
        try:
            await asyncio.wait_for(signal.wait(), POLL_S)
        except TimeoutError:
            pass


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
