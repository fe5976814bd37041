"""The llama.cpp engine under `LocalLLM`: one model, one context, many sequences decoded together.

Every `LocalLLM` on the same GGUF file and adapter shares one `LlamaEngine`. A worker thread
owns the llama.cpp context and runs a continuous batch: each turn it feeds every active
sequence its next tokens (a new prompt in chunks, or the token just sampled) in one
`llama_decode`, then samples each sequence's next token. So concurrent sessions (`run_batch`,
the studio, `tapeagents serve`) share the model instead of taking turns, and one session is not
slower for it.

The engine takes token ids, not text: prompts are rendered and tokenized by the model's Hugging
Face tokenizer (`chat.py`), exactly as the exporter renders them, and llama.cpp's vocabulary has
the same ids. Sampling is done here, in numpy, from the raw logits: greedy at temperature 0,
else plain sampling at that temperature from a generator seeded per request; the logprobs
reported are the model's own (before temperature), with top-k alternatives on request. A
grammar (`grammar.py`) masks what a sequence may write next.

Each sequence slot keeps the tokens it last held in the KV cache; a new request takes the free
slot that shares the longest prefix with its prompt and only the rest is computed. An agent's
next turn, which resends the conversation so far, costs only its new messages.

Floating point: llama.cpp's results depend slightly on how tokens are batched (about 1e-3 in a
logprob), so a greedy answer computed beside other sequences or on a reused cache can differ
from a lone fresh one where two tokens are nearly tied. Seeded sampling computes its prompt
afresh, so the same request on an idle engine gives the same answer every time.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapeagents.errors import LLMError, UsageError

__all__ = ["EngineResult", "LlamaEngine", "f16_weights", "import_llama_cpp", "shared_engine"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tapeagents[local]'"
CLOSING_RESERVE = 16
"""Under a grammar, the last tokens of the budget close what is open (strings, objects,
arrays) where the grammar allows, so an answer that ran long still parses."""
CHUNK = 512
"""Most prompt tokens one sequence feeds per turn (so running sequences keep decoding while a
long prompt is read, and at most this many rows of logits are kept for scoring)."""


def import_llama_cpp() -> Any:
    """The `llama_cpp` module, or a UsageError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as error:
        raise UsageError(
            f"The llama.cpp engine needs llama-cpp-python ({error}). Install it with "
            f"{INSTALL_HINT}, or use LocalLLM(engine='transformers')."
        ) from error
    return llama_cpp


