"""The Python examples in the README and docs run, against a scripted model.

The `"local"` model string is pointed at a `ScriptedLLM` through the real model registry, so the
documented code runs unchanged.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

from tapeagents import llms
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.steps import step_kinds

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


# ----------------------------------------------------------------------------- the step reference


def _step_reference_generator() -> dict[str, Any]:
    """The namespace of scripts/gen_steps_doc.py (loaded, not run as a script)."""
    return runpy.run_path(str(ROOT / "scripts" / "gen_steps_doc.py"))


def test_the_step_reference_page_is_up_to_date() -> None:
    page = ROOT / "docs" / "steps.md"
    assert page.read_text(encoding="utf-8") == _step_reference_generator()["render"](), (
        "docs/steps.md is out of date: run python scripts/gen_steps_doc.py"
    )


def test_the_step_reference_documents_every_built_in_kind_and_field() -> None:
    page = (ROOT / "docs" / "steps.md").read_text(encoding="utf-8")
    built_in = {k: c for k, c in step_kinds().items() if c.__module__ == "tapeagents.steps"}
    assert {"user", "reasoning", "tool_call", "final_answer", "store_failure"} <= set(built_in)
    for kind, cls in built_in.items():
        section = page.split(f"### `{kind}`: `{cls.__name__}`\n", 1)[1].split("\n### ", 1)[0]
        for name in cls.model_fields:
            if name not in ("kind", "metadata"):
                assert f"| `{name}` |" in section, (kind, name)
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    undocumented = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented, "fields without a docstring in tapeagents/steps.py: " + "; ".join(
        undocumented
    )
    assert "(steps.md)" in (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert "(steps.md)" in (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the real local model


def test_the_first_example_prints_what_the_page_promises_on_the_local_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """getting-started's first agent, run on SmolLM2-135M itself instead of the scripted model:
    every `print(...)  # value` line of the block prints the value its comment promises."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tapeagents.llms import LocalLLM

    block = BLOCK.findall((ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8"))[0]
    assert block.count('llms="local"') == 1
    namespace: dict[str, Any] = {"__name__": "docs_getting_started", "LOCAL": LocalLLM()}
    code = block.replace('llms="local"', "llms=LOCAL")  # the real model, not the fixture's
    exec(compile(code, "<getting-started.md>", "exec", dont_inherit=True), namespace)
    printed = capsys.readouterr().out.splitlines()
    promised = [
        line.split("# ", 1)[1]
        for line in block.splitlines()
        if line.startswith("print(") and "# " in line
    ]
    assert len(printed) == len(promised) == 2
    for shown, promise in zip(printed, promised, strict=True):
        assert promise.startswith(shown), (shown, promise)
    assert namespace["result"].tape[2].content == "5"  # the tool's answer to 2 + 3
