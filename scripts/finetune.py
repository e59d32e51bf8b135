"""Fine-tune a language model to recommend (thin entry point over ``llmrec.training.loop.train``).

Launch::

    accelerate launch scripts/finetune.py --config configs/ml100k/smollm2-lora.yaml
    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/finetune.py \\
        --config configs/ml100k/smollm2-lora.yaml train.max_steps=100
    python scripts/finetune.py --config configs/ml100k/smollm2-lora.yaml --resume
"""

from __future__ import annotations

import argparse
import shlex
import sys

from llmrec.config import RunConfig, load_config
from llmrec.training.loop import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", action="append", required=True, help="YAML config file(s)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    run_cfg = load_config(args.config, args.overrides, schema=RunConfig)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    result = train(run_cfg, command=command, resume=args.resume)
    print(f"run directory: {result.run_dir}  steps: {result.global_step}  final loss: {result.final_loss:.4f}")


if __name__ == "__main__":
    main()
