"""What every command group shares: the `--db` option, consoles, error reporting, parsing.

Nothing here imports the store (SQLAlchemy) at module level, so `tapeagents --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tapeagents.errors import TapeAgentsError, UsageError

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = [
    "DbOption",
    "Group",
    "err",
    "fail",
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
    """Print `message` in red on stderr and return the `Exit` to raise.

    The message is not wrapped (the terminal wraps it), so it stays one line in logs and pipes.
    """
    err().print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)
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
    Another application's database is an error too, even with `create`: the command line never
    adds the store's tables beside another application's (`TapeStore(url)` does, if asked).
    """
    from tapeagents.store import DEFAULT_URL, TapeStore
    from tapeagents.store.migrate import foreign_tables

    url = db or DEFAULT_URL
    if not create:
        path = _sqlite_path(url)
        if path is not None and not path.exists():
            raise UsageError(
                f"No tape store at {path}: the file does not exist. Pass --db URL or set "
                "TAPEAGENTS_DB to the store your runs write to."
            )
    store = TapeStore(url, upgrade=False)
    try:
        foreign = foreign_tables(store.database)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(
                f"{store.display_url} is not a tape store: it holds other tables ({shown}) "
                "and no tapeagents schema. Pass --db URL or set TAPEAGENTS_DB to the store "
                "your runs write to, or to a new database for a new store."
            )
        if upgrade:
            store.upgrade()
        yield store
    finally:
        store.close()


def _sqlite_path(url: str) -> Any:
    from pathlib import Path

    from tapeagents.store.engine import parse_store_url

    if "://" not in url:
        return Path(url).expanduser()
    parsed = parse_store_url(url)  # a UsageError that hides the password if unparsable
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
