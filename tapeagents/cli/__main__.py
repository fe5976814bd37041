"""`python -m tapeagents.cli`."""

from tapeagents.cli import app

app(prog_name="tapeagents")
