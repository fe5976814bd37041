"""`tapeagents finetune`: LoRA fine-tune the local model on exported examples."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tapeagents.cli.common import err, out
from tapeagents.errors import UsageError

__all__ = ["app"]

app = typer.Typer()

PANEL = "Training and evaluation"

DataArgument = Annotated[
    Path,
    typer.Argument(
        metavar="TRAIN.jsonl",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Examples from `tapeagents export --format openai` or `--format tokens`.",
    ),
]


@app.command(rich_help_panel=PANEL)
def finetune(
    train: DataArgument,
    output_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the adapter (and merged/).")
    ],
    validation: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Validation examples, same formats."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Base model: smollm2-135m, a HF model directory or a .gguf file.")
    ] = "smollm2-135m",
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimizer steps (default: --epochs over the data).")
    ] = None,
    epochs: Annotated[float, typer.Option(min=0.0)] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per device and step.")] = 4,
    grad_accum: Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")] = 1,
    learning_rate: Annotated[float, typer.Option("--lr", min=0.0)] = 2e-4,
    lora_r: Annotated[int, typer.Option(min=1)] = 8,
    lora_alpha: Annotated[int, typer.Option(min=1)] = 16,
    lora_dropout: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    max_length: Annotated[
        int, typer.Option(min=2, help="Longest example in tokens (chat records).")
    ] = 2048,
    seed: Annotated[int, typer.Option()] = 0,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also write the merged model to OUT/merged.")
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda when available).")
    ] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Less memory, more time.")
    ] = False,
    deepspeed: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="A DeepSpeed JSON config.")
    ] = None,
    accelerate_config: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Train through `accelerate launch` with this config (several GPUs or machines).",
        ),
    ] = None,
) -> None:
    """LoRA fine-tune a local model on exported examples; the loss is on the answers only.

    The adapter loads with `LocalLLM(adapter="OUT")` (and the base model's name when it is not
    the default); --merge also writes a full model that Hugging Face or vLLM can serve.
    """
    from tapeagents.finetune import FinetuneConfig
    from tapeagents.finetune import finetune as run_finetune

    config = FinetuneConfig(
        output_dir=output_dir,
        model=model,
        max_steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        max_length=max_length,
        seed=seed,
        merge=merge,
        device=device,
        gradient_checkpointing=gradient_checkpointing,
        deepspeed=str(deepspeed) if deepspeed is not None else None,
    )
    if accelerate_config is not None:
        _launch(config, train, validation, accelerate_config)
        return
    progress = Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=err(),
    )
    with progress:
        task = progress.add_task("train", total=None, loss="-")

        def on_step(step: int, total: int, logs: dict[str, float]) -> None:
            loss = f"{logs['loss']:.4f}" if "loss" in logs else "-"
            progress.update(task, completed=step, total=total, loss=loss)

        result = run_finetune(train, config, validation=validation, on_step=on_step)
    console = out()
    losses = f"train loss {result.train_loss:.4f}" if result.train_loss is not None else ""
    if result.eval_loss is not None:
        losses += f", validation loss {result.eval_loss:.4f}"
    console.print(
        f"Trained {result.steps} step{'' if result.steps == 1 else 's'} on {result.examples} "
        f"examples ({result.target_tokens} of "
        f"{result.tokens} tokens labelled) in {result.seconds:.0f} s; {losses}."
    )
    console.print(f"Adapter: {escape(str(result.adapter_dir))}")
    if result.merged_dir is not None:
        console.print(f"Merged model: {escape(str(result.merged_dir))}")
    model_part = "" if model == "smollm2-135m" else f"{model!r}, "
    console.print(
        f"[dim]Use it: LocalLLM({escape(model_part)}adapter={escape(repr(str(output_dir)))})[/]"
    )


def _launch(config: object, train: Path, validation: Path | None, accelerate: Path) -> None:
    from tapeagents.finetune.launch import launch_command, write_spec

    output_dir = Path(config.output_dir)  # type: ignore[attr-defined]
    spec = write_spec(output_dir / "launch.json", config, train, validation)
    command = launch_command(spec, accelerate)
    err().print(f"[dim]$ {escape(' '.join(command))}[/]")
    try:
        done = subprocess.run(command, check=False)
    except OSError as error:
        raise UsageError(f"Cannot start accelerate: {error}.") from None
    if done.returncode != 0:
        raise UsageError(
            f"accelerate launch exited with code {done.returncode}; its output above says why."
        )
    out().print(f"Adapter: {escape(str(output_dir))}")
