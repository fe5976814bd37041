"""`tapeagents db` and `tapeagents version`."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import tapeagents
from tapeagents.cli import app
from tapeagents.store.schema import SCHEMA_VERSION
from tests.cli.conftest import Invoke, make_invoke


def test_db_info_shows_the_revision_and_counts(cli: Invoke) -> None:
    result = cli("db", "info")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"schema revision {SCHEMA_VERSION} (up to date)" in out
    assert "tapes 4" in out and "steps 10" in out and "llm calls 5" in out


def test_db_info_hides_the_password(tmp_path: Path) -> None:
    result = make_invoke("postgresql+psycopg://ann:secret@127.0.0.1:1/tapes")("db", "info")
    assert result.exit_code == 2
    assert "secret" not in result.output
    if "Cannot open" in result.output:  # psycopg is installed; the URL is shown, masked
        assert "ann:***@" in result.output


def test_db_upgrade_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    cli = make_invoke(str(tmp_path / "new.db"))
    created = cli("db", "upgrade")
    assert created.exit_code == 0, created.output
    assert "Created the tape store" in created.output
    assert "up to date" in cli("db", "upgrade").output
    assert "tapes 0" in " ".join(cli("db", "info").output.split())


def test_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["version"]).stdout.strip() == tapeagents.__version__
    help_text = runner.invoke(app, ["--help"]).output
    for command in ["ls", "show", "fork", "rm", "export", "import", "resume", "replay", "db"]:
        assert command in help_text
