"""`tapeagents db`: the store's schema and size."""

from __future__ import annotations

import typer
from rich.table import Table

from tapeagents.cli.common import DbOption, Group, open_store, out

__all__ = ["app"]

app = typer.Typer(
    cls=Group,
    help="Inspect and upgrade the tape store's database.",
    no_args_is_help=True,
)


@app.command()
def upgrade(db: DbOption = None) -> None:
    """Create the store's tables, or migrate them to this version of tapeagents."""
    from tapeagents.store.schema import SCHEMA_VERSION

    with open_store(db, create=True, upgrade=False) as store:
        before = store.schema_revision()
        store.upgrade()
        url = store.display_url
    if before == SCHEMA_VERSION:
        out().print(f"{url} is up to date (schema revision {SCHEMA_VERSION}).")
    elif before is None:
        out().print(f"Created the tape store at {url} (schema revision {SCHEMA_VERSION}).")
    else:
        out().print(f"Upgraded {url} from schema revision {before} to {SCHEMA_VERSION}.")


@app.command()
def info(db: DbOption = None) -> None:
    """Show the store's URL (password hidden), schema revision and size."""

    from tapeagents.store.migrate import check_revision
    from tapeagents.store.schema import SCHEMA_VERSION

    with open_store(db, upgrade=False) as store:
        revision = store.schema_revision()
        check_revision(store.database, revision)  # a newer tapeagents' store: say so
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim")
        grid.add_column()
        grid.add_row("url", store.display_url)
        if revision == SCHEMA_VERSION:
            grid.add_row("schema", f"revision {revision} (up to date)")
        else:
            grid.add_row(
                "schema",
                f"[yellow]revision {revision or 'none'}; this tapeagents writes "
                f"{SCHEMA_VERSION}. Run `tapeagents db upgrade`.[/]",
            )
        if revision is not None:
            stats = store.stats()
            grid.add_row("tapes", str(stats["tapes"]))
            grid.add_row("steps", f"{stats['steps']} (a fork's shared steps are stored once)")
            grid.add_row("llm calls", str(stats["llm_calls"]))
            grid.add_row("blobs", f"{stats['blobs']} (long texts, each stored once)")
    out().print(grid)
