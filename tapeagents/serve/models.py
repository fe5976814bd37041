"""The models a server offers, and the `LLM` that answers each request.

A `LocalLLM`'s sampling settings are fixed per instance, so a request's settings (temperature,
max tokens, seed, top logprobs) pick an instance made for them. Instances with the same weights
and adapter share one loaded engine, so these are cheap; the few recently used ones are kept.
Any other `LLM` (a `TestLLM`, a `ScriptedLLM`, a plugin's backend) answers every request as it
was configured.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapeagents.errors import UsageError
from tapeagents.llms.base import LLM
from tapeagents.serve.protocol import RequestError, Sampling

if TYPE_CHECKING:
    from tapeagents.llms.local import LocalLLM

__all__ = ["ServedModel", "served_models"]

_KEPT_VARIANTS = 64
"""Per-settings `LocalLLM` instances kept per served model (each costs a few hundred bytes)."""


def _local_class() -> type[LocalLLM] | None:
    try:
        from tapeagents.llms.local import LocalLLM
    except ImportError:  # pragma: no cover - the local package imports no heavy library
        return None
    return LocalLLM


class ServedModel:
    """One name clients may ask for, and the `LLM` behind it.

    Args:
        name: The model id clients send (and `GET /v1/models` lists).
        llm: The backend; a `LocalLLM` is re-made per request settings, others are used as is.
        parent: For a LoRA adapter, the name of the base model it adapts.
    """

    def __init__(self, name: str, llm: LLM, *, parent: str | None = None) -> None:
        self.name = name
        self.llm = llm
        self.parent = parent
        local = _local_class()
        self._local: LocalLLM | None = llm if local and isinstance(llm, local) else None
        self._variants: OrderedDict[Sampling, LLM] = OrderedDict()

    def llm_for(self, sampling: Sampling) -> LLM:
        """The backend that answers with `sampling`'s settings."""
        if self._local is None:
            return self.llm
        llm = self._variants.get(sampling)
        if llm is None:
            llm = self._variants[sampling] = self._local_variant(self._local, sampling)
            if len(self._variants) > _KEPT_VARIANTS:
                self._variants.popitem(last=False)
        else:
            self._variants.move_to_end(sampling)
        return llm

    def max_tokens(self, sampling: Sampling) -> int | None:
        """The answer budget of a request, when known (it tells `stop` from `length`)."""
        if self._local is None:
            return sampling.max_tokens
        return sampling.max_tokens or self._local.max_new_tokens

    @staticmethod
    def _local_variant(base: LocalLLM, sampling: Sampling) -> LLM:
        try:
            return _local_like(
                base,
                temperature=base.temperature
                if sampling.temperature is None
                else sampling.temperature,
                max_new_tokens=sampling.max_tokens or base.max_new_tokens,
                seed=base.seed if sampling.seed is None else sampling.seed,
                top_logprobs=sampling.top_logprobs,
            )
        except UsageError as error:  # settings the model refuses
            raise RequestError(str(error)) from None

    def card(self, created: int) -> dict[str, Any]:
        """The model as `GET /v1/models` lists it."""
        card: dict[str, Any] = {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "tapeagents",
            "root": self.parent or self.name,
        }
        if self.parent is not None:
            card["parent"] = self.parent
        return card


def served_models(
    llm: LLM, *, name: str | None = None, adapters: Mapping[str, str] | None = None
) -> list[ServedModel]:
    """The base model under `name` (default: its model name), then one model per adapter.

    Raises:
        UsageError: adapters for a model that is not a `LocalLLM`, a missing adapter directory,
            or two models under one name.
    """
    base = ServedModel(name or llm.model, llm)
    models = [base]
    local = _local_class()
    for adapter_name, directory in (adapters or {}).items():
        if local is None or not isinstance(llm, local):
            raise UsageError(
                f"Adapters apply to the local model only, not to {llm!r}; serve --model local "
                "(or local:<path>) with --adapter."
            )
        if not Path(directory).is_dir():
            raise UsageError(
                f"Adapter directory {directory!r} does not exist; give the output directory of "
                "`tapeagents finetune` (it holds adapter_config.json)."
            )
        adapted = _local_like(llm, adapter=str(directory))
        models.append(ServedModel(adapter_name, adapted, parent=base.name))
    names = [model.name for model in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(
            f"Two served models are named {', '.join(map(repr, twice))}; name each adapter "
            "differently (--adapter NAME=DIR)."
        )
    return models


def _local_like(base: LocalLLM, **changes: Any) -> LocalLLM:
    """A `LocalLLM` with `base`'s settings but `changes` (it shares `base`'s loaded engine)."""
    options: dict[str, Any] = {
        "temperature": base.temperature,
        "max_new_tokens": base.max_new_tokens,
        "seed": base.seed,
        "adapter": base.adapter,
        "top_logprobs": base.top_logprobs,
        "engine": base.engine,
        "device": base.device,
    }
    options.update(changes)
    return type(base)(base.model, **options)
