"""Does llama.cpp's own grammar sampler accept a text? (The model's vocabulary, no context.)

Tests use it to check that a grammar admits exactly the texts it should: the text is
tokenized, each token must be allowed by the grammar where it comes, and the end of the text
must be a place where the grammar allows the answer to end.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

from tapeagents.llms.local.llama import import_llama_cpp
from tapeagents.llms.local.weights import default_gguf_path

_quiet: list[Any] = []  # keeps the log callback alive


@cache
def _vocab() -> tuple[Any, Any]:
    ll = import_llama_cpp()
    ll.llama_backend_init()
    _quiet.append(ll.llama_log_callback(lambda level, text, data: None))
    ll.llama_log_set(_quiet[-1], ctypes.c_void_p(0))
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(default_gguf_path()).encode(), params)
    assert model, "llama.cpp could not load the model's vocabulary"
    return ll, ll.llama_model_get_vocab(model)


def compiles(grammar: str) -> bool:
    """Whether llama.cpp parses `grammar`."""
    ll, vocab = _vocab()
    sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    ll.llama_sampler_free(sampler)
    return True


def accepts(grammar: str, text: str) -> bool:
    """Whether `text`, followed by the end of the answer, is a sentence of `grammar`."""
    ll, vocab = _vocab()
    sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, f"llama.cpp rejected the grammar:\n{grammar}"
    try:
        for token in [*_tokens(ll, vocab, text), ll.llama_vocab_eos(vocab)]:
            if not _allowed(ll, sampler, token):
                return False
            ll.llama_sampler_accept(sampler, token)
        return True
    finally:
        ll.llama_sampler_free(sampler)


def _tokens(ll: Any, vocab: Any, text: str) -> list[int]:
    data = text.encode()
    buffer = (ll.llama_token * (len(data) + 8))()
    count = ll.llama_tokenize(vocab, data, len(data), buffer, len(buffer), False, False)
    assert count >= 0
    return list(buffer[:count])


def _allowed(ll: Any, sampler: Any, token: int) -> bool:
    data = (ll.llama_token_data * 1)()
    data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
    array = ll.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
    ll.llama_sampler_apply(sampler, ctypes.byref(array))
    return bool(data[0].logit > float("-inf"))