@dataclass
class EngineResult:
    """Token ids the engine produced (or scored), and each one's logprob."""

    ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]] | None
    """Per position, the `top_logprobs` most likely (token id, logprob), most likely first."""
    prompt_tokens: int
    reused_tokens: int
    """Prompt tokens that were already in the slot's cache."""


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    max_new_tokens: int = 0
    temperature: float = 0.0
    seed: int | None = None
    top_logprobs: int = 0
    grammar: str | None = None
    score_from: int | None = None
    """Scoring: the logprob of every token from this index on (no generation)."""
    on_token: Callable[[int], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: concurrent.futures.Future[EngineResult] = field(default_factory=concurrent.futures.Future)


class _Slot:
    """One sequence of the context: the tokens its cache holds and the request it serves."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []
        self.request: _Request | None = None
        self.pending: list[int] = []
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[list[tuple[int, float]]] = []
        self.reused = 0
        self.rng: Any = None
        self.sampler: Any = None


class LlamaEngine:
    """A GGUF model in llama.cpp, serving token-level requests from any thread.

    Args:
        gguf: The model file.
        lora: A GGUF LoRA adapter file applied to every request, or None.
        slots: Sequences decoded together; more requests wait for a free slot.
        slot_context: Tokens each sequence may hold (prompt and answer).
        threads: CPU threads for llama.cpp.
    """

    def __init__(
        self,
        gguf: Path,
        *,
        lora: Path | None = None,
        slots: int = 16,
        slot_context: int = 4096,
        threads: int = 2,
    ) -> None:
        import numpy as np

        self._np = np
        self._ll = ll = import_llama_cpp()
        ll.llama_backend_init()
        _silence_logs(ll)
        model_params = ll.llama_model_default_params()
        self._model = ll.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self._model:
            raise UsageError(f"llama.cpp cannot load {gguf}: is it a GGUF model file?")
        self.context_window: int = min(slot_context, ll.llama_model_n_ctx_train(self._model))
        params = ll.llama_context_default_params()
        params.n_ctx = self.context_window * slots
        params.n_seq_max = slots
        params.n_batch = max(CHUNK * 2, slots)
        params.n_ubatch = CHUNK
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # each sequence attends to its own cache only
        params.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, params)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise LLMError(f"llama.cpp could not create a context for {gguf} (out of memory?).")
        self._adapter = None
        if lora is not None:
            self._adapter = ll.llama_adapter_lora_init(self._model, str(lora).encode())
            if not self._adapter:
                raise UsageError(f"llama.cpp cannot load the LoRA adapter {lora}.")
            adapters = (ll.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            scales = (ctypes.c_float * 1)(1.0)
            ll.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        self._memory = ll.llama_get_memory(self._ctx)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self._eog = np.array(
            [ll.llama_vocab_is_eog(self._vocab, i) for i in range(self.n_vocab)], dtype=bool
        )
        self._batch = ll.llama_batch_init(params.n_batch, 0, 1)
        self._batch_size = params.n_batch
        # One candidates array for grammar masking, reused: (id, logit, p) as llama.cpp lays it.
        self._candidates: Any = np.zeros(
            self.n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)])
        )
        self._candidates["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._one: Any = np.zeros(1, dtype=self._candidates.dtype)
        self._closing = np.array(
            [i for i in range(self.n_vocab) if _closes(self._piece(i))], dtype=np.intc
        )
        self._slots = [_Slot(i) for i in range(slots)]
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._waiting: list[_Request] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="llama.cpp engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ requests

    def generate(
        self,
        tokens: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        top_logprobs: int = 0,
        grammar: str | None = None,
        on_token: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> concurrent.futures.Future[EngineResult]:
        """Generate after `tokens` until an end-of-generation token (included in the result),
        `max_new_tokens`, or `stop` is set. `on_token` is called (in the engine's thread) with
        each new token as it is sampled."""
        if not tokens:
            raise UsageError("A prompt needs at least one token.")
        self._check_fits(len(tokens) + max_new_tokens)
        request = _Request(
            tokens=list(tokens),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            top_logprobs=top_logprobs,
            grammar=grammar,
            on_token=on_token,
            stop=stop or threading.Event(),
        )
        return self._submit(request)

    def score(
        self, tokens: list[int], start: int, *, top_logprobs: int = 0
    ) -> concurrent.futures.Future[EngineResult]:
        """The logprob of each of `tokens[start:]` given the tokens before it (`start` >= 1)."""
        if not 1 <= start < len(tokens) + 1:
            raise UsageError(f"Scoring starts after the first token, got start={start}.")
        self._check_fits(len(tokens))
        return self._submit(
            _Request(tokens=list(tokens), score_from=start, top_logprobs=top_logprobs)
        )

    def close(self) -> None:
        """Stop the worker and free the model (pending requests fail)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _check_fits(self, total: int) -> None:
        if total > self.context_window:
            from tapeagents.errors import ContextWindowExceeded

            raise ContextWindowExceeded(
                f"{total} tokens exceed the engine's context of {self.context_window} tokens per "
                "sequence. Shorten the prompt or lower max_new_tokens."
            )

    def _submit(self, request: _Request) -> concurrent.futures.Future[EngineResult]:
        if self._closed:
            raise UsageError("This llama.cpp engine is closed.")
        self._queue.put(request)
        return request.done

    # ------------------------------------------------------------------ worker

    def _serve(self) -> None:
        try:
            while self._take_requests():
                self._admit()
                if any(slot.request is not None for slot in self._slots):
                    self._turn()
        except BaseException as error:  # noqa: BLE001 - every waiting caller must hear of it
            logger.exception("The llama.cpp engine stopped")
            self._fail_all(LLMError(f"The llama.cpp engine stopped: {error}"))
        finally:
            self._free()

    def _take_requests(self) -> bool:
        """Move queued requests to the waiting list; block when there is nothing to do.
        False when the engine is closing."""
        busy = any(slot.request is not None for slot in self._slots) or self._waiting
        try:
            item = self._queue.get(block=not busy)
            while True:
                if item is None:
                    self._fail_all(LLMError("The llama.cpp engine was closed."))
                    return False
                self._waiting.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return True

    def _admit(self) -> None:
        """Give waiting requests the free slots whose caches share the most with them."""
        while self._waiting:
            free = [slot for slot in self._slots if slot.request is None]
            if not free:
                return
            request = self._waiting.pop(0)
            if request.done.cancelled() or request.stop.is_set():
                request.done.cancel()
                continue
            if request.seed is not None and request.temperature > 0:
                # Reproducible: the prompt is computed whole, as the first time. (A reused
                # cache gives the same answer up to float rounding, which can change a draw.)
                slot, keep = min(free, key=lambda s: len(s.cached)), 0
            else:
                slot = max(free, key=lambda s: _common_prefix(s.cached, request.tokens))
                limit = (
                    request.score_from if request.score_from is not None else len(request.tokens)
                )
                keep = min(_common_prefix(slot.cached, request.tokens), limit - 1)
            self._ll.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1)
            del slot.cached[keep:]
            slot.request = request
            slot.pending = request.tokens[keep:]
            slot.ids, slot.logprobs, slot.top = [], [], []
            slot.reused = keep
            slot.rng = self._np.random.default_rng(request.seed)
            slot.sampler = self._grammar_sampler(request.grammar) if request.grammar else None

    def _turn(self) -> None:
        """Feed every active sequence its next tokens in one decode, then read the logits."""
        batch = self._batch
        outputs: list[tuple[_Slot, int, int]] = []  # slot, batch index, token position
        n = 0
        for slot in self._slots:
            request = slot.request
            if request is None or not slot.pending:
                continue
            take = slot.pending[: min(CHUNK, self._batch_size - n)]
            if not take:
                break
            start = len(slot.cached)
            for offset, token in enumerate(take):
                position = start + offset
                last = offset == len(take) - 1
                if request.score_from is not None:  # the rows that predict a scored token
                    wanted = request.score_from <= position + 1 < len(request.tokens)
                else:  # the row after the whole prompt
                    wanted = last and len(take) == len(slot.pending)
                batch.token[n] = token
                batch.pos[n] = position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = wanted
                if wanted:
                    outputs.append((slot, n, position))
                n += 1
            slot.cached.extend(take)
            del slot.pending[: len(take)]
        if n == 0:
            return
        batch.n_tokens = n
        status = self._ll.llama_decode(self._ctx, batch)
        if status != 0:
            raise LLMError(f"llama_decode failed with status {status}.")
        for slot, index, position in outputs:
            request = slot.request
            assert request is not None
            row = self._np.ctypeslib.as_array(
                self._ll.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,)
            )
            if request.score_from is not None:
                self._score_row(slot, request, row, position)
            else:
                self._sample(slot, request, row)
        for slot in self._slots:
            request = slot.request
            if request is not None and request.score_from is not None and not slot.pending:
                self._finish(slot)

    def _score_row(self, slot: _Slot, request: _Request, row: Any, position: int) -> None:
        target = request.tokens[position + 1]
        logprobs = _log_softmax(self._np, row)
        slot.ids.append(target)
        slot.logprobs.append(float(logprobs[target]))
        if request.top_logprobs:
            slot.top.append(_top(self._np, logprobs, request.top_logprobs))

    def _sample(self, slot: _Slot, request: _Request, row: Any) -> None:
        np = self._np
        logprobs = _log_softmax(np, row)
        token = self._choose(slot, request, row, logprobs)
        slot.ids.append(token)
        slot.logprobs.append(float(logprobs[token]))
        if request.top_logprobs:
            slot.top.append(_top(np, logprobs, request.top_logprobs))
        end = bool(self._eog[token])
        if not end and request.on_token is not None:
            request.on_token(token)
        if end or len(slot.ids) >= request.max_new_tokens or request.stop.is_set():
            self._finish(slot)
        else:
            slot.pending = [token]

    def _choose(self, slot: _Slot, request: _Request, row: Any, logprobs: Any) -> int:
        """The next token: greedy or sampled, among what the grammar allows."""
        np = self._np
        token = self._draw(slot, request, logprobs)
        if slot.sampler is None:
            return token
        if request.max_new_tokens - len(slot.ids) <= CLOSING_RESERVE:
            closing = self._close(slot, row)
            if closing is not None:
                self._ll.llama_sampler_accept(slot.sampler, closing)
                return closing
        if not self._allowed(slot.sampler, token, row):
            candidates = self._candidates
            candidates["logit"] = row
            self._apply(slot.sampler, candidates)
            masked = candidates["logit"]
            if not np.isfinite(masked).any():
                raise LLMError("The grammar allows no next token: the grammar is inconsistent.")
            token = self._draw(slot, request, masked - np.logaddexp.reduce(masked))
        self._ll.llama_sampler_accept(slot.sampler, token)
        return token

    def _close(self, slot: _Slot, row: Any) -> int | None:
        """The likeliest token made only of closing characters that the grammar allows."""
        np = self._np
        candidates = np.zeros(len(self._closing), dtype=self._candidates.dtype)
        candidates["id"] = self._closing
        candidates["logit"] = row[self._closing]
        self._apply(slot.sampler, candidates)
        allowed = np.isfinite(candidates["logit"])
        if not allowed.any():
            return None
        return int(candidates["id"][np.argmax(np.where(allowed, candidates["logit"], -np.inf))])

    def _piece(self, token: int) -> str:
        buffer = ctypes.create_string_buffer(64)
        size = self._ll.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        return buffer.raw[: max(size, 0)].decode("utf-8", "replace")

    def _draw(self, slot: _Slot, request: _Request, logprobs: Any) -> int:
        np = self._np
        if request.temperature <= 0:
            return int(np.argmax(logprobs))
        scaled = logprobs / request.temperature
        probabilities = np.exp(scaled - scaled.max())
        cumulative = np.cumsum(probabilities, dtype=np.float64)
        point = slot.rng.random() * cumulative[-1]
        return int(min(np.searchsorted(cumulative, point, side="right"), len(cumulative) - 1))

    def _allowed(self, sampler: Any, token: int, row: Any) -> bool:
        one = self._one
        one["id"][0], one["logit"][0], one["p"][0] = token, row[token], 0.0
        self._apply(sampler, one)
        return bool(self._np.isfinite(one["logit"][0]))

    def _apply(self, sampler: Any, candidates: Any) -> None:
        ll = self._ll
        array = ll.llama_token_data_array(
            data=candidates.ctypes.data_as(ll.llama_token_data_p),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        ll.llama_sampler_apply(sampler, ctypes.byref(array))

    def _grammar_sampler(self, grammar: str) -> Any:
        sampler = self._ll.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise UsageError(f"llama.cpp rejected the grammar:\n{grammar}")
        return sampler

    def _finish(self, slot: _Slot) -> None:
        request = slot.request
        assert request is not None
        slot.request = None
        slot.pending = []
        if slot.sampler is not None:
            self._ll.llama_sampler_free(slot.sampler)
            slot.sampler = None
        result = EngineResult(
            ids=slot.ids,
            logprobs=slot.logprobs,
            top=slot.top if request.top_logprobs else None,
            prompt_tokens=len(request.tokens),
            reused_tokens=slot.reused,
        )
        if not request.done.cancelled():
            request.done.set_result(result)

    def _fail_all(self, error: Exception) -> None:
        for slot in self._slots:
            if slot.request is not None and not slot.request.done.done():
                slot.request.done.set_exception(error)
            slot.request = None
        for request in self._waiting:
            if not request.done.done():
                request.done.set_exception(error)
        self._waiting = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and not item.done.done():
                item.done.set_exception(error)

    def _free(self) -> None:
        ll = self._ll
        self._closed = True
        for slot in self._slots:
            if slot.sampler is not None:
                ll.llama_sampler_free(slot.sampler)
                slot.sampler = None
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)


