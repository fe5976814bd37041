"""Exceptions raised by tapeagents.

Model misbehaviour (unparsable output, a tool that raises) becomes a step on the tape; these
exceptions are for usage mistakes and failures the caller must handle::

    TapeAgentsError
     ├── UsageError        the framework was used wrongly; the message says how to fix it
     ├── LLMError          a model backend failed after its retries
     │    └── ContextWindowExceeded
     ├── StoreError        the tape store cannot do what was asked
     │    ├── StoreConflict   another process appended to the tape this run is writing
     │    ├── LeaseHeld    another run holds the tape (it is running there now)
     │    ├── CorruptTapeError      a stored tape cannot be read (its rows were damaged)
     │    └── UnreadableTapesError  an export wrote every tape but those it could not read
     └── ReplayMismatch    a replayed run asked for an LLM call that was never recorded
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ContextWindowExceeded",
    "CorruptTapeError",
    "LLMError",
    "LeaseHeld",
    "ReplayMismatch",
    "StoreConflict",
    "StoreError",
    "TapeAgentsError",
    "UnreadableTapesError",
    "UsageError",
]


class TapeAgentsError(Exception):
    """Base class of every exception tapeagents raises on purpose."""


class UsageError(TapeAgentsError):
    """The framework was used in a way it does not support; the message says what to do."""


class LLMError(TapeAgentsError):
    """A model backend failed (after retrying transient errors)."""


class ContextWindowExceeded(LLMError):
    """The prompt does not fit in the model's context window."""


class StoreError(TapeAgentsError):
    """The tape store could not read or write what was asked."""


class StoreConflict(StoreError):
    """Another writer appended to a tape since this one read it: the stored length moved. The
    tape must be reloaded (`store.get`) before it can be continued; a run stops with this error
    and leaves the tape to the other writer."""


class CorruptTapeError(StoreError):
    """A stored tape cannot be read: one of its rows (a step, its header, a long text or an LLM
    call it refers to) was damaged or changed outside tapeagents.

    The message names the tape and what to do; exports of many tapes skip such a tape and
    report it. It survives pickling, so worker processes can hand it back.

    Args:
        tape_id: The tape that cannot be read.
        reason: What is wrong, in one line (for example "step 3 is not valid JSON").
        step_index: The step that cannot be read, when one step is the cause.
    """

    def __init__(self, tape_id: str, reason: str, step_index: int | None = None) -> None:
        self.tape_id = tape_id
        self.reason = reason
        self.step_index = step_index
        super().__init__(
            f"Tape {tape_id} cannot be read: {reason}. The database was damaged or changed "
            "outside tapeagents: restore it from a backup, or delete the tape with "
            f"`tapeagents rm {tape_id}`; `tapeagents export` skips it and exports the others."
        )

    def __reduce__(self) -> tuple[type[CorruptTapeError], tuple[str, str, int | None]]:
        return type(self), (self.tape_id, self.reason, self.step_index)


class LeaseHeld(StoreError):
    """Another run holds the tape's lease: it is running there now, or it was killed less
    than a lease ago. The message names it and says what to do (wait, or force)."""

    def __init__(self, message: str, *, tape_id: str, run_id: str, expires_in: float) -> None:
        super().__init__(message)
        self.tape_id = tape_id
        self.run_id = run_id
        """The id of the run holding the lease."""
        self.expires_in = expires_in
        """Seconds until the lease expires unless its run renews it (by the database's clock)."""

    def __reduce__(self) -> tuple[Any, ...]:  # keyword arguments survive pickling (Ray workers)
        fields = {"tape_id": self.tape_id, "run_id": self.run_id, "expires_in": self.expires_in}
        return _rebuild_lease_held, (str(self), fields)


def _rebuild_lease_held(message: str, fields: dict[str, Any]) -> LeaseHeld:
    return LeaseHeld(message, **fields)


class UnreadableTapesError(StoreError):
    """An export of many tapes wrote all the tapes it could read and left out the others.

    Args:
        written: How many tapes were written.
        unreadable: Why each left-out tape could not be read.
        where: What was written to (a file).
    """

    def __init__(self, written: int, unreadable: list[CorruptTapeError], where: str) -> None:
        self.written = written
        self.unreadable = unreadable
        self.where = where
        count = len(unreadable)
        ids = ", ".join(error.tape_id for error in unreadable[:10])
        more = f" and {count - 10} more" if count > 10 else ""
        super().__init__(
            f"Wrote {written} tapes to {where} but left out {count} that cannot be read "
            f"({ids}{more}): the database was damaged or changed outside tapeagents. Restore "
            "it from a backup, or delete those tapes with `tapeagents rm`."
        )

    def __reduce__(self) -> tuple[type[UnreadableTapesError], tuple[int, list[Any], str]]:
        return type(self), (self.written, self.unreadable, self.where)


class ReplayMismatch(TapeAgentsError):
    """A replay asked for an LLM call that is not in the recording; the message shows the diff."""
