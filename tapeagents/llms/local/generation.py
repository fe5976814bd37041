"""Generating and scoring tokens with a loaded local model.

One model call runs at a time in this process (`GENERATE_LOCK`): the seeded sampler uses torch's
global RNG, and concurrent forward passes on a few CPU cores are slower than taking turns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tapeagents.llms.base import TokenLogprob
from tapeagents.llms.local.weights import LoadedModel, import_backend

__all__ = ["GENERATE_LOCK", "TextStreamer", "generate_ids", "score_ids", "token_logprobs"]

GENERATE_LOCK = threading.Lock()
"""Held during each forward pass of any local model in this process."""


class TextStreamer:
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


def generate_ids(
    loaded: LoadedModel,
    input_ids: list[int],
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int | None,
    streamer: TextStreamer | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[int], list[float]]:
    """Generate after `input_ids`; return the new token ids and their logprobs.

    Temperature 0 decodes greedily; above 0 it samples plainly (no top-k or top-p), from its own
    RNG state when seeded. Setting `stop` ends the generation at the next token.
    """
    torch, transformers = import_backend()
    sampling = temperature > 0
    config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        # Greedy decoding takes the library defaults, which raise no "unused" warnings.
        temperature=temperature if sampling else 1.0,
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
    seeded = sampling and seed is not None
    # A seeded call draws from its own RNG state, leaving the process's untouched.
    rng: AbstractContextManager[Any] = nullcontext()
    if seeded:
        cuda = loaded.device.startswith("cuda")
        rng = torch.random.fork_rng(
            devices=[torch.device(loaded.device).index or 0] if cuda else []
        )
    with GENERATE_LOCK, torch.inference_mode(), rng:
        if seeded:
            torch.manual_seed(seed)
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=config,
            streamer=streamer,
            stopping_criteria=stopping,
        )
    new_ids = out.sequences[0, len(input_ids) :].tolist()
    # Raw model logprobs (before temperature), the same numbers `score_ids` gives.
    logprobs = [
        float(torch.log_softmax(step[0].float(), dim=-1)[token])
        for step, token in zip(out.logits, new_ids, strict=False)
    ]
    return new_ids[: len(logprobs)], logprobs


def score_ids(loaded: LoadedModel, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """The model's logprob of each completion token after the prompt and the tokens before it."""
    torch, _ = import_backend()
    ids = torch.tensor([prompt_ids + completion_ids], device=loaded.device)
    keep = len(completion_ids) + 1  # logits at the last prompt token predict the first one
    with GENERATE_LOCK, torch.inference_mode():
        try:
            logits = loaded.model(input_ids=ids, logits_to_keep=keep).logits[0]
        except TypeError:  # an architecture without `logits_to_keep`
            logits = loaded.model(input_ids=ids).logits[0]
        logits = logits[-keep:-1].float()
    targets = torch.tensor(completion_ids, device=logits.device)
    values: list[float] = (
        torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0].tolist()
    )
    return values


def token_logprobs(tokenizer: Any, ids: list[int], logprobs: list[float]) -> list[TokenLogprob]:
    """Each token's text, id and logprob."""
    tokens = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return [
        TokenLogprob(token=token, logprob=logprob, token_id=token_id)
        for token, logprob, token_id in zip(tokens, logprobs, ids, strict=True)
    ]


def _stop_on(transformers: Any, event: threading.Event) -> Any:
    """A stopping criterion that ends generation once `event` is set."""

    class StopOnEvent(transformers.StoppingCriteria):  # type: ignore[misc] # untyped library
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return transformers.StoppingCriteriaList([StopOnEvent()])
