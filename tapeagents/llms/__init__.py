"""LLM backends and the records of their calls.

Pick a backend by class, or by a model string with `resolve_llm`:

- `"litellm:<model>"`: any model litellm knows (hosted or self-hosted);
- `"local:<model>"` or `"local"`: transformers on this machine, SmolLM2-135M-Instruct by default;
- `"scripted"`: a `ScriptedLLM` that answers "OK" (tests);
- `"test"`: a `TestLLM` that calls every offered tool once, then answers (tests).

Other packages add prefixes through the `tapeagents.llms` entry-point group: each entry point
names a callable that takes the text after the prefix and returns an `LLM`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tapeagents.errors import UsageError
from tapeagents.llms.base import (
    LLM,
    LLMCall,
    LLMOutput,
    Prompt,
    TextDelta,
    TokenLogprob,
    ToolCallRequest,
    TopLogprob,
    Usage,
)
from tapeagents.llms.cache import CachedLLM
from tapeagents.llms.limits import RateLimit
from tapeagents.llms.replay import ReplayLLM
from tapeagents.llms.scripted import ScriptedLLM, tool_call
from tapeagents.llms.testing import TestLLM

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from tapeagents.llms.litellm import LiteLLM
    from tapeagents.llms.local import LocalLLM
    from tapeagents.llms.openai_compat import OpenAICompatLLM

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    # The heavy backends' modules are cheap, but keep them out of `import tapeagents` entirely.
    if name == "LiteLLM":
        from tapeagents.llms.litellm import LiteLLM

        return LiteLLM
    if name == "LocalLLM":
        from tapeagents.llms.local import LocalLLM

        return LocalLLM
    if name == "OpenAICompatLLM":
        from tapeagents.llms.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM
    raise AttributeError(f"module 'tapeagents.llms' has no attribute {name!r}")


def _litellm(model: str) -> LLM:
    if not model:
        raise UsageError("Name the litellm model after the prefix, e.g. 'litellm:gpt-4o-mini'.")
    from tapeagents.llms.litellm import LiteLLM

    return LiteLLM(model)


def _local(model: str) -> LLM:
    from tapeagents.llms.local import LocalLLM

    return LocalLLM(model) if model else LocalLLM()


def _scripted(model: str) -> LLM:
    return ScriptedLLM(lambda prompt: "OK", model=model or "scripted")


def _test(model: str) -> LLM:
    return TestLLM(model=model or "test")


_BUILTIN: dict[str, Callable[[str], LLM]] = {
    "litellm": _litellm,
    "local": _local,
    "scripted": _scripted,
    "test": _test,
}
_plugins: dict[str, EntryPoint] | None = None


def _plugin_entry_points() -> dict[str, EntryPoint]:
    """The `tapeagents.llms` entry points by prefix, read on first use (not at import)."""
    global _plugins
    if _plugins is None:
        from importlib.metadata import entry_points

        _plugins = {ep.name: ep for ep in entry_points(group="tapeagents.llms")}
    return _plugins


def resolve_llm(spec: str | LLM) -> LLM:
    """Turn a model string such as `"litellm:gpt-4o-mini"` into an `LLM` (an LLM passes through)."""
    if isinstance(spec, LLM):
        return spec
    prefix, _, model = spec.partition(":")
    builtin = _BUILTIN.get(prefix)
    if builtin is not None:
        return builtin(model)
    plugins = _plugin_entry_points()
    entry = plugins.get(prefix)
    if entry is None:
        known = sorted({*plugins, *_BUILTIN})
        close = difflib.get_close_matches(prefix, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"Unknown model prefix {prefix!r} in {spec!r}.{hint} "
            f"Known prefixes: {', '.join(known)} (write 'prefix:model')."
        )
    factory: Callable[[str], LLM] = entry.load()
    return factory(model)
