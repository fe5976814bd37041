"""Commands on stored tapes: ls, show, fork, rm, import (`export` is in `cli.export`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer

from tapeagents.cli.common import DbOption, err, open_store, out, parse_when
from tapeagents.errors import UsageError
from tapeagents.render import text as render
from tapeagents.render.formats import short_id

__all__ = ["app"]

app = typer.Typer()

PANEL = "Tapes"


@app.command("ls", rich_help_panel=PANEL)
def list_tapes(
    agent: Annotated[str | None, typer.Option(help="Only tapes of this agent.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only tapes with this status (stopped, awaiting_input, error, ...)."),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only tapes with this tag.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created at or after this ISO date/datetime (local time).")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Created before this ISO datetime; a bare date includes that day."),
    ] = None,
    search: Annotated[
        str | None, typer.Option(help="Only tapes with a step containing this text.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Tapes per page.")] = 20,
    page: Annotated[int, typer.Option(min=1, help="Which page (1 is the newest tapes).")] = 1,
    db: DbOption = None,
) -> None:
    """List stored tapes, newest first."""
    from tapeagents.store import TapeFilter

    filters = TapeFilter(
        agent=agent,
        status=status,
        tag=tag,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until", end_of_day=True),
        text=search,
    )
    with open_store(db) as store:
        total = store.count(filters)
        pages = max(1, math.ceil(total / limit))
        if total == 0:
            where = "match these filters" if not filters.is_empty else f"in {store.display_url}"
            out().print(f"No tapes {where}.")
            return
        if page > pages:
            raise UsageError(
                f"Page {page} is past the last page: {total} tapes make {pages} page"
                f"{'' if pages == 1 else 's'} of {limit}."
            )
        summaries = store.list(filters, limit=limit, offset=(page - 1) * limit)
        running = [s.id for s in summaries if s.status == "running"]
        holders = store.lease_holders(running) if running else {}
    console = out()
    console.print(render.list_table(summaries, holders))
    console.print(f"page {page} of {pages} ({total} tape{'' if total == 1 else 's'})")


@app.command(rich_help_panel=PANEL)
def show(
    tape_id: Annotated[str, typer.Argument(metavar="ID", help="Tape id or a unique prefix.")],
    full: Annotated[bool, typer.Option("--full", help="Show long step contents in full.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tape as JSON.")] = False,
    calls: Annotated[
        bool, typer.Option("--calls", help="Show each LLM call under the steps it produced.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Show a tape: its header, lineage and steps."""
    with open_store(db) as store:
        full_id = store.resolve_id(tape_id)
        tape = store.get(full_id)
        llm_calls = {c.id: c for c in store.llm_calls_of(tape)} if calls else None
        if as_json:
            data = tape.model_dump(mode="json")
            if llm_calls is not None:
                dumped = [c.model_dump(mode="json") for c in llm_calls.values()]
                data = {"tape": data, "llm_calls": dumped}
            typer.echo(render.json_text(data))
            return
        summary = store.summary(full_id)
        ancestors = store.ancestors(full_id)
        children = store.children(full_id)
        holders = store.lease_holders([full_id]) if summary.status == "running" else {}
    console = out()
    console.print(
        render.header_table(
            summary, tape, ancestors=ancestors, children=children, full=full, holders=holders
        )
    )
    console.print()
    width = None if full else render.STEP_WIDTH
    console.print(render.steps_table(tape, width=width, calls=llm_calls))
    if llm_calls:
        console.print(f"[dim]{render.totals(list(llm_calls.values()))}[/]")


@app.command(rich_help_panel=PANEL)
def fork(
    tape_id: Annotated[str, typer.Argument(metavar="ID", help="Tape id or a unique prefix.")],
    at: Annotated[int, typer.Option("--at", help="Keep this many of the tape's first steps.")],
    db: DbOption = None,
) -> None:
    """Fork a tape: a new stored tape with its first K steps, ready to resume differently."""
    with open_store(db) as store:
        child = store.fork(store.resolve_id(tape_id), at)
    typer.echo(child.id)
    err().print(
        f"[dim]Forked {short_id(child.parent_id)} at step {at}. Continue it with "
        f"`tapeagents resume {short_id(child.id)} --agent module:attribute`.[/]"
    )


@app.command("rm", rich_help_panel=PANEL)
def remove(
    tape_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="Tape ids or unique prefixes."),
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(min=0, metavar="DAYS", help="Delete tapes created more than DAYS ago."),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Delete tapes with this tag.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: DbOption = None,
) -> None:
    """Delete tapes by id, or by age and/or tag. Forks of a deleted tape keep their steps."""
    by_filter = older_than is not None or tag is not None
    if tape_ids and by_filter:
        raise UsageError("Give tape ids, or --older-than/--tag, not both.")
    if not tape_ids and not by_filter:
        raise UsageError("Say which tapes to delete: tape ids, --older-than DAYS, --tag T.")
    from tapeagents.store import TapeFilter

    cutoff = time.time() - older_than * 86400 if older_than is not None else None
    chosen = TapeFilter(tag=tag, until=cutoff)
    with open_store(db) as store:
        if tape_ids:
            ids = list(dict.fromkeys(store.resolve_id(i) for i in tape_ids))
            count = len(ids)
            what = ", ".join(short_id(i) for i in ids)
        else:
            count = store.count(chosen)
            parts = [f"created more than {older_than:g} days ago"] if older_than is not None else []
            parts += [f"tagged {tag!r}"] if tag is not None else []
            what = " and ".join(parts)
        if count == 0:
            out().print("No tapes match; nothing deleted.")
            return
        plural = "" if count == 1 else "s"
        if not yes:
            typer.confirm(
                f"Delete {count} tape{plural} ({what}) from {store.display_url}?", abort=True
            )
        deleted = store.delete(ids) if tape_ids else store.delete_where(chosen)
    out().print(f"Deleted {deleted} tape{'' if deleted == 1 else 's'}.")


@app.command("import", rich_help_panel=PANEL)
def import_(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.jsonl",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A file written by `tapeagents export` (--format tapes).",
        ),
    ],
    db: DbOption = None,
) -> None:
    """Read tapes from a JSONL file written by `export`; tapes already stored are skipped."""
    with path.open(encoding="utf-8", errors="replace") as source:  # `import_jsonl` checks
        records = sum(1 for line in source if line.strip())
    with open_store(db, create=True) as store:
        count = store.import_jsonl(path)
        url = store.display_url
    skipped = records - count
    note = f" ({skipped} already in the store)" if skipped else ""
    out().print(f"Imported {count} tape{'' if count == 1 else 's'} into {url}{note}.")
