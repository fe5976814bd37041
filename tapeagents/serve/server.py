"""`serving`: an OpenAI-compatible server in a background thread, for notebooks and tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tapeagents.errors import UsageError
from tapeagents.llms.base import LLM

__all__ = ["serving"]

_LOOPBACK = ("127.0.0.1", "localhost")


@contextmanager
def serving(
    llm: LLM | str,
    *,
    name: str | None = None,
    adapters: Mapping[str, str] | None = None,
    api_key: str | None = None,
    port: int = 0,
    timeout: float = 30.0,
) -> Iterator[str]:
    """Serve `llm` on 127.0.0.1 until the block ends; yields the API root (`http://.../v1`).

    The server runs in its own thread and event loop, so synchronous code, another event loop
    or another process can call it. Arguments as in `create_app`; `port=0` picks a free port.

    Example:
        >>> with serving("test") as base_url:
        ...     llm = OpenAICompatLLM("test", base_url=base_url)
    """
    import uvicorn

    from tapeagents.serve.app import create_app

    app = create_app(llm, name=name, adapters=adapters, api_key=api_key, allowed_hosts=_LOOPBACK)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tapeagents-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise UsageError(
                f"The server did not start on 127.0.0.1:{port}; is the port already in use? "
                "Pass port=0 to pick a free one."
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            raise UsageError(f"The server did not start within {timeout} s.")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
