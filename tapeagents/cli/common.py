"""What every command group shares: the `--db` option, consoles, error reporting, parsing.

Nothing here imports the store (SQLAlchemy) at module level, so `tapeagents --help` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tapeagents.agent import Agent
from tapeagents.environment import Environment
from tapeagents.errors import TapeAgentsError, UsageError

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = [
    "DbOption",
    "Group",
    "err",
    "fail",
    "import_object",
    "load_agent",
    "load_environment",
    "open_store",
    "out",
    "parse_when",
]

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="TAPEAGENTS_DB",
        show_envvar=True,
        show_default="sqlite:///tapes.db",
        help="Tape store URL (sqlite:///path.db, postgresql+psycopg://...) or a SQLite file path.",
    ),
]


def out() -> Console:
    """A console on stdout (created per use, so redirection and test runners see the output)."""
    return Console(highlight=False)


def err() -> Console:
    """A console on stderr, for errors and hints that should not mix with data."""
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` in red on stderr and return the `Exit` to raise."""
    err().print(f"[bold red]Error:[/] {escape(message)}")
    return typer.Exit(code)


class Group(TyperGroup):
    """The command group: a `TapeAgentsError` becomes a red message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TapeAgentsError as error:
            raise fail(str(error)) from None


# ----------------------------------------------------------------------------- the store


@contextmanager
def open_store(
    db: str | None, *, create: bool = False, upgrade: bool = True
) -> Iterator[TapeStore]:
    """Open the tape store at `db` ($TAPEAGENTS_DB, else ./tapes.db) and close it afterwards.

    Unless `create`, a SQLite file that does not exist is an error rather than a new empty
    store, so a mistyped path or the wrong directory is reported instead of listing nothing.
    """
    from tapeagents.store import DEFAULT_URL, TapeStore

    url = db or DEFAULT_URL
    if not create:
        path = _sqlite_path(url)
        if path is not None and not path.exists():
            raise UsageError(
                f"No tape store at {path}: the file does not exist. Pass --db URL or set "
                "TAPEAGENTS_DB to the store your runs write to."
            )
    store = TapeStore(url, upgrade=upgrade)
    try:
        yield store
    finally:
        store.close()


def _sqlite_path(url: str) -> Any:
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in url:
        return Path(url).expanduser()
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise UsageError(f"{url!r} is not a database URL ({error}).") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


# ----------------------------------------------------------------------------- times


def parse_when(text: str | None, option: str, *, end_of_day: bool = False) -> float | None:
    """An ISO date or datetime (local time unless it has an offset) as seconds since the epoch.

    With `end_of_day`, a bare date means the end of that day (for `--until`).
    """
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date; use an ISO date or datetime such as 2025-01-31 or "
            "2025-01-31T14:30.",
            param_hint=option,
        ) from None
    if end_of_day and len(text.strip()) == 10:
        moment += timedelta(days=1)
    return moment.timestamp()


# ----------------------------------------------------------------------------- user code


def import_object(path: str, option: str) -> Any:
    """The object at `package.module:attribute`, or a UsageError that says what went wrong."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"{option} {path!r} is not of the form package.module:attribute "
            "(for example my_agents:build_agent)."
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to the user's files
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(
                f"{option} {path!r}: module {module_name!r} not found ({error}). Check the "
                "spelling, and run from the directory that contains it (or add it to PYTHONPATH)."
            ) from None
        raise UsageError(
            f"{option} {path!r}: importing module {module_name!r} failed: {error}. Install "
            f"{missing!r} in this environment."
        ) from None
    except Exception as error:
        raise UsageError(
            f"{option} {path!r}: importing module {module_name!r} raised {_describe(error)}."
        ) from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            candidates = _candidates(module)
            hint = f" It has: {', '.join(candidates)}." if candidates else ""
            raise UsageError(
                f"{option} {path!r}: module {module_name!r} has no attribute {attribute!r}.{hint}"
            )
        obj = getattr(obj, part)
    return obj


def _candidates(module: Any) -> list[str]:
    names = []
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        own_function = inspect.isfunction(value) and value.__module__ == module.__name__
        if own_function or isinstance(value, Agent | Environment):
            names.append(name)
    return sorted(names)


def _describe(error: BaseException) -> str:
    """`Type: message at file:line` of the innermost frame, for errors raised by user code."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _build(obj: Any, path: str, option: str, wanted: str) -> Any:
    """Call a factory with no arguments (objects that are not factories are returned as is)."""
    if isinstance(obj, Agent | Environment) or not callable(obj):
        return obj
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        required = [
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise UsageError(
                f"{option} {path!r} needs arguments ({', '.join(required)}); point {option} at "
                f"{wanted}, or at a function that takes no arguments and returns one."
            )
    try:
        return obj()
    except TapeAgentsError:
        raise
    except Exception as error:
        raise UsageError(f"{option} {path!r}: calling it raised {_describe(error)}.") from None


def load_agent(path: str) -> tuple[Agent, Environment | None]:
    """The agent at `path`: an `Agent`, or a no-argument callable returning one or (agent, env)."""
    built = _build(import_object(path, "--agent"), path, "--agent", "an Agent")
    if isinstance(built, Agent):
        return built, None
    if (
        isinstance(built, tuple)
        and len(built) == 2
        and isinstance(built[0], Agent)
        and (built[1] is None or isinstance(built[1], Environment))
    ):
        return built[0], built[1]
    raise UsageError(
        f"--agent {path!r} is not an Agent: it is {_kind(built)}. Point --agent at an Agent, or "
        "at a function that takes no arguments and returns an Agent or (agent, environment)."
    )


def load_environment(path: str) -> Environment:
    """The environment at `path`: an `Environment`, or a no-argument callable returning one."""
    built = _build(import_object(path, "--env"), path, "--env", "an Environment")
    if isinstance(built, Environment):
        return built
    raise UsageError(
        f"--env {path!r} is not an Environment: it is {_kind(built)}. Point --env at an "
        "Environment, or at a function that takes no arguments and returns one."
    )


def _kind(value: Any) -> str:
    if inspect.ismodule(value):
        return f"the module {value.__name__}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"
