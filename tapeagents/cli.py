"""The `tapeagents` command line."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tapeagents",
    help="Build, debug and improve LLM agents around tapes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Build, debug and improve LLM agents around tapes."""


@app.command()
def version() -> None:
    """Print the installed version."""
    import tapeagents

    typer.echo(tapeagents.__version__)


if __name__ == "__main__":
    app()
