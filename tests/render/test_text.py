"""Tapes in the terminal: `print_tape`, and `tapeagents show` of a tape built to attack it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from tapeagents import FinalAnswer, Reasoning, Tape, TapeMetadata, ToolCall, UserMessage
from tapeagents.cli import app
from tapeagents.render import print_tape
from tapeagents.render.text import strip_controls
from tapeagents.steps import StepMetadata, load_step
from tapeagents.store import TapeStore

CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
TITLE = "\x1b]0;pwned\x07"  # retitle the window
LINK = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"  # a hidden hyperlink
C1_CSI = "\x9b31m"  # the 8-bit form of ESC [
OVERWRITE = "safe\rEVIL"  # a carriage return writes over the line
BELL = "\x07\x08\x7f"
ATTACKS = [CLEAR, TITLE, LINK, C1_CSI, OVERWRITE, BELL]


def test_strip_controls_keeps_text_newlines_and_tabs() -> None:
    assert strip_controls(f"a{CLEAR}b") == "ab"
    assert strip_controls(f"x{TITLE}y") == "xy"
    assert strip_controls(LINK) == "click"
    assert strip_controls(f"red {C1_CSI}text") == "red text"
    assert strip_controls(OVERWRITE) == "safeEVIL"
    assert strip_controls("lines\r\nand\ttabs\n") == "lines\nand\ttabs\n"
    assert strip_controls("ok \x1b[12") == "ok 12"  # a cut-off sequence loses its escape
    assert strip_controls("é ü 漢 → ✓") == "é ü 漢 → ✓"


def test_print_tape_prints_a_table_of_steps() -> None:
    tape = Tape(
        steps=[
            UserMessage(content="2 + 3?"),
            ToolCall(name="add", arguments={"a": 2, "b": 3}),
            FinalAnswer(answer="5", metadata=StepMetadata(agent="calc", node="answer")),
        ]
    )
    out = io.StringIO()
    print_tape(tape, console=Console(file=out, width=120))
    text = out.getvalue()
    assert f"Tape {tape.id}" in text
    assert 'add({"a": 2, "b": 3})' in text and "calc/answer" in text and "final_answer" in text


def test_show_of_a_hostile_tape_sends_no_control_sequence(tmp_path: Path) -> None:
    everything = "".join(ATTACKS)
    tape = Tape(
        author=TITLE,
        context={"task": everything},
        metadata=TapeMetadata(tags=[TITLE], result=everything),
        steps=[
            UserMessage(content=everything),
            Reasoning(text=CLEAR, metadata=StepMetadata(agent=TITLE, node=C1_CSI)),
            load_step({"kind": f"evil{CLEAR}", "text": LINK}),
        ],
    )
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    with TapeStore(url) as store:
        store.save(tape, status="stopped", agent=TITLE)
    runner = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "200"})
    outputs = {}
    commands = {"show": ["show", tape.id, "--full"], "json": ["show", tape.id, "--json"]}
    commands["ls"] = ["ls"]
    for command, argv in commands.items():
        result = runner.invoke(app, [*argv, "--db", url])
        assert result.exit_code == 0, result.output
        for control in ("\x1b", "\x9b", "\x07", "\x08", "\r", "\x7f"):
            assert control not in result.output, (command, repr(control))
        outputs[command] = result.output
    assert "click" in outputs["show"] and "safeEVIL" in outputs["show"]  # the text stays
    assert "pwned" not in outputs["ls"]  # a whole title sequence is dropped, with its text
    assert json.loads(outputs["json"])["steps"][0]["content"] == everything  # escaped, intact
