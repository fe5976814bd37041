"""The public surface: curated exports, and a light `import tapeagents`."""

from __future__ import annotations

import subprocess
import sys
import types

import tapeagents
import tapeagents.llms


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(tapeagents).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(tapeagents.__all__) == public
    for name in tapeagents.llms.__all__:
        assert getattr(tapeagents.llms, name) is not None


def test_llms_exports_the_backends_and_the_test_doubles() -> None:
    assert set(tapeagents.llms.__all__) == {
        "LLM",
        "CachedLLM",
        "LLMCall",
        "LLMOutput",
        "LiteLLM",
        "LocalLLM",
        "OpenAICompatLLM",
        "Prompt",
        "RateLimit",
        "ReplayLLM",
        "ScriptedLLM",
        "TestLLM",
        "TextDelta",
        "TokenLogprob",
        "ToolCallRequest",
        "TopLogprob",
        "Usage",
        "resolve_llm",
        "tool_call",
    }


def test_import_is_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import tapeagents, tapeagents.llms; "
        "elapsed = time.perf_counter() - t; "
        "heavy = [m for m in ('litellm', 'torch', 'transformers', 'playwright', 'ray', 'fastapi') "
        "if m in sys.modules]; "
        "print(heavy, elapsed)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, elapsed = out.stdout.rsplit(" ", 1)
    assert heavy == "[]"
    assert float(elapsed) < 1.0
