"""The studio's read-only pages: the tape list, one tape, one LLM call, two tapes compared."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from tapeagents.errors import StoreError
from tapeagents.render.html import call_view, diff_tapes, step_views, tape_totals, url_part
from tapeagents.store import TapeFilter, TapeStore, TapeSummary
from tapeagents.studio.context import Studio, check_id, int_or, shown
from tapeagents.tape import Tape

__all__ = ["CALL_FRAGMENT", "PAGE_SIZES", "TREE_LIMIT", "router"]

PAGE_SIZES = (20, 50, 100, 200)
TREE_LIMIT = 300
"""At most this many tapes of a family are drawn in the lineage tree."""

CALL_FRAGMENT = "x-studio-fragment"
"""The header that marks an LLM call's HTML fragment; the page's script inserts nothing else."""

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def tape_list(request: Request) -> HTMLResponse:
    """The tapes of the store, filtered, newest first, a page at a time."""
    studio = Studio.of(request)
    store = studio.store
    params = request.query_params
    values = {
        key: params.get(key, "").strip()
        for key in ("q", "agent", "status", "tag", "outcome", "since", "until")
    }
    per = int_or(params.get("per"), 50)
    per = per if per in PAGE_SIZES else 50
    problems: list[str] = []
    filters = TapeFilter(
        text=values["q"] or None,
        agent=values["agent"] or None,
        status=values["status"] or None,
        tag=values["tag"] or None,
        outcome=values["outcome"] or None,
        since=_day(values["since"], "from", problems),
        until=_day(values["until"], "to", problems, end_of_day=True),
    )
    wanted = max(1, int_or(params.get("page"), 1))
    # A text search reads every step; counting its results runs beside the listing
    counting = studio.counter.submit(store.count, filters) if filters.text else None
    summaries = store.list(filters, limit=per, offset=(wanted - 1) * per)
    if wanted == 1 and len(summaries) < per:
        total = len(summaries)  # all of them fit on the page: no need to count
    else:
        total = counting.result() if counting else store.count(filters)
    pages = max(1, math.ceil(total / per))
    current = min(wanted, pages)
    if current != wanted:  # past the last page: show the last one
        summaries = store.list(filters, limit=per, offset=(current - 1) * per)

    def link(**changes: Any) -> str:
        merged = {**values, "per": per if per != 50 else "", **changes}
        query = urlencode({k: v for k, v in merged.items() if v not in ("", None, 1)})
        return f"{studio.base(request)}/" + (f"?{query}" if query else "")

    return studio.page(
        request,
        "list.html",
        summaries=summaries,
        total=total,
        page=current,
        pages=pages,
        per=per,
        page_sizes=PAGE_SIZES,
        values=values,
        facets=store.facets(),
        filtered=any(v for v in values.values()),
        problems=problems,
        link=link,
    )


@router.get("/tapes/{tape_id}", response_class=HTMLResponse)
def tape_page(request: Request, tape_id: str) -> Response:
    """One tape: its header, lineage, annotations and every step with its LLM call."""
    studio = Studio.of(request)
    store = studio.store
    full = studio.resolve(tape_id)
    if full != tape_id:
        return RedirectResponse(f"{studio.base(request)}/tapes/{url_part(full)}", status_code=307)
    summary = store.summary(full)
    tape = store.get(full)
    calls = store.llm_calls_of(tape)
    notes = store.annotations(full)
    views = step_views(tape, {c.id: c for c in calls}, notes)
    runs = studio.runs
    return studio.page(
        request,
        "tape.html",
        summary=summary,
        tape=tape,
        views=views,
        opts=studio.opts(request, full),
        totals=tape_totals(calls),
        tape_notes=[n for n in notes if n.step_index is None],
        lineage=_lineage(store, full),
        parent=_maybe_summary(store, summary.parent_id),
        live=runs.active(full) or summary.status == "running",
        ours=runs.active(full),
        lease=store.lease_holder(full) if summary.status == "running" else None,
        run_state=runs.get(full),
        duration=_duration(tape),
    )


@router.get("/tapes/{tape_id}/json")
def tape_json(request: Request, tape_id: str) -> JSONResponse:
    """The tape as a JSON download."""
    studio = Studio.of(request)
    full = studio.resolve(tape_id)
    return JSONResponse(
        studio.store.get(full).model_dump(mode="json"),
        headers={"content-disposition": f'attachment; filename="tape-{_file_part(full)}.json"'},
    )


@router.get("/calls/{call_id}", response_class=HTMLResponse)
def call_page(request: Request, call_id: str) -> HTMLResponse:
    """One LLM call: its exact prompt, tools and output (a fragment with `?fragment=1`)."""
    studio = Studio.of(request)
    check_id(call_id, "LLM call")
    found = studio.store.get_llm_calls([call_id])
    if not found:
        raise HTTPException(404, f"No LLM call {shown(call_id)} in the store.")
    view = call_view(found[0])
    if request.query_params.get("fragment"):
        return HTMLResponse(str(studio.macros.call_body(view)), headers={CALL_FRAGMENT: "call"})
    return studio.page(request, "call.html", cv=view)


@router.get("/diff", response_class=HTMLResponse)
def diff_page(request: Request) -> HTMLResponse:
    """Two tapes side by side, from their first differing step on."""
    studio = Studio.of(request)
    picked = request.query_params.getlist("t")
    left = request.query_params.get("a") or (picked[0] if len(picked) > 0 else "")
    right = request.query_params.get("b") or (picked[1] if len(picked) > 1 else "")
    if not left or not right:
        return studio.page(request, "diff.html", view=None, a=left, b=right, left=None, right=None)
    a, b = studio.resolve(left.strip()), studio.resolve(right.strip())
    store = studio.store
    return studio.page(
        request,
        "diff.html",
        view=diff_tapes(store.get(a), store.get(b)),
        a=a,
        b=b,
        left=store.summary(a),
        right=store.summary(b),
    )


def _day(text: str, name: str, problems: list[str], *, end_of_day: bool = False) -> float | None:
    """A date (or datetime) from a filter field as epoch seconds, local time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"{name!r} date {text!r} is not a date like 2025-01-31; it was ignored.")
        return None
    if end_of_day and len(text) == 10:
        moment += timedelta(days=1)
    return moment.timestamp()


def _file_part(tape_id: str) -> str:
    """The start of the tape id as a file name: letters, digits, `-` and `_` only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", tape_id[:8]) or "tape"


def _maybe_summary(store: TapeStore, tape_id: str | None) -> TapeSummary | None:
    if tape_id is None:
        return None
    try:
        return store.summary(tape_id)
    except StoreError:
        return None


def _lineage(store: TapeStore, tape_id: str) -> list[tuple[int, TapeSummary]]:
    """The tape's family as (depth, summary), depth-first from the oldest ancestor."""
    rows: list[tuple[int, TapeSummary]] = []
    stack = [(0, store.tree(tape_id))]
    while stack and len(rows) < TREE_LIMIT:
        depth, node = stack.pop()
        rows.append((depth, node.tape))
        stack.extend((depth + 1, child) for child in reversed(node.children))
    return rows


def _duration(tape: Tape[Any, Any]) -> float | None:
    if len(tape.steps) < 2:
        return None
    return tape.steps[-1].metadata.created_at - tape.steps[0].metadata.created_at
