"""Fine-tune the local model on exported tapes (extra `finetune`: TRL, peft, datasets).

    from tapeagents.export import training_examples
    from tapeagents.finetune import FinetuneConfig, finetune

    examples = training_examples(store, agent, Selection(outcome="success"))
    result = finetune(examples, FinetuneConfig(output_dir="runs/arith", max_steps=30))
    agent.llms["default"] = LocalLLM(adapter=str(result.adapter_dir))

Importing this package is cheap; the training libraries load when `finetune` runs.
"""

from tapeagents.finetune.trainer import (
    FinetuneConfig,
    FinetuneResult,
    TrainingData,
    finetune,
    load_records,
)

__all__ = ["FinetuneConfig", "FinetuneResult", "TrainingData", "finetune", "load_records"]
