"""The Python examples in the README and docs run, against a scripted model.

The `"local"` model string is pointed at a `ScriptedLLM` through the real model registry, so the
documented code runs unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tapeagents import llms
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def scripted_model(prompt: Prompt) -> LLMOutput:
    """Calls the first offered tool once with plausible arguments, then answers in text."""
    last = prompt.messages[-1]
    if last["role"] == "user" and prompt.tools and "+" in str(last["content"]):
        return LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')])
    return LLMOutput(content="Done.")


@pytest.fixture(autouse=True)
def local_is_scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(llms._BUILTIN, "local", lambda model: ScriptedLLM(scripted_model))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = BLOCK.findall(path.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for block in blocks:  # blocks of one page share a namespace, like a reader's session
        exec(compile(block, f"<{path.name}>", "exec", dont_inherit=True), namespace)
