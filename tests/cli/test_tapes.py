"""`tapeagents ls / show / fork / rm / export / import` against a store filled by real runs."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from tapeagents.store import TapeStore
from tests.cli.conftest import Invoke, make_invoke


def rows(output: str) -> list[str]:
    """The table rows of `ls` output (lines that start with a box border and a short id)."""
    return [line for line in output.splitlines() if line.startswith("│")]


def test_ls_lists_newest_first_with_a_page_line(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("ls")
    assert result.exit_code == 0, result.output
    listed = rows(result.output)
    assert [line.split("│")[1].strip() for line in listed] == [
        ids[name][:8] for name in ["calc", "bye", "weather", "hello"]
    ]
    assert "calc" in listed[0] and "stopped" in listed[0] and " 4 " in listed[0]
    assert "demo, weather" in listed[2]
    assert "page 1 of 1 (4 tapes)" in result.output


def test_ls_filters(cli: Invoke, ids: dict[str, str]) -> None:
    def listed(*args: str) -> set[str]:
        result = cli("ls", *args)
        assert result.exit_code == 0, result.output
        return {line.split("│")[1].strip() for line in rows(result.output)}

    short = {name: tape_id[:8] for name, tape_id in ids.items()}
    assert listed("--agent", "calc") == {short["calc"]}
    assert listed("--status", "awaiting_input") == {short[n] for n in ["hello", "weather", "bye"]}
    assert listed("--tag", "demo") == {short["hello"], short["weather"]}
    assert listed("--search", "weather") == {short["weather"]}
    assert listed("--agent", "chat", "--tag", "weather") == {short["weather"]}
    today = date.today()
    assert len(listed("--since", today.isoformat())) == 4
    assert len(listed("--until", today.isoformat())) == 4  # a bare date includes that day
    assert listed("--until", (today - timedelta(days=1)).isoformat()) == set()
    assert listed("--since", f"{today + timedelta(days=1)}T00:00") == set()
    assert "No tapes match these filters." in cli("ls", "--agent", "nobody").output


def test_ls_pages(cli: Invoke, ids: dict[str, str]) -> None:
    first, last = cli("ls", "--limit", "3"), cli("ls", "--limit", "3", "--page", "2")
    assert len(rows(first.output)) == 3 and "page 1 of 2 (4 tapes)" in first.output
    assert len(rows(last.output)) == 1 and "page 2 of 2 (4 tapes)" in last.output
    assert ids["hello"][:8] in last.output
    beyond = cli("ls", "--limit", "3", "--page", "3")
    assert beyond.exit_code == 2
    assert "Page 3 is past the last page: 4 tapes make 2 pages of 3." in beyond.output


def test_ls_rejects_a_bad_date(cli: Invoke) -> None:
    result = cli("ls", "--since", "last tuesday")
    assert result.exit_code == 2
    assert "not a date" in result.output and "2025-01-31" in result.output


def test_show_by_prefix_renders_steps_and_calls(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("show", ids["calc"][:5], "--calls")
    assert result.exit_code == 0, result.output
    out = result.output
    assert ids["calc"] in out and "stopped" in out
    for text in ["2+3?", "tool_call", 'add({"a": 2, "b": 3})', "tool_result", "final_answer"]:
        assert text in out
    lines = out.splitlines()
    call_lines = [i for i, line in enumerate(lines) if "llm call" in line]
    assert len(call_lines) == 2 and "scripted" in lines[call_lines[0]]
    # each call is shown right under the step it produced
    assert "tool_call" in lines[call_lines[0] - 1] and "final_answer" in lines[call_lines[1] - 1]
    assert "2 LLM calls" in out
    assert "llm call" not in cli("show", ids["calc"][:5]).output


def test_show_json_is_the_tape(cli: Invoke, filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled
    result = cli("show", ids["hello"][:8], "--json")
    assert result.exit_code == 0, result.output
    store = TapeStore(url)
    try:
        assert json.loads(result.stdout) == store.get(ids["hello"]).model_dump(mode="json")
    finally:
        store.close()
    with_calls = json.loads(cli("show", ids["hello"], "--json", "--calls").stdout)
    assert [c["model"] for c in with_calls["llm_calls"]] == ["scripted"]


def test_show_a_missing_id_is_a_clear_error(cli: Invoke) -> None:
    result = cli("show", "ffffffff")
    assert result.exit_code == 2
    assert "No tape 'ffffffff'" in result.stderr and "tapeagents ls" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_a_missing_store_file_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = make_invoke(str(missing))("ls")
    assert result.exit_code == 2
    assert f"No tape store at {missing}" in result.stderr
    assert not missing.exists()


def test_the_db_comes_from_the_environment(filled: tuple[str, dict[str, str]]) -> None:
    from typer.testing import CliRunner

    from tapeagents.cli import app

    result = CliRunner(env={"TAPEAGENTS_DB": filled[0], "COLUMNS": "200"}).invoke(app, ["ls"])
    assert result.exit_code == 0 and "(4 tapes)" in result.output


def test_fork_then_ls_and_show_the_lineage(fresh: tuple[str, dict[str, str]]) -> None:
    url, ids = fresh
    cli = make_invoke(url)
    result = cli("fork", ids["calc"][:8], "--at", "2")
    assert result.exit_code == 0, result.output
    child = result.stdout.strip()
    assert len(child) == 32
    listed = [line for line in rows(cli("ls").output) if child[:8] in line]
    assert len(listed) == 1 and f"{ids['calc'][:8]}@2" in listed[0] and "forked" in listed[0]
    shown = cli("show", child[:8]).output
    assert f"{ids['calc'][:8]} at step 2" in shown
    assert "tool_call" in shown and "tool_result" not in shown
    assert f"{child[:8]} at step 2" in cli("show", ids["calc"]).output  # children


def test_fork_out_of_range_shows_the_store_error(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("fork", ids["calc"], "--at", "9")
    assert result.exit_code == 2
    assert "it has 4 steps (valid: 0 to 4)" in result.stderr


def test_rm_by_id_and_by_tag(fresh: tuple[str, dict[str, str]]) -> None:
    url, ids = fresh
    cli = make_invoke(url)
    result = cli("rm", ids["bye"][:8], "--yes")
    assert result.exit_code == 0, result.output
    assert "Deleted 1 tape." in result.output
    assert ids["bye"][:8] not in cli("ls").output
    declined = cli("rm", "--tag", "demo", input="n\n")
    assert declined.exit_code == 1 and "Delete 2 tapes (tagged 'demo')" in declined.output
    assert "(2 tapes)" in cli("ls", "--tag", "demo").output
    assert "Deleted 2 tapes." in cli("rm", "--tag", "demo", input="y\n").output
    assert "(1 tape)" in cli("ls").output
    assert "nothing deleted" in cli("rm", "--older-than", "1", "--yes").output


def test_rm_needs_a_selection(cli: Invoke, ids: dict[str, str]) -> None:
    assert "Say which tapes to delete" in cli("rm", "--yes").stderr
    assert "not both" in cli("rm", ids["calc"], "--tag", "demo", "--yes").stderr


def test_export_then_import_into_a_fresh_store(
    filled: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = filled
    out = tmp_path / "tapes.jsonl"
    result = make_invoke(url)("export", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "Exported 4 tapes" in result.output and len(out.read_text().splitlines()) == 4

    target = tmp_path / "copy.db"
    copy = make_invoke(str(target))  # a bare path is a SQLite file
    imported = copy("import", str(out))
    assert imported.exit_code == 0, imported.output
    assert "Imported 4 tapes" in imported.output
    assert "already in the store" in copy("import", str(out)).output
    for tape_id in ids.values():
        assert (
            copy("show", tape_id, "--json").stdout
            == make_invoke(url)("show", tape_id, "--json").stdout
        )
    assert "(4 tapes)" in copy("ls").output

    some = tmp_path / "some.jsonl"
    make_invoke(url)("export", ids["calc"][:6], "-o", str(some))
    assert [json.loads(line)["tape"]["id"] for line in some.read_text().splitlines()] == [
        ids["calc"]
    ]


def test_import_of_a_missing_file(tmp_path: Path) -> None:
    result = make_invoke(str(tmp_path / "t.db"))("import", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_ls_and_show_tell_a_live_run_from_an_interrupted_one(
    fresh: tuple[str, dict[str, str]],
) -> None:
    import os

    url, ids = fresh
    cli = make_invoke(url)
    with TapeStore(url) as store:
        store.set_status(ids["hello"], "running")
        store.set_status(ids["bye"], "running")
        with store.lease(ids["hello"], ttl=60):  # a live run holds "hello"; "bye" was killed
            listed = {line.split("│")[1].strip(): line for line in rows(cli("ls").output)}
            assert f"running (live: pid {os.getpid()}" in listed[ids["hello"][:8]]
            assert "interrupted" in listed[ids["bye"][:8]]
            assert f"live: pid {os.getpid()}" in cli("show", ids["hello"]).output
        assert "interrupted" in cli("show", ids["hello"]).output  # released: nobody holds it
