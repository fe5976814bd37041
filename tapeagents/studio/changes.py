"""The studio's changes, each a POST of a plain form: fork, edit a step, resume, annotate.

Every form is checked by `Studio.read_form` (CSRF token) behind `security.Guard` (origin,
host, token); a change never rewrites a tape, it makes a new one (a fork) or adds to it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from tapeagents.errors import TapeAgentsError, UsageError
from tapeagents.render.html import url_part
from tapeagents.steps import Step
from tapeagents.studio.context import Studio, check_id, int_or
from tapeagents.studio.editing import edit_context, editable_json, parse_edit
from tapeagents.tape import Tape

__all__ = ["router"]

router = APIRouter()


@router.post("/tapes/{tape_id}/fork")
async def fork(request: Request, tape_id: str) -> Response:
    """A new tape with the first `at` steps of this one."""
    studio = Studio.of(request)
    form = await studio.read_form(request)
    full = await asyncio.to_thread(studio.resolve, tape_id)
    at = int_or(form.get("at"), -1)
    child = await asyncio.to_thread(studio.store.fork, full, at, author="studio")
    return studio.redirect(
        request,
        f"/tapes/{url_part(child.id)}",
        f"Forked tape {full[:8]} at step {at}: this is the new tape {child.id[:8]}, with "
        f"{at} step{'' if at == 1 else 's'}.",
    )


@router.get("/tapes/{tape_id}/steps/{index}/edit", response_class=HTMLResponse)
def edit_page(request: Request, tape_id: str, index: int) -> HTMLResponse:
    """The edit form of one step, with its type's fields and JSON schema."""
    studio = Studio.of(request)
    full = studio.resolve(tape_id)
    step = _step_at(studio.store.get(full), index)
    context = edit_context(full, index, step, editable_json(step), None)
    return studio.page(request, "edit.html", **context)


@router.post("/tapes/{tape_id}/steps/{index}/edit", response_class=HTMLResponse)
async def edit(request: Request, tape_id: str, index: int) -> Response:
    """Save an edited step as a fork that ends with it (or show the form again with the error)."""
    studio = Studio.of(request)
    form = await studio.read_form(request)
    full = await asyncio.to_thread(studio.resolve, tape_id)
    tape = await asyncio.to_thread(studio.store.get, full)
    original = _step_at(tape, index)
    text = form.get("step", "")
    try:
        edited = parse_edit(original, text)
    except UsageError as error:
        context = edit_context(full, index, original, text, str(error))
        return studio.page(request, "edit.html", status=400, **context)
    child = await asyncio.to_thread(
        studio.store.fork, tape, index + 1, edits={index: edited}, author="studio"
    )
    return studio.redirect(
        request,
        f"/tapes/{url_part(child.id)}#step-{index}",
        f"Saved the edit as a new tape {child.id[:8]}: steps 0 to {index} of "
        f"{full[:8]}, with step {index} edited. Resume it to continue from there.",
    )


@router.post("/tapes/{tape_id}/resume")
async def resume(request: Request, tape_id: str) -> Response:
    """Run one of the studio's agents on the tape in the background (with a user message)."""
    studio = Studio.of(request)
    form = await studio.read_form(request)
    full = await asyncio.to_thread(studio.resolve, tape_id)
    max_steps = min(max(1, int_or(form.get("max_steps"), 50)), 1000)
    try:
        await studio.runs.start(
            full,
            form.get("agent", ""),
            message=form.get("message", "").strip() or None,
            max_steps=max_steps,
            force=form.get("force") == "on",
        )
    except TapeAgentsError as error:
        return studio.redirect(request, f"/tapes/{url_part(full)}", str(error), level="error")
    return studio.redirect(request, f"/tapes/{url_part(full)}#live")


@router.post("/tapes/{tape_id}/annotations")
async def annotate(request: Request, tape_id: str) -> Response:
    """Annotate the tape or one of its steps: a rating, a label, a comment."""
    studio = Studio.of(request)
    form = await studio.read_form(request)
    full = await asyncio.to_thread(studio.resolve, tape_id)
    step = int_or(form.get("step"), None) if form.get("step", "") != "" else None
    rating_text = form.get("rating", "").strip()
    try:
        rating = float(rating_text) if rating_text else None
    except ValueError:
        rating = None
    anchor = f"#step-{step}" if step is not None else "#notes"
    try:
        await asyncio.to_thread(
            studio.store.annotate,
            full,
            step,
            rating=rating,
            label=form.get("label", "").strip() or None,
            comment=form.get("comment", "").strip() or None,
            author="studio",
        )
    except TapeAgentsError as error:
        return studio.redirect(
            request, f"/tapes/{url_part(full)}{anchor}", str(error), level="error"
        )
    return studio.redirect(request, f"/tapes/{url_part(full)}{anchor}")


@router.post("/annotations/{annotation_id}/delete")
async def delete_annotation(request: Request, annotation_id: str) -> Response:
    """Delete one annotation."""
    studio = Studio.of(request)
    check_id(annotation_id, "annotation")
    form = await studio.read_form(request)
    full = await asyncio.to_thread(studio.resolve, form.get("tape", ""))
    await asyncio.to_thread(studio.store.delete_annotation, annotation_id)
    return studio.redirect(request, f"/tapes/{url_part(full)}", "Annotation deleted.")


def _step_at(tape: Tape[Any, Any], index: int) -> Step:
    if not 0 <= index < len(tape.steps):
        raise HTTPException(
            404, f"Tape {tape.id[:8]} has {len(tape.steps)} steps, no step {index}."
        )
    return tape.steps[index]
