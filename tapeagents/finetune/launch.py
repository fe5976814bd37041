"""Run `finetune` from a JSON spec: what `tapeagents finetune --accelerate-config` launches.

    accelerate launch --config_file accel.yaml -m tapeagents.finetune.launch run.json

The spec holds `config` (a `FinetuneConfig`), `train` and optionally `validation` (JSONL paths).
Every process trains; the main one prints progress and writes the result.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tapeagents.errors import UsageError

__all__ = ["launch_command", "main", "write_spec"]


def write_spec(
    path: Path, config: Any, train: str | Path, validation: str | Path | None = None
) -> Path:
    """Write the spec `main` reads."""
    spec = {
        "config": config.model_dump(mode="json"),
        "train": str(Path(train).resolve()),
        "validation": str(Path(validation).resolve()) if validation is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))
    return path


def launch_command(spec: Path, accelerate_config: str | Path) -> list[str]:
    """The `accelerate launch` command line that trains from `spec` with that configuration."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "-m",
        "tapeagents.finetune.launch",
        str(spec),
    ]


def main(argv: list[str] | None = None) -> int:
    from tapeagents.finetune.trainer import FinetuneConfig, finetune

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tapeagents.finetune.launch SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(args[0]).read_text())
        config = FinetuneConfig.model_validate(spec["config"])
    except (OSError, ValueError, KeyError) as error:
        print(f"Cannot read the fine-tuning spec {args[0]}: {error}", file=sys.stderr)
        return 2
    main_process = os.environ.get("RANK", "0") == "0"

    def show(step: int, total: int, logs: dict[str, float]) -> None:
        if main_process:
            loss = f" loss {logs['loss']:.4f}" if "loss" in logs else ""
            print(f"step {step}/{total}{loss}", flush=True)

    try:
        result = finetune(spec["train"], config, validation=spec.get("validation"), on_step=show)
    except UsageError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    if main_process:
        print(result.model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
