"""Training throughput vs the device's matmul ceiling (thin entry point over ``llmrec.training.bench``).

Launch::

    # SmolLM2-135M LoRA on ML-100K item-span sequences, the fast defaults (bf16 where native,
    # packed rows with per-example attention, logits only on labels):
    python scripts/bench_train.py --config configs/ml100k/smollm2-lora.yaml --steps 5 --out runs/bench_train.json
    # the naive baseline: fp32, padded batches, full-vocabulary logits everywhere
    python scripts/bench_train.py --config configs/ml100k/smollm2-lora.yaml --steps 5 \\
        model.dtype=fp32 train.packing=false train.logits_only_on_labels=false

Prints one line per setting of interest and the JSON (also written atomically to ``--out``).
"""

from __future__ import annotations

import argparse
import json

from llmrec.config import load_config
from llmrec.io import write_json
from llmrec.training.bench import run_train_benchmark


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", action="append", default=[], help="YAML config file(s)")
    parser.add_argument("--steps", type=int, default=5, help="timed micro-batches")
    parser.add_argument("--warmup", type=int, default=1, help="untimed micro-batches first")
    parser.add_argument("--ceiling-n", type=int, default=2048, help="size of the square matmul for the ceiling")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--out", default=None, help="write the JSON here")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    result = run_train_benchmark(load_config(args.config, args.overrides), steps=args.steps, warmup=args.warmup,
                                 ceiling_n=args.ceiling_n, device=args.device)
    tps = result["tokens_per_s"]
    print(f"{result['settings']}\ntokens/s median {tps['median']:.1f} (min {tps['min']:.1f}, max {tps['max']:.1f})  "
          f"achieved {result['achieved_flops'] / 1e9:.1f} GFLOP/s  MFU {result['mfu']:.1%} of the "
          f"{result['compute_dtype']} ceiling {result['ceilings_flops'][result['compute_dtype']] / 1e9:.1f} GFLOP/s  "
          f"peak memory {result['peak_memory_bytes'] / 2**30:.2f} GiB  load {result['load_average']['before'][0]:.1f}")
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
