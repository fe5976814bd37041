"""Editing a step in the studio: what the edit form shows, and the step a submitted form makes.

Pure functions of steps and text, with no web framework, so they are tested directly.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tapeagents.errors import UsageError
from tapeagents.steps import Step, StepMetadata, UnknownStep, load_step, step_kinds

__all__ = ["edit_context", "editable_json", "parse_edit"]


def editable_json(step: Step) -> str:
    """What the edit form starts with: the step's kind and fields as JSON, not its metadata."""
    data = step.model_dump(mode="json", exclude={"metadata"})
    return json.dumps(data, ensure_ascii=False, indent=2)


def edit_context(
    tape_id: str, index: int, step: Step, text: str, error: str | None
) -> dict[str, Any]:
    """What `edit.html` shows: the text being edited, the error, the step type's fields."""
    cls = type(step)
    schema = None
    fields = []
    if cls is not UnknownStep:
        schema = cls.model_json_schema()
        schema.get("properties", {}).pop("metadata", None)
        schema.pop("$defs", None)
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
        if cls is None:  # an unknown kind keeps its data as written, the new metadata included
            return load_step({**payload, "metadata": metadata.model_dump(mode="json")})
        return cls.model_validate({**payload, "metadata": metadata})
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "(the step)"
            lines.append(f"{where}: {problem['msg']}")
        raise UsageError(
            f"This is not a valid {type(original).__name__} ({kind!r}):\n" + "\n".join(lines)
        ) from None
