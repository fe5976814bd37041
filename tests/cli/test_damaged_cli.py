"""Damaged data through the `tapeagents` command: one line on stderr naming the tape (or the
file) and what to do, no traceback, exit code 2; an export writes every readable tape, lists
the others and exits with 1.

The damage is done with raw SQL on a real SQLite store filled by real runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import Result

from tapeagents import Tape, UserMessage
from tapeagents.store import TapeStore
from tapeagents.store.blobs import BLOB_MIN_LENGTH
from tests.cli.conftest import make_invoke

CHAT = "tests.cli.agents:chat_agent"


def damage(url: str, sql: str, *params: object) -> None:
    """Change the store's rows behind its back."""
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    with connection:
        connection.execute(sql, params)
    connection.close()


def refused(result: Result, *parts: str, code: int = 2) -> str:
    """The command failed with `code` and one `Error:` line holding every part."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


DAMAGED_STEPS = [
    # (kind or None to keep it, data, what the error says)
    ("alien", "[]", "step 1 has the unknown kind 'alien' and holds a JSON array"),
    ("alien", "null", "step 1 has the unknown kind 'alien' and holds null"),
    (None, "{broken", "step 1 (assistant) is corrupt: Invalid JSON"),
    (None, '{"content": 5}', "step 1 (assistant) is corrupt: content: Input should be"),
]


@pytest.mark.parametrize(("kind", "data", "reason"), DAMAGED_STEPS)
def test_show_resume_and_replay_of_a_damaged_step_name_the_tape(
    fresh: tuple[str, dict[str, str]], kind: str | None, data: str, reason: str
) -> None:
    url, ids = fresh
    bad = ids["hello"]
    damage(
        url,
        "UPDATE steps SET kind = COALESCE(?, kind), data = ? WHERE tape_id = ? AND idx = 1",
        kind,
        data,
        bad,
    )
    cli = make_invoke(url)
    said = f"Tape {bad} cannot be read: {reason}"
    refused(cli("show", bad[:8]), said, f"`tapeagents rm {bad}`")
    refused(cli("show", bad, "--json"), said)
    refused(cli("resume", bad[:8], "--agent", CHAT, "--message", "more"), said)
    refused(cli("replay", bad[:8], "--agent", CHAT), said)
    listed = cli("ls")  # the headers still list, and the other tapes still read
    assert listed.exit_code == 0 and "(4 tapes)" in listed.output
    assert cli("show", ids["bye"]).exit_code == 0
    assert cli("rm", bad, "--yes").exit_code == 0  # what the message says to do works
    assert "(3 tapes)" in cli("ls").output


def test_a_missing_long_text_names_the_tape_and_the_step(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    long = Tape(steps=[UserMessage(content="x" * (BLOB_MIN_LENGTH + 1))])
    with TapeStore(url) as store:
        store.save(long)
    damage(url, "DELETE FROM blobs")
    refused(
        make_invoke(url)("show", long.id),
        f"Tape {long.id} cannot be read: step 0 refers to the long text ",
        "which is missing from the blobs table",
    )


def test_a_damaged_llm_call_names_the_tape_the_step_and_the_call(
    fresh: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = fresh
    bad = ids["weather"]
    with TapeStore(url) as store:
        call_id = store.get(bad).steps[1].metadata.llm_call_id
    damage(url, "UPDATE llm_calls SET output = '{' WHERE id = ?", call_id)
    cli = make_invoke(url)
    said = f"Tape {bad} cannot be read: step 1 was made by the LLM call {call_id}, which has a"
    refused(cli("show", bad, "--calls"), said)
    refused(cli("replay", bad, "--agent", CHAT), said)
    assert cli("show", bad).exit_code == 0  # without the calls, the steps still show

    out = tmp_path / "eval.jsonl"
    result = cli("export", "--format", "eval", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "Wrote 3 evaluation records" in result.stdout
    assert {json.loads(line)["tape_id"] for line in out.read_text().splitlines()} == {
        ids[name] for name in ("hello", "bye", "calc")
    }
    assert f"tape {bad}: step 1 was made by the LLM call {call_id}" in result.stderr
    assert "Error: 1 tape was left out because the store cannot read it" in result.stderr


def test_export_writes_every_readable_tape_then_lists_the_others_and_exits_1(
    fresh: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = fresh
    damage(url, "UPDATE steps SET kind = 'alien', data = '5' WHERE tape_id = ?", ids["hello"])
    damage(url, "DELETE FROM steps WHERE tape_id = ? AND idx = 2", ids["calc"])
    out = tmp_path / "tapes.jsonl"
    result = make_invoke(url)("export", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"Exported 2 tapes to {out}." in result.stdout
    written = [json.loads(line)["tape"]["id"] for line in out.read_text().splitlines()]
    assert sorted(written) == sorted([ids["weather"], ids["bye"]])
    stderr = result.stderr
    assert "2 tapes were left out: the store cannot read them:" in stderr
    assert f"tape {ids['hello']}: step 0 has the unknown kind 'alien'" in stderr
    assert f"tape {ids['calc']}: it should have 4 steps but the store has 3" in stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: 2 tapes were left out")

    copy = make_invoke(str(tmp_path / "copy.db"))  # what was written imports
    assert "Imported 2 tapes" in copy("import", str(out)).stdout


NEWER = "written by a newer tapeagents (schema revision 9999; this one knows up to"


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["show", "{hello}"],
        ["resume", "{hello}", "--agent", CHAT, "--message", "more"],
        ["export", "--out", "{tmp}/t.jsonl"],
        ["import", "{tmp}/t.jsonl"],
        ["db", "info"],
        ["db", "upgrade"],
    ],
)
def test_a_store_of_a_newer_tapeagents_says_upgrade_for_every_command(
    fresh: tuple[str, dict[str, str]], tmp_path: Path, command: list[str]
) -> None:
    url, ids = fresh
    (tmp_path / "t.jsonl").write_text("")
    damage(url, "UPDATE alembic_version SET version_num = '9999'")
    args = [part.format(hello=ids["hello"], tmp=tmp_path) for part in command]
    refused(make_invoke(url)(*args), NEWER, "upgrade tapeagents (pip install -U tapeagents)")


@pytest.mark.parametrize("command", [["ls"], ["import", "{tmp}/t.jsonl"], ["db", "upgrade"]])
def test_another_applications_database_is_named_and_left_alone(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE users (id INTEGER)")
        connection.execute("CREATE TABLE orders (id INTEGER)")
    connection.close()
    (tmp_path / "t.jsonl").write_text("")
    args = [part.format(tmp=tmp_path) for part in command]
    refused(
        make_invoke(str(path))(*args),
        f"sqlite:///{path} is not a tape store: it holds other tables (orders, users)",
    )
    connection = sqlite3.connect(path)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert tables == {"users", "orders"}  # no store tables were added beside them


@pytest.mark.parametrize("command", [["ls"], ["show", "abc"], ["import", "{tmp}/t.jsonl"]])
def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "random.db"
    path.write_bytes(os.urandom(8192))
    (tmp_path / "t.jsonl").write_text("")
    args = [part.format(tmp=tmp_path) for part in command]
    refused(
        make_invoke(str(path))(*args),
        f"Cannot open the tape store at sqlite:///{path}: ",
        "file is not a database",
        "Check that the file is a tape store (a SQLite database)",
    )


def test_import_of_a_damaged_jsonl_file_names_the_line(
    filled: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = filled
    good = tmp_path / "good.jsonl"
    assert make_invoke(url)("export", ids["hello"], ids["bye"], "--out", str(good)).exit_code == 0
    damaged = tmp_path / "damaged.jsonl"
    lines = good.read_bytes().splitlines()
    damaged.write_bytes(b"\n".join([lines[0], b'{"tape": {"steps": 7}}', lines[1]]) + b"\n")
    copy = make_invoke(str(tmp_path / "copy.db"))
    refused(
        copy("import", str(damaged)),
        f"{damaged}, line 2: not a tape record (steps: Input should be a valid list)",
        "The lines before it were imported (1 new tape); fix or remove this line",
    )
    assert "(1 tape)" in copy("ls").output
    damaged.write_bytes(b"\xff\xfe\n")
    refused(copy("import", str(damaged)), f"{damaged}, line 1: not a tape record ('utf-8' codec")


def test_errors_are_one_line_however_narrow_the_terminal(fresh: tuple[str, dict[str, str]]) -> None:
    url, ids = fresh
    damage(url, "UPDATE steps SET data = '[]' WHERE tape_id = ? AND idx = 1", ids["bye"])
    from typer.testing import CliRunner

    from tapeagents.cli import app

    narrow = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "40"})
    result = narrow.invoke(app, ["show", ids["bye"], "--db", url])
    refused(result, f"Tape {ids['bye']} cannot be read: step 1 (assistant) is corrupt")


def test_ls_of_a_store_with_a_damaged_header_names_the_tape(
    fresh: tuple[str, dict[str, str]],
) -> None:
    url, ids = fresh
    damage(url, "UPDATE tapes SET length = 'many' WHERE id = ?", ids["weather"])
    cli = make_invoke(url)
    refused(
        cli("ls"),
        f"Tape {ids['weather']} cannot be read: its header is corrupt (length: Input should be",
        f"`tapeagents rm {ids['weather']}`",
    )
    assert cli("rm", ids["weather"], "--yes").exit_code == 0
    assert "(3 tapes)" in cli("ls").output
