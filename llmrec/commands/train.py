"""``llmrec train``: LoRA / QLoRA fine-tuning into a run directory.

Examples::

    llmrec train --config configs/ml100k/smollm2-lora.yaml
    llmrec train --config configs/ml100k/smollm2-lora.yaml train.max_steps=200 lora.r=8
    llmrec train --config configs/ml100k/smollm2-lora.yaml --resume
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/finetune.py --config ...
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    def train_command(
        config: list[Path] = typer.Option(..., "--config", "-c", help="YAML config file(s), merged left to right"),
        overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, applied after the files"),
        resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in train.output_dir"),
    ) -> None:
        """Fine-tune a language model to recommend; writes adapter, metrics and plots to train.output_dir."""
        from llmrec.config import ConfigError, RunConfig, load_config
        from llmrec.training.loop import train

        try:
            run_cfg: RunConfig = load_config(config, overrides or [])
        except ConfigError as err:
            raise typer.BadParameter(str(err)) from None
        command = " ".join(shlex.quote(a) for a in ["llmrec", *sys.argv[1:]])
        result = train(run_cfg, command=command, resume=resume)
        typer.echo(f"run directory: {result.run_dir}  steps: {result.global_step}  final loss: {result.final_loss:.4f}")
