"""Stored tapes load environment steps as their own types through `tapeagents.steps` plugins."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
from tapeagents import Tape, UnknownStep
tape = Tape.model_validate_json(sys.argv[1])
step = tape.steps[0]
print(json.dumps({
    "type": type(step).__name__,
    "unknown": isinstance(step, UnknownStep),
    "browser_steps_imported": "tapeagents.environments.browser.steps" in sys.modules,
    "same": step.model_dump(mode="json")["kind"],
}))
"""


def test_a_browser_step_loads_as_its_type_in_a_fresh_interpreter() -> None:
    tape = {"steps": [{"kind": "browser_click", "ref": "e3", "metadata": {"id": "s1"}}]}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(tape)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result == {
        "type": "Click",
        "unknown": False,
        "browser_steps_imported": True,
        "same": "browser_click",
    }


def test_an_unregistered_kind_is_still_kept_as_unknown() -> None:
    from tapeagents import Tape, UnknownStep

    tape = Tape.model_validate({"steps": [{"kind": "nobody_has_this", "x": 1}]})
    assert isinstance(tape.steps[0], UnknownStep)
    assert tape.steps[0].model_dump(mode="json")["x"] == 1
