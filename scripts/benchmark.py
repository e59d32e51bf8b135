"""Benchmark Pop, GRU4Rec, SASRec (and any registered model) on one split with one evaluator.

Launch::

    python scripts/benchmark.py --config configs/ml100k/benchmark.yaml --out reports/ml100k --seeds 0,1,2
    python scripts/benchmark.py --config configs/ml100k/benchmark.yaml eval.split=valid
    python scripts/benchmark.py --config configs/ml100k/benchmark-llm-gpu.yaml --seeds 0 --only pop,sasrec-window20

Same as ``llmrec benchmark`` without the CLI's packages (typer), as on a bare GPU machine
(``scripts/device_run.py``); writes results.json, results.md, results.png and ranks/.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from llmrec.benchmark import BenchmarkConfig, run_benchmark, select_entries
from llmrec.config import load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", action="append", required=True, help="benchmark YAML file(s)")
    parser.add_argument("--out", "-o", default=None, help="report directory (default: out_dir of the config)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds for models without their own")
    parser.add_argument("--only", default=None, help="comma-separated labels: run only these rows")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"seeds=[{args.seeds}]"] if args.seeds else [])
    config = load_config(args.config, overrides, schema=BenchmarkConfig)
    if args.only is not None:
        config = select_entries(config, args.only)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    report = run_benchmark(config, args.out, command=command)
    for entry in report["summary"]:
        stats = entry["stats"]
        print(f"{entry['label']:>10}  NDCG@10 {stats['ndcg@10']['mean']:.4f} ± {stats['ndcg@10']['std']:.4f}"
              f"  HR@10 {stats['hr@10']['mean']:.4f} ± {stats['hr@10']['std']:.4f}  seeds {entry['seeds']}")
    print(f"report: {args.out or config.out_dir} ({report['total_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
