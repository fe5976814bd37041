"""The `tapeagents` command: list, inspect, fork, resume and replay stored tapes.

One module per command group: `tapes` (ls, show, fork, rm, export, import), `run` (resume,
replay) and `db` (upgrade, info); `common` holds the `--db` option and error reporting. Any
`TapeAgentsError` is printed in red on stderr with exit code 2, without a traceback.
"""

from __future__ import annotations

import typer

from tapeagents.cli import batch, db, miniwob, run, serve, studio, tapes
from tapeagents.cli import eval as eval_command
from tapeagents.cli import export as export_command
from tapeagents.cli import finetune as finetune_command
from tapeagents.cli.common import Group

__all__ = ["app"]

app = typer.Typer(
    name="tapeagents",
    cls=Group,
    help="Build, debug and improve LLM agents around tapes.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(tapes.app)
app.add_typer(export_command.app)
app.add_typer(finetune_command.app)
app.add_typer(run.app)
app.add_typer(batch.app)
app.add_typer(studio.app)
app.add_typer(serve.app)
app.add_typer(miniwob.app)
app.add_typer(eval_command.app, name="eval", rich_help_panel="Training and evaluation")
app.add_typer(db.app, name="db", rich_help_panel="Database")


@app.command(rich_help_panel="Other")
def version() -> None:
    """Print the installed version."""
    import tapeagents

    typer.echo(tapeagents.__version__)


if __name__ == "__main__":
    app()
