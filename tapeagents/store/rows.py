"""How tapes, steps and LLM calls become rows of the tape store, and back: the row builders
and the prebuilt statements of the write path."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import bindparam, insert, select, update

from tapeagents.errors import StoreError, UsageError
from tapeagents.steps import Step, load_step, step_kinds
from tapeagents.store.blobs import externalize, insert_blobs
from tapeagents.store.schema import blobs, llm_calls, steps, tape_tags, tapes
from tapeagents.tape import TapeMetadata

__all__ = ["Statements", "dumps", "jsonable", "outcome_columns", "parse_steps", "step_row"]


def outcome_columns(metadata: TapeMetadata) -> dict[str, Any]:
    """The `tapes` columns that come from the tape's metadata."""
    return {
        "metadata": metadata.model_dump_json(),
        "task_id": metadata.task_id,
        "outcome": metadata.outcome,
        "reward": metadata.reward,
    }


def dumps(value: Any) -> str:
    """Compact JSON, as the store writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def parse_steps(rows: Sequence[tuple[str, int, str, str]], texts: Mapping[str, str]) -> list[Step]:
    """Steps from `(tape id, index, kind, data)` rows; `texts` has the blobs they refer to."""
    kinds = step_kinds()
    loaded: list[Step] = []
    for seg_id, idx, kind, data in rows:
        text = insert_blobs(data, texts)
        cls = kinds.get(kind)
        try:
            if cls is not None:
                loaded.append(cls.model_validate_json(text))
            else:
                loaded.append(load_step({"kind": kind, **json.loads(text)}))
        except ValueError as error:
            raise StoreError(
                f"Step {idx} of tape {seg_id} cannot be loaded ({error}); the row is "
                "corrupt. Export the tape to see the others."
            ) from None
    return loaded


def step_row(tape_id: str, index: int, step: Step, found: dict[str, str]) -> dict[str, Any]:
    """A `steps` row; defaults are left out of the JSON (loading restores them)."""
    meta = step.metadata
    data = externalize(step.model_dump(mode="json", exclude_defaults=True), found)
    return {
        "tape_id": tape_id,
        "idx": index,
        "kind": step.kind,
        "agent": meta.agent,
        "node": meta.node,
        "llm_call_id": meta.llm_call_id,
        "created_at": meta.created_at,
        "data": dumps(data),
    }


class Statements:
    """The statements of the write path, built once per store (building them costs more than
    running them on SQLite)."""

    def __init__(self, dialect: str) -> None:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
        else:
            raise UsageError(f"The tape store supports SQLite and PostgreSQL, not {dialect}.")
        self.insert_blobs = dialect_insert(blobs).on_conflict_do_nothing(index_elements=["hash"])
        self.insert_calls = dialect_insert(llm_calls).on_conflict_do_nothing(index_elements=["id"])
        self.insert_steps = insert(steps)
        self.insert_tags = insert(tape_tags)
        self.insert_tape = insert(tapes)
        by_id = tapes.c.id == bindparam("tape")
        status = {"status": bindparam("status"), "updated_at": bindparam("now")}
        self.set_status = update(tapes).where(by_id).values(**status)
        outcome = {name: bindparam(name) for name in ("metadata", "task_id", "outcome", "reward")}
        self.set_status_and_outcome = update(tapes).where(by_id).values(**status, **outcome)
        self.select_tags = select(tape_tags.c.tag).where(tape_tags.c.tape_id == bindparam("tape"))
        self.select_length_status = select(tapes.c.length, tapes.c.status).where(
            tapes.c.id == bindparam("tape")
        )
        self.move_length = (
            update(tapes)
            .where(tapes.c.id == bindparam("tape"), tapes.c.length == bindparam("start"))
            .values(length=bindparam("end"), updated_at=bindparam("now"))
        )
        # Text search in long texts: the tapes with a step that references a blob matching
        # :pattern. Each step's references are read once, so the cost grows with the steps,
        # not with steps times matching blobs.
        if dialect == "sqlite":
            references = "json_tree(s.data) AS r", "r.key = '$blob' AND r.value"
        else:
            references = (
                """regexp_matches(s.data, '"\\$blob":"([0-9a-f]{32})"', 'g') AS r(ref)""",
                "r.ref[1]",
            )
        self.steps_citing_blobs = (
            f"SELECT s.tape_id FROM steps AS s, {references[0]} WHERE s.data LIKE :reference "
            f"AND {references[1]} IN (SELECT hash FROM blobs WHERE text LIKE :pattern)"
        )
