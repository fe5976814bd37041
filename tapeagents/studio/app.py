"""The studio's web application: server-rendered pages over a `TapeStore` (FastAPI + jinja2).

Pages: the tape list (`/`), a tape (`/tapes/{id}`), one LLM call (`/calls/{id}`), the edit form
of a step (`/tapes/{id}/steps/{i}/edit`) and the comparison of two tapes (`/diff?a=..&b=..`).
Changes are POSTs of plain forms (fork, edit, resume, annotate), guarded as `security` explains;
a running agent's new steps reach the tape page as server-sent events (`/tapes/{id}/events`).

    from tapeagents.store import TapeStore
    from tapeagents.studio import create_app

    app = create_app(TapeStore("tapes.db"), agents={"calc": "my_agents:calc_agent"})
    # uvicorn.run(app, host="127.0.0.1", port=8765)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException
    from starlette.responses import StreamingResponse
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"The studio needs FastAPI and uvicorn ({error}); install them with "
        "pip install 'tapeagents[studio]'."
    ) from None

from pydantic import ValidationError

from tapeagents.errors import StoreError, TapeAgentsError, UsageError
from tapeagents.steps import Step, StepMetadata, UnknownStep, step_kinds
from tapeagents.store import TapeStore, TapeSummary
from tapeagents.studio.render import (
    HERE,
    call_view,
    diff_tapes,
    environment,
    step_views,
    tape_totals,
)
from tapeagents.studio.runs import Runs
from tapeagents.studio.security import Guard
from tapeagents.tape import Tape

__all__ = ["create_app"]

PAGE_SIZES = (20, 50, 100, 200)
MAX_FORM_BYTES = 5_000_000
TREE_LIMIT = 300
"""At most this many tapes of a family are drawn in the lineage tree."""
HEARTBEAT_S = 15.0
POLL_S = 1.0
"""How often a live view looks at the store when no run of this studio signals a change."""


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
    app.state.store = store
    app.state.runs = runs
    csrf = secrets.token_urlsafe(24)
    flashes: dict[str, tuple[str, str]] = {}
    templates = environment()
    macros = templates.get_template("_macros.html").module

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)

    # ------------------------------------------------------------------ helpers

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        flash = flashes.pop(request.query_params.get("flash", ""), None)
        html = templates.get_template(name).render(
            base=base(request),
            csrf=csrf,
            store_url=store.display_url,
            agent_names=list(runs.agents),
            flash=flash,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def redirect(request: Request, url: str, message: str | None = None, level: str = "ok") -> Any:
        target = base(request) + url
        if message:
            key = secrets.token_urlsafe(8)
            if len(flashes) > 200:  # messages never read (a closed tab) must not pile up
                flashes.pop(next(iter(flashes)))
            flashes[key] = (level, message)
            path, _, anchor = target.partition("#")
            target = path + ("&" if "?" in path else "?") + f"flash={key}"
            target += f"#{anchor}" if anchor else ""
        return RedirectResponse(target, status_code=303)

    async def read_form(request: Request) -> dict[str, str]:
        """The posted form (url-encoded), after checking the CSRF token."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind not in ("", "application/x-www-form-urlencoded"):
            raise HTTPException(415, "Post the studio's forms url-encoded, as its pages do.")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "The form is too large (over 5 MB).")
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        offered = form.get("csrf") or request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(offered.encode(), csrf.encode()):
            raise HTTPException(
                403, "The form's security token is missing or stale: reload the page and retry."
            )
        return form

    def resolve(tape_id: str) -> str:
        try:
            return store.resolve_id(tape_id)
        except StoreError as error:
            raise HTTPException(404, str(error)) from None

    def opts(request: Request, tape_id: str) -> dict[str, Any]:
        return {"interactive": True, "base": base(request), "tape_id": tape_id, "csrf": csrf}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if request.query_params.get("fragment") or request.url.path.endswith("/events"):
            return Response(str(error.detail), error.status_code, media_type="text/plain")
        return page(
            request,
            "error.html",
            status=error.status_code,
            code=error.status_code,
            message=str(error.detail),
        )

    @app.exception_handler(TapeAgentsError)
    async def tapeagents_error(request: Request, error: TapeAgentsError) -> Response:
        return page(request, "error.html", status=400, code=400, message=str(error))

    # ------------------------------------------------------------------ the tape list

    @app.get("/", response_class=HTMLResponse)
    def tape_list(request: Request) -> HTMLResponse:
        params = request.query_params
        values = {
            key: params.get(key, "").strip()
            for key in ("q", "agent", "status", "tag", "outcome", "since", "until")
        }
        per = _int(params.get("per"), 50)
        per = per if per in PAGE_SIZES else 50
        problems: list[str] = []
        filters: dict[str, Any] = {
            "text": values["q"] or None,
            "agent": values["agent"] or None,
            "status": values["status"] or None,
            "tag": values["tag"] or None,
            "outcome": values["outcome"] or None,
            "since": _day(values["since"], "from", problems),
            "until": _day(values["until"], "to", problems, end_of_day=True),
        }
        wanted = max(1, _int(params.get("page"), 1))
        # A text search reads every step; counting its results runs beside the listing
        counting = counter.submit(store.count, **filters) if filters["text"] else None
        summaries = store.list(**filters, limit=per, offset=(wanted - 1) * per)
        if wanted == 1 and len(summaries) < per:
            total = len(summaries)  # all of them fit on the page: no need to count
        else:
            total = counting.result() if counting else store.count(**filters)
        pages = max(1, math.ceil(total / per))
        current = min(wanted, pages)
        if current != wanted:  # past the last page: show the last one
            summaries = store.list(**filters, limit=per, offset=(current - 1) * per)

        def link(**changes: Any) -> str:
            merged = {**values, "per": per if per != 50 else "", **changes}
            query = urlencode({k: v for k, v in merged.items() if v not in ("", None, 1)})
            return f"{base(request)}/" + (f"?{query}" if query else "")

        return page(
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

    # ------------------------------------------------------------------ one tape

    @app.get("/tapes/{tape_id}", response_class=HTMLResponse)
    def tape_page(request: Request, tape_id: str) -> Response:
        full = resolve(tape_id)
        if full != tape_id:
            return RedirectResponse(f"{base(request)}/tapes/{full}", status_code=307)
        summary = store.summary(full)
        tape = store.get(full)
        calls = store.llm_calls_of(tape)
        notes = store.annotations(full)
        views = step_views(tape, {c.id: c for c in calls}, notes)
        live = runs.active(full) or summary.status == "running"
        state = runs.get(full)
        return page(
            request,
            "tape.html",
            summary=summary,
            tape=tape,
            views=views,
            opts=opts(request, full),
            totals=tape_totals(calls),
            tape_notes=[n for n in notes if n.step_index is None],
            lineage=_lineage(store, full),
            parent=_maybe_summary(store, summary.parent_id),
            live=live,
            ours=runs.active(full),
            run_state=state,
            duration=_duration(tape),
        )

    @app.get("/tapes/{tape_id}/json")
    def tape_json(tape_id: str) -> JSONResponse:
        full = resolve(tape_id)
        return JSONResponse(
            store.get(full).model_dump(mode="json"),
            headers={"content-disposition": f'attachment; filename="tape-{full[:8]}.json"'},
        )

    @app.get("/calls/{call_id}", response_class=HTMLResponse)
    def call_page(request: Request, call_id: str) -> HTMLResponse:
        found = store.get_llm_calls([call_id])
        if not found:
            raise HTTPException(404, f"No LLM call {call_id!r} in the store.")
        view = call_view(found[0])
        if request.query_params.get("fragment"):
            return HTMLResponse(str(macros.call_body(view)))
        return page(request, "call.html", cv=view)

    @app.get("/tapes/{tape_id}/events")
    async def tape_events(request: Request, tape_id: str) -> StreamingResponse:
        full = await asyncio.to_thread(resolve, tape_id)
        start = max(0, _int(request.query_params.get("from"), 0))
        return StreamingResponse(
            _tail(request, full, start),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _tail(request: Request, tape_id: str, sent: int) -> AsyncIterator[str]:
        """Steps appended to the tape from index `sent` on, as they are stored; then the end."""
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
                    html = str(macros.step_card(view, opts(request, tape_id)))
                    yield _sse("step", {"index": view.index, "html": html})
                sent = len(tape.steps)
                beat = time.monotonic()
            state = runs.get(tape_id)
            if not active and (state is not None or summary.status != "running"):
                yield _sse(
                    "end",
                    {
                        "status": summary.status,
                        "steps": sent,
                        "error": state.error if state is not None else None,
                    },
                )
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

    # ------------------------------------------------------------------ changes

    @app.post("/tapes/{tape_id}/fork")
    async def fork(request: Request, tape_id: str) -> Response:
        form = await read_form(request)
        full = await asyncio.to_thread(resolve, tape_id)
        at = _int(form.get("at"), -1)
        child = await asyncio.to_thread(store.fork, full, at, author="studio")
        return redirect(
            request,
            f"/tapes/{child.id}",
            f"Forked tape {full[:8]} at step {at}: this is the new tape {child.id[:8]}, with "
            f"{at} step{'' if at == 1 else 's'}.",
        )

    @app.get("/tapes/{tape_id}/steps/{index}/edit", response_class=HTMLResponse)
    def edit_page(request: Request, tape_id: str, index: int) -> HTMLResponse:
        full = resolve(tape_id)
        tape = store.get(full)
        step = _step_at(tape, index)
        text = json.dumps(_editable(step), ensure_ascii=False, indent=2)
        return page(request, "edit.html", **_edit_context(full, index, step, text, None))

    @app.post("/tapes/{tape_id}/steps/{index}/edit", response_class=HTMLResponse)
    async def edit(request: Request, tape_id: str, index: int) -> Response:
        form = await read_form(request)
        full = await asyncio.to_thread(resolve, tape_id)
        tape = await asyncio.to_thread(store.get, full)
        original = _step_at(tape, index)
        text = form.get("step", "")
        try:
            edited = parse_edit(original, text)
        except UsageError as error:
            context = _edit_context(full, index, original, text, str(error))
            return page(request, "edit.html", status=400, **context)
        child = await asyncio.to_thread(
            store.fork, tape, index + 1, edits={index: edited}, author="studio"
        )
        return redirect(
            request,
            f"/tapes/{child.id}#step-{index}",
            f"Saved the edit as a new tape {child.id[:8]}: steps 0 to {index} of "
            f"{full[:8]}, with step {index} edited. Resume it to continue from there.",
        )

    @app.post("/tapes/{tape_id}/resume")
    async def resume(request: Request, tape_id: str) -> Response:
        form = await read_form(request)
        full = await asyncio.to_thread(resolve, tape_id)
        max_steps = min(max(1, _int(form.get("max_steps"), 50)), 1000)
        try:
            await runs.start(
                full,
                form.get("agent", ""),
                message=form.get("message", "").strip() or None,
                max_steps=max_steps,
            )
        except TapeAgentsError as error:
            return redirect(request, f"/tapes/{full}", str(error), level="error")
        return redirect(request, f"/tapes/{full}#live")

    @app.post("/tapes/{tape_id}/annotations")
    async def annotate(request: Request, tape_id: str) -> Response:
        form = await read_form(request)
        full = await asyncio.to_thread(resolve, tape_id)
        step = _int(form.get("step"), None) if form.get("step", "") != "" else None
        rating_text = form.get("rating", "").strip()
        try:
            rating = float(rating_text) if rating_text else None
        except ValueError:
            rating = None
        anchor = f"#step-{step}" if step is not None else "#notes"
        try:
            await asyncio.to_thread(
                store.annotate,
                full,
                step,
                rating=rating,
                label=form.get("label", "").strip() or None,
                comment=form.get("comment", "").strip() or None,
                author="studio",
            )
        except TapeAgentsError as error:
            return redirect(request, f"/tapes/{full}{anchor}", str(error), level="error")
        return redirect(request, f"/tapes/{full}{anchor}")

    @app.post("/annotations/{annotation_id}/delete")
    async def delete_annotation(request: Request, annotation_id: str) -> Response:
        form = await read_form(request)
        full = await asyncio.to_thread(resolve, form.get("tape", ""))
        await asyncio.to_thread(store.delete_annotation, annotation_id)
        return redirect(request, f"/tapes/{full}", "Annotation deleted.")

    # ------------------------------------------------------------------ comparing

    @app.get("/diff", response_class=HTMLResponse)
    def diff_page(request: Request) -> HTMLResponse:
        picked = request.query_params.getlist("t")
        left = request.query_params.get("a") or (picked[0] if len(picked) > 0 else "")
        right = request.query_params.get("b") or (picked[1] if len(picked) > 1 else "")
        if not left or not right:
            return page(request, "diff.html", view=None, a=left, b=right, left=None, right=None)
        a, b = resolve(left.strip()), resolve(right.strip())
        view = diff_tapes(store.get(a), store.get(b))
        return page(
            request,
            "diff.html",
            view=view,
            a=a,
            b=b,
            left=store.summary(a),
            right=store.summary(b),
        )

    return app


# ----------------------------------------------------------------------------- pure helpers


def _int(value: Any, default: Any) -> Any:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


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


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


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
    tree = store.tree(tape_id)
    stack = [(0, tree)]
    while stack and len(rows) < TREE_LIMIT:
        depth, node = stack.pop()
        rows.append((depth, node.tape))
        stack.extend((depth + 1, child) for child in reversed(node.children))
    return rows


def _duration(tape: Tape[Any, Any]) -> float | None:
    if len(tape.steps) < 2:
        return None
    return tape.steps[-1].metadata.created_at - tape.steps[0].metadata.created_at


def _step_at(tape: Tape[Any, Any], index: int) -> Step:
    if not 0 <= index < len(tape.steps):
        raise HTTPException(
            404, f"Tape {tape.id[:8]} has {len(tape.steps)} steps, no step {index}."
        )
    return tape.steps[index]


def _editable(step: Step) -> dict[str, Any]:
    """What the edit form shows of a step: its kind and fields, not its metadata."""
    return step.model_dump(mode="json", exclude={"metadata"})


def _edit_context(
    tape_id: str, index: int, step: Step, text: str, error: str | None
) -> dict[str, Any]:
    cls = type(step)
    schema = None
    if cls is not UnknownStep:
        schema = cls.model_json_schema()
        schema.get("properties", {}).pop("metadata", None)
        schema.pop("$defs", None)
    fields = []
    if cls is not UnknownStep:
        for name, info in cls.model_fields.items():
            if name in ("kind", "metadata"):
                continue
            fields.append(
                {
                    "name": name,
                    "type": _type_name(info.annotation),
                    "required": info.is_required(),
                    "description": info.description or "",
                }
            )
    return {
        "tape_id": tape_id,
        "index": index,
        "step": step,
        "text": text,
        "error": error,
        "fields": fields,
        "type_name": cls.__name__,
        "type_doc": (cls.__doc__ or "").strip(),
        "schema": json.dumps(schema, indent=2, ensure_ascii=False) if schema else None,
    }


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def parse_edit(original: Step, text: str) -> Step:
    """The step the edit form describes, validated against the original step's type.

    The new step keeps the original's agent and node; it gets a new id and no LLM call (the
    model did not write it), and `metadata.extra["edited_from"]` names the step it replaces.

    Raises:
        UsageError: The text is not JSON, not an object, changes the kind, or does not validate.
    """
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UsageError(f"The step is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise UsageError(
            "The step must be a JSON object with a 'kind' and its fields, "
            f"not {type(data).__name__}."
        )
    kind = data.get("kind", original.kind)
    if kind != original.kind:
        raise UsageError(
            f"The kind must stay {original.kind!r} (got {kind!r}): an edit changes a step's "
            "fields, not its type."
        )
    if "metadata" in data:
        raise UsageError("Leave out 'metadata': the studio sets it (agent, node, a new id).")
    meta = original.metadata
    metadata = StepMetadata(
        agent=meta.agent,
        node=meta.node,
        extra={**meta.extra, "edited_from": meta.id},
    )
    cls = step_kinds().get(kind)
    payload = {**data, "kind": kind}
    try:
        if cls is None:
            from tapeagents.steps import load_step

            step = load_step(payload)
            step.metadata = metadata
            return step
        return cls.model_validate({**payload, "metadata": metadata})
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "(the step)"
            lines.append(f"{where}: {problem['msg']}")
        raise UsageError(
            f"This is not a valid {type(original).__name__} ({kind!r}):\n" + "\n".join(lines)
        ) from None
