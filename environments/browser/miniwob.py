"""MiniWoB++ offline: the 130 task pages of the `miniwob` package, served on 127.0.0.1.

An episode: load the task page once, then for each episode seed the page's random generator
(`Math.seedrandom(seed)`), start it (`core.startEpisodeReal()`), wait for `WOB_TASK_READY`,
read the instruction (`core.getUtterance()`), act, and read the score (`WOB_RAW_REWARD_GLOBAL`,
`WOB_DONE_GLOBAL`). The next episode on the same page starts in place, without a reload, in a
few milliseconds. The tape's context holds the task, the seed and the instruction; its
metadata gets `task_id` ("miniwob/<task>"), `reward` (the raw reward, -1 to 1) and `outcome`
("success" when the reward is positive).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import importlib.util
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tapeagents.errors import UsageError
from tapeagents.steps import Action, Observation
from tapeagents.tape import Tape, TapeMetadata

from .environment import BrowserEnvironment, _Session
from .steps import BrowserAction, PageObservation

if TYPE_CHECKING:
    from tapeagents.agent import Agent
    from tapeagents.orchestrator import Finished
    from tapeagents.store import TapeStore

__all__ = [
    "MiniWoBEnvironment",
    "MiniWoBServer",
    "MiniWoBTask",
    "miniwob_html_dir",
    "miniwob_tasks",
    "task_of",
]

_HIDE_HUD = "#reward-display, #click-canvas { display: none !important; }"
"""The reward panel and click canvas change with time; hidden, snapshots stay deterministic."""

_NO_ANIMATIONS = "() => { if (window.jQuery) jQuery.fx.off = true; }"
"""jQuery UI animations (accordions, dialogs) only make an agent wait for elements to settle."""

_START = """([seed, maxTime]) => {
  if (document.activeElement) document.activeElement.blur();  // as on a freshly loaded page
  Math.seedrandom(seed);
  core.EPISODE_MAX_TIME = maxTime;
  core.startEpisodeReal();
  return WOB_TASK_READY;
}"""
_STATE = "() => [WOB_DONE_GLOBAL, WOB_RAW_REWARD_GLOBAL, WOB_REWARD_REASON]"
_NO_LIMIT_MS = 2**31 - 1  # the largest delay setTimeout accepts (about 24 days)


def miniwob_html_dir() -> Path:
    """The `html/` directory of the installed `miniwob` package (without importing it).

    Raises:
        UsageError: when the package is not installed.
    """
    candidates: list[Path] = []
    try:  # the installed distribution, even if a module of the same name shadows it
        candidates.append(Path(str(importlib.metadata.distribution("miniwob").locate_file(""))))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("miniwob")
    candidates += [Path(p).parent for p in (spec.submodule_search_locations or [])] if spec else []
    for root in candidates:
        html = root / "miniwob" / "html"
        if (html / "miniwob").is_dir():
            return html
    raise UsageError(
        "The MiniWoB++ task pages come from the `miniwob` package: "
        "pip install --no-deps miniwob (its gym and selenium dependencies are not needed)."
    )


@functools.cache
def miniwob_tasks() -> list[str]:
    """Names of all MiniWoB++ tasks (`click-button`, ...), sorted."""
    return sorted(path.stem for path in (miniwob_html_dir() / "miniwob").glob("*.html"))


def _check_task(task: str) -> None:
    tasks = miniwob_tasks()
    if task not in tasks:
        close = difflib.get_close_matches(task, tasks, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"Unknown MiniWoB++ task {task!r}.{hint} ({len(tasks)} tasks exist.)")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per file on stderr would drown the user's output


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
        # a browser that closed its page mid-download is not an error worth a traceback


class MiniWoBServer:
    """A threaded HTTP server for the task pages on 127.0.0.1, on a free port.

    Example:
        >>> with MiniWoBServer() as server:
        ...     server.task_url("click-button")  # doctest: +ELLIPSIS
        'http://127.0.0.1:.../miniwob/click-button.html'
    """

    def __init__(self, html_dir: Path | None = None, *, host: str = "127.0.0.1") -> None:
        self.html_dir = html_dir or miniwob_html_dir()
        handler = functools.partial(_QuietHandler, directory=str(self.html_dir))
        self._server = _QuietServer((host, 0), handler)
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:<port>`."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def task_url(self, task: str) -> str:
        """The address of a task's page."""
        return f"{self.origin}/miniwob/{task}.html"

    def start(self) -> MiniWoBServer:
        """Serve in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="miniwob-http", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MiniWoBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MiniWoBTask(BaseModel):
    """The context of a MiniWoB++ tape: which task, which seed, and its instruction."""

    task: str
    """The task's name, like click-button."""
    seed: int = 0
    """The seed of the page's random generator; the same seed gives the same episode."""
    goal: str = ""
    """The instruction the page showed (`core.getUtterance()`)."""


