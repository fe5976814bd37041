"""PEFT LoRA adapters for the llama.cpp engine: converted once into llama.cpp's GGUF LoRA format.

`tapeagents finetune` writes a peft adapter directory (`adapter_config.json` and
`adapter_model.safetensors`). llama.cpp applies a LoRA adapter at run time from a GGUF file of
its own layout: the same A and B matrices under the base model's tensor names, with the
adapter's alpha in the metadata (llama.cpp scales by alpha / rank, as peft does). The file is
written once per adapter and base model into the tapeagents cache, and reused after.

Two details make it exact. The HF -> GGUF conversion of llama-architecture models reorders the
rows of the Q and K projections (each head's rotary halves are interleaved), so the B matrix of
q_proj and k_proj, whose rows are the projection's output rows, is reordered the same way.
And the adapter is checked against the base model's tensors here, so a mismatch is an error
that says what to do rather than an adapter llama.cpp silently refuses.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from tapeagents.errors import UsageError

__all__ = ["convert_adapter", "gguf_adapter", "rope_permute"]

FORMAT_VERSION = 1
"""Part of the cache key: a change to the conversion writes new files."""

MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
"""peft's module names -> llama.cpp's tensor names, in each layer."""

ARCHITECTURES = {"llama": True, "qwen2": False, "qwen3": False}
"""Architectures whose tensors are named as in `MODULES`, and whether the HF -> GGUF conversion
permuted their Q and K rows (llama's rotary layout) so the adapter's must be too."""

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+))\.lora_([AB])\.weight$"
)


def gguf_adapter(adapter_dir: Path, base_gguf: Path) -> Path:
    """The GGUF LoRA file of the peft adapter in `adapter_dir` for the model `base_gguf`.

    Converted on first use into `<cache>/adapters/<hash>.gguf` (written to a temporary file and
    renamed, so an interrupted conversion leaves nothing behind), then reused while neither the
    adapter's files nor the base file change. Only the base file's metadata is read: the file
    works on the quantized model and on its f16 copy alike.
    """
    from tapeagents.llms.local.weights import cache_dir, cached_file, file_stamp

    config_file, tensors_file = _adapter_files(adapter_dir)
    digest = hashlib.sha256(f"tapeagents-lora-{FORMAT_VERSION}\n".encode())
    for path in (config_file, tensors_file):
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(file_stamp(base_gguf).encode())
    target = cache_dir() / "adapters" / f"{digest.hexdigest()[:16]}.gguf"
    return cached_file(target, lambda tmp: convert_adapter(adapter_dir, base_gguf, tmp))


def convert_adapter(adapter_dir: Path, base_gguf: Path, out: Path) -> None:
    """Write the peft LoRA adapter in `adapter_dir` as llama.cpp's GGUF LoRA file `out`,
    checked against the base model `base_gguf` (its architecture, heads and tensor shapes)."""
    import gguf

    config_file, tensors_file = _adapter_files(adapter_dir)
    config = _read_config(config_file)
    alpha = float(config.get("lora_alpha", 8))  # peft's default
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}

    try:
        base = gguf.GGUFReader(str(base_gguf))
    except (OSError, ValueError) as error:
        raise UsageError(f"Cannot read the base model {base_gguf} as GGUF: {error}") from error
    architecture = _field(base, "general.architecture")
    if architecture not in ARCHITECTURES:
        raise UsageError(
            f"LoRA adapters on llama.cpp support {', '.join(sorted(ARCHITECTURES))} models, not "
            f"{architecture!r}. Use LocalLLM(engine='transformers', adapter=...), or fine-tune "
            "with merge=True and load the merged model."
        )
    heads = int(_field(base, f"{architecture}.attention.head_count"))
    kv_heads = int(_field(base, f"{architecture}.attention.head_count_kv", heads))
    base_shapes = {t.name: tuple(int(n) for n in t.shape) for t in base.tensors}

    tensors = _read_tensors(tensors_file)
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None or match.group(3) not in MODULES:
            raise UsageError(
                f"The adapter in {adapter_dir} has LoRA weights for {key!r}; llama.cpp adapters "
                f"support the layers' {', '.join(MODULES)} modules only. Fine-tune with "
                "target_modules='all-linear' (the default), or use "
                "LocalLLM(engine='transformers', adapter=...)."
            )
        path, layer, module, side = match.groups()
        name = f"blk.{layer}.{MODULES[module]}.weight"
        pairs.setdefault(name, {})[side] = (path, value)

    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for name, sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            raise UsageError(f"The adapter in {adapter_dir} lacks half of the LoRA pair of {name}.")
        path, a = sides["A"]
        _, b = sides["B"]
        module = path.rsplit(".", 1)[1]
        a, b = _as_f32(a), _as_f32(b)
        shape = base_shapes.get(name)  # ggml order: (inputs, outputs)
        if shape is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise _mismatch(adapter_dir, base_gguf, name)
        if (a.shape[1], b.shape[0]) != shape:
            raise _mismatch(adapter_dir, base_gguf, name)
        # peft's rule: a pattern names a module when it matches the end of its path.
        own = [v for k, v in alpha_pattern.items() if re.match(rf"(.*\.)?({k})$", path)]
        if own and alpha:  # llama.cpp has one alpha: fold this module's own into its B
            b = b * (float(own[0]) / alpha)
        if ARCHITECTURES[architecture] and module in ("q_proj", "k_proj"):
            b = rope_permute(b, heads if module == "q_proj" else kv_heads)
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    if not pairs:
        raise UsageError(f"The adapter in {adapter_dir} has no LoRA weights.")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rope_permute(rows: Any, heads: int) -> Any:
    """`rows` (a projection's output rows) reordered as the HF -> GGUF conversion of llama
    models reorders the Q and K projections: within each head, the first and second halves
    (rotated together in HF's layout) are interleaved (llama.cpp's layout)."""
    n = rows.shape[0]
    return (
        rows.reshape(heads, 2, n // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
    )


def _adapter_files(adapter_dir: Path) -> tuple[Path, Path]:
    if not adapter_dir.is_dir():
        raise UsageError(
            f"Adapter directory {str(adapter_dir)!r} does not exist: pass the directory "
            "`tapeagents finetune` wrote (its --out)."
        )
    config_file = adapter_dir / "adapter_config.json"
    tensors_file = adapter_dir / "adapter_model.safetensors"
    for path in (config_file, tensors_file):
        if not path.is_file():
            raise UsageError(
                f"{adapter_dir} is not a peft LoRA adapter: it has no {path.name}. Pass the "
                "directory `tapeagents finetune` wrote (its --out)."
            )
    return config_file, tensors_file


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"Cannot read the adapter's {config_file}: {error}") from error
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise UsageError(f"{config_file} does not describe a LoRA adapter.")
    unsupported = [
        option
        for option, active in (
            ("use_rslora", bool(config.get("use_rslora"))),
            ("use_dora", bool(config.get("use_dora"))),
            ("modules_to_save", bool(config.get("modules_to_save"))),
            ("fan_in_fan_out", bool(config.get("fan_in_fan_out"))),
            ("bias", config.get("bias", "none") != "none"),
        )
        if active
    ]
    if unsupported:
        raise UsageError(
            f"The adapter in {config_file.parent} uses {', '.join(unsupported)}, which llama.cpp "
            "adapters cannot express. Use LocalLLM(engine='transformers', adapter=...), or "
            "fine-tune with merge=True and load the merged model."
        )
    return config


def _read_tensors(tensors_file: Path) -> dict[str, Any]:
    """The adapter's tensors as numpy arrays (bfloat16 ones too, which numpy lacks)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(tensors_file))
    except TypeError:  # a bfloat16 tensor: numpy has no such type
        return _read_bfloat16(tensors_file)
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"Cannot read the adapter's weights {tensors_file}: {error}") from error


def _read_bfloat16(tensors_file: Path) -> dict[str, Any]:
    """A safetensors file read by hand, bfloat16 tensors widened to float32."""
    import numpy as np

    data = tensors_file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    types = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in types:
            raise UsageError(f"{tensors_file}: tensor {key} has unsupported type {info['dtype']}.")
        start, end = (8 + size + offset for offset in info["data_offsets"])
        array = np.frombuffer(data[start:end], dtype=types[info["dtype"]])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[key] = array.reshape(info["shape"])
    return tensors


def _as_f32(array: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(array, dtype=np.float32)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise UsageError(f"The base model's GGUF metadata has no {key}.")
        return default
    import gguf

    value = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode()
    return value[0].item()


def _mismatch(adapter_dir: Path, base_gguf: Path, name: str) -> UsageError:
    return UsageError(
        f"The adapter in {adapter_dir} does not fit the model {base_gguf.name} ({name} has "
        "another shape or is missing): load it with the base model it was fine-tuned from "
        "(LocalLLM(model=..., adapter=...))."
    )