def _closes(piece: str) -> bool:
    """Whether a token's text only closes JSON values: quotes, braces, brackets, spaces."""
    return bool(piece.strip()) and set(piece) <= set('"}] ')


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _log_softmax(np: Any, row: Any) -> Any:
    high = row.max()
    return row - (high + np.log(np.exp(row - high).sum()))


def _top(np: Any, logprobs: Any, k: int) -> list[tuple[int, float]]:
    k = min(k, len(logprobs))
    best = np.argpartition(logprobs, -k)[-k:]
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in best]


_log_callback: Any = None


def _silence_logs(ll: Any) -> None:
    """Route llama.cpp's own logging (very chatty on load) to nowhere, once."""
    global _log_callback
    if _log_callback is None:
        _log_callback = ll.llama_log_callback(lambda level, text, data: None)
        ll.llama_log_set(_log_callback, ctypes.c_void_p(0))


UNQUANTIZED_TYPES = {0, 1, 32}
"""GGUF `general.file_type`s whose weights are not quantized: F32, F16, BF16."""


def f16_weights(gguf: Path) -> Path:
    """`gguf` with its quantized weights stored as f16: written once into the cache.

    llama.cpp computes a quantized matrix product on 8-bit quantized activations. For a
    model as small as SmolLM2-135M that changes about one greedy token in thirty from what
    the same weights give in transformers (where fine-tuning and the exporter run), enough to
    turn "The capital of France is Paris." into a French poem. As f16 the answers agree.
    """
    import gguf as gguf_format

    from tapeagents.llms.local.weights import cache_dir, cached_file, file_stamp

    reader = gguf_format.GGUFReader(str(gguf))
    field = reader.fields.get("general.file_type")
    if field is not None and int(field.parts[field.data[0]][0]) in UNQUANTIZED_TYPES:
        return gguf
    target = cache_dir() / "models" / f"{gguf.stem.lower()}-{file_stamp(gguf)}-f16.gguf"

    def write(tmp: Path) -> None:
        ll = import_llama_cpp()
        _silence_logs(ll)
        params = ll.llama_model_quantize_default_params()
        params.ftype = 1  # LLAMA_FTYPE_MOSTLY_F16
        params.allow_requantize = True
        params.nthread = 2
        source, out = str(gguf).encode(), str(tmp).encode()
        status = ll.llama_model_quantize(source, out, ctypes.byref(params))
        if status != 0:
            raise UsageError(
                f"llama.cpp could not read {gguf} (status {status}): is it a GGUF model?"
            )

    return cached_file(target, write)


_ENGINES: dict[tuple[str, str | None], LlamaEngine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(gguf: Path, lora: Path | None = None, **options: Any) -> LlamaEngine:
    """The process's engine for `gguf` (with `lora`), started on first use."""
    key = (str(Path(gguf).resolve()), str(Path(lora).resolve()) if lora else None)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine._closed:
            engine = _ENGINES[key] = LlamaEngine(gguf, lora=lora, **options)
        return engine
