"""Exceptions raised by tapeagents.

Model misbehaviour (unparsable output, a tool that raises) becomes a step on the tape; these
exceptions are for usage mistakes and failures the caller must handle::

    TapeAgentsError
     ├── UsageError        the framework was used wrongly; the message says how to fix it
     ├── LLMError          a model backend failed after its retries
     │    └── ContextWindowExceeded
     ├── StoreError        the tape store cannot do what was asked
     └── ReplayMismatch    a replayed run asked for an LLM call that was never recorded
"""

from __future__ import annotations

__all__ = [
    "ContextWindowExceeded",
    "LLMError",
    "ReplayMismatch",
    "StoreError",
    "TapeAgentsError",
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


class ReplayMismatch(TapeAgentsError):
    """A replay asked for an LLM call that is not in the recording; the message shows the diff."""
