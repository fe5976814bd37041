"""Blocking helpers over the async core: one place that runs a coroutine to completion.

Every public `*_sync` function (`run_sync`, `replay_sync`, `react_sync`, `run_batch_sync`) is a
thin wrapper that builds its coroutine and hands it to `run_blocking`. Called inside a running
event loop (a notebook cell, an async web handler), a blocking helper would deadlock or fail
obscurely, so `run_blocking` refuses with a `UsageError` that names the async call to use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from tapeagents.errors import UsageError

__all__ = ["run_blocking"]

T = TypeVar("T")


def run_blocking(work: Coroutine[Any, Any, T], *, sync_name: str, use_instead: str) -> T:
    """Run `work` on a new event loop and return its result.

    Args:
        work: The coroutine to run; it is closed unstarted when it cannot run.
        sync_name: The blocking function the user called, for the error (`"replay_sync"`).
        use_instead: The async call to use inside an event loop (`"await replay(...)"`).

    Raises:
        UsageError: An event loop is already running in this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    work.close()  # never awaited: close it so Python does not warn about it
    raise UsageError(
        f"{sync_name}() cannot run inside a running event loop; use `{use_instead}` instead."
    )
