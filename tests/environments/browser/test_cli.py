"""`tapeagents miniwob`: runs episodes in a real Chromium, prints scores, stores the tapes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tapeagents.cli import app
from tapeagents.store import TapeFilter, TapeStore

runner = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "200"})


def test_scripted_episodes_are_scored_and_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    argv = ["miniwob", "--task", "click-button", "--task", "enter-text", "--episodes", "2"]
    result = runner.invoke(app, [*argv, "--concurrency", "2", "--db", url])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "click-button" in line]
    assert "100%" in rows[0]
    assert "Overall: 100.0% success over 4 episodes" in result.output
    with TapeStore(url) as store:
        tapes = store.list(TapeFilter(task_id="miniwob/enter-text", outcome="success"))
        assert len(tapes) == 2 and {t.agent for t in tapes} == {"miniwob-expert"}
        assert store.get(tapes[0].id).metadata.reward == 1.0


def test_llm_agent_runs_and_its_failures_are_scored(tmp_path: Path) -> None:
    # "scripted" answers "OK" to everything: plain text, which the web agent cannot use
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    argv = ["miniwob", "--task", "click-test", "--agent", "llm", "--model", "scripted"]
    result = runner.invoke(app, [*argv, "--episodes", "1", "--db", url])
    assert result.exit_code == 0, result.output
    assert "Overall: 0.0% success over 1 episodes" in result.output
    with TapeStore(url) as store:
        (summary,) = store.list(TapeFilter(task_id="miniwob/click-test"))
        assert (summary.outcome, summary.status) == ("failure", "error")
        assert store.get(summary.id).kinds()[-1] == "parsing_failure"


def test_bad_task_names_and_agents_are_explained() -> None:
    result = runner.invoke(app, ["miniwob", "--task", "click-buton", "--db", "sqlite://"])
    assert result.exit_code == 2
    assert "Unknown MiniWoB++ task 'click-buton'. Did you mean click-button" in result.output
    result = runner.invoke(app, ["miniwob", "--task", "click-pie", "--db", "sqlite://"])
    assert result.exit_code == 2 and "No scripted policy for click-pie" in result.output
    result = runner.invoke(app, ["miniwob", "--task", "click-button", "--agent", "gpt"])
    assert result.exit_code == 2 and "--agent must be 'scripted' or 'llm'" in result.output
    listing = runner.invoke(app, ["miniwob", "--list-tasks"])
    assert "click-button  (scripted policy)" in listing.output
    assert len(listing.output.splitlines()) == 130