def task_of(tape: Tape[Any, Any]) -> MiniWoBTask:
    """The MiniWoB++ task of a tape (its context may have been loaded from a store as a dict)."""
    context = tape.context
    if isinstance(context, MiniWoBTask):
        return context
    if isinstance(context, dict) and "task" in context:
        return MiniWoBTask.model_validate(context)
    raise UsageError(
        f"Tape {tape.id} has no MiniWoB++ task in its context; start it with "
        "MiniWoBEnvironment.start_episode(task, seed=...)."
    )


class MiniWoBEnvironment(BrowserEnvironment):
    """A browser on the MiniWoB++ task pages, with in-place episode resets.

    Pages are pooled per task: an episode takes an idle page of its task (or opens one), resets
    it in place, and gives it back once the task is over (or at `end_episode`). Concurrent
    episodes each get their own context.

    Args:
        time_limit: Seconds an episode may last before MiniWoB scores it -1 ("timed out");
            None (the default) for no limit, so that slow models are not cut off.
        server: A running `MiniWoBServer` to use; by default the environment starts its own.
        max_idle: How many idle task pages to keep open for the next episodes (the oldest
            beyond that are closed).
        **options: `BrowserEnvironment` options (`screenshots`, `action_timeout`, ...).

    Example:
        >>> async def main(agent):
        ...     async with MiniWoBEnvironment() as env:
        ...         tape = await env.run_episode(agent, "click-button", seed=0)
        ...         print(tape.metadata.outcome, tape.metadata.reward)
    """

    def __init__(
        self,
        *,
        time_limit: float | None = None,
        server: MiniWoBServer | None = None,
        max_idle: int = 16,
        **options: Any,
    ) -> None:
        self._own_server = server is None
        self.server = (server or MiniWoBServer()).start()
        options.setdefault("viewport", (500, 400))
        allowed = [self.server.origin, *options.pop("allowed_origins", ())]
        super().__init__(allowed_origins=allowed, **options)
        self.time_limit = time_limit
        self.max_idle = max_idle
        self._idle: dict[str, list[_Session]] = {}
        self._idle_order: list[_Session] = []

    async def aclose(self) -> None:
        await super().aclose()
        if self._own_server:
            self.server.stop()

    def _forget_idle(self) -> None:
        self._idle.clear()
        self._idle_order.clear()

    # --------------------------------------------------------------------- episodes

    async def start_episode(self, task: str, seed: int = 0) -> Tape[MiniWoBTask, Any]:
        """A new tape on a fresh episode of `task`; its first step shows the page and the goal."""
        _check_task(task)
        tape: Tape[MiniWoBTask, Any] = Tape(
            context=MiniWoBTask(task=task, seed=seed),
            metadata=TapeMetadata(task_id=f"miniwob/{task}"),
        )
        session = await self._session(tape)
        tape.context = MiniWoBTask(task=task, seed=seed, goal=session.goal or "")
        tape.append(await self._observation(session, tape, goal=session.goal))
        return tape

    async def end_episode(self, tape: Tape[Any, Any]) -> None:
        """Give the tape's page back to the pool; an unfinished episode is scored 0, "failure"."""
        session = self._sessions.pop(tape.id, None)
        if tape.metadata.outcome is None:
            tape.metadata.reward = 0.0
            tape.metadata.outcome = "failure"
            tape.metadata.extra["reason"] = "the agent stopped before the task was over"
        if session is not None:
            await self._give_back(session)

    async def run_episode(
        self,
        agent: Agent,
        task: str,
        seed: int = 0,
        *,
        store: TapeStore | None = None,
        max_steps: int = 30,
    ) -> Tape[MiniWoBTask, Any]:
        """Start an episode, run `agent` on it to the end, score it and return the tape."""
        from tapeagents.orchestrator import Finished, run

        tape = await self.start_episode(task, seed)
        finished: Finished | None = None
        try:
            async for event in run(agent, tape, self, max_steps=max_steps, store=store):
                if isinstance(event, Finished):
                    finished = event
        finally:
            unscored = tape.metadata.outcome is None
            await self.end_episode(tape)
        if store is not None and unscored and finished is not None:
            store.set_status(tape.id, finished.reason, metadata=tape.metadata)
        return tape

    # --------------------------------------------------------------------- hooks

    async def _open_session(self, tape: Tape[Any, Any]) -> _Session:
        task = task_of(tape)
        _check_task(task.task)
        idle = self._idle.get(task.task)
        session = idle.pop() if idle else None
        if session is not None:
            self._idle_order.remove(session)
        if session is None or not self._alive(session):
            session = await self._new_session()
            session.task = task.task
            error = await self._goto(session, self.server.task_url(task.task))
            if error:
                raise UsageError(f"The MiniWoB++ page of {task.task} did not load: {error}")
            await session.page.add_style_tag(content=_HIDE_HUD)
            await session.page.evaluate(_NO_ANIMATIONS)
        await self._reset(session, task.seed)
        return session

    async def _reset(self, session: _Session, seed: int) -> None:
        """Start a new episode in place (no reload) and read its instruction."""
        page = session.page
        limit = _NO_LIMIT_MS if self.time_limit is None else int(self.time_limit * 1000)
        ready = await page.evaluate(_START, [seed, limit])
        if not ready:
            timeout = self.navigation_timeout * 1000
            await page.wait_for_function("() => WOB_TASK_READY", timeout=timeout)
        session.goal = await page.evaluate("() => core.getUtterance()")
        session.done = False
        session.refs.clear()
        session.shown = False

    async def _give_back(self, session: _Session) -> None:
        """Pool the page for the next episode of its task; close the oldest beyond `max_idle`."""
        if session.task is None or not self._alive(session):
            return
        self._idle.setdefault(session.task, []).append(session)
        self._idle_order.append(session)
        while len(self._idle_order) > self.max_idle:
            oldest = self._idle_order.pop(0)
            pool = self._idle.get(oldest.task or "", [])
            if oldest in pool:
                pool.remove(oldest)
            await self._release(oldest)

    async def react(self, action: Action, tape: Tape[Any, Any]) -> Observation:
        if (
            isinstance(action, BrowserAction)
            and tape.metadata.outcome is not None
            and tape.id not in self._sessions
        ):
            return PageObservation(
                url=self.server.task_url(task_of(tape).task),
                error="The episode is over; nothing more can be done in it. Stop.",
                done=True,
                reward=tape.metadata.reward,
            )
        return await super().react(action, tape)

    async def _refuse(
        self, session: _Session, tape: Tape[Any, Any], action: BrowserAction
    ) -> PageObservation | None:
        done, _, reason = await session.page.evaluate(_STATE)
        if not done:
            return None
        return await self._observation(
            session, tape, error=f"The episode ended before this action ({reason or 'over'})."
        )

    async def _task_fields(self, session: _Session, tape: Tape[Any, Any]) -> dict[str, Any]:
        done, raw_reward, reason = await session.page.evaluate(_STATE)
        if not done:
            return {}
        session.done = True
        reward = float(raw_reward)
        tape.metadata.reward = reward
        tape.metadata.outcome = "success" if reward > 0 else "failure"
        if reason:
            tape.metadata.extra["reason"] = reason
        return {"done": True, "reward": reward}

    async def _observation(self, session: _Session, tape: Tape[Any, Any], **kwargs: Any) -> Any:
        observation = await super()._observation(session, tape, **kwargs)
        if session.done and self._sessions.get(tape.id) is session:
            del self._sessions[tape.id]
            await self._give_back(session)
        return observation
