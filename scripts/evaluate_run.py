"""Rank one fine-tuned run directory on a split, with inference settings: ``llmrec evaluate --run``
without the CLI's packages (typer), as on a bare GPU machine (``scripts/device_run.py``).

Launch::

    python scripts/evaluate_run.py --run runs/ml100k-smollm2-catalog-masked-gpu-seed0 --split valid \\
        --set "catalog_head.history_views=[20,17,14,11,8,5]" --out reports/views6-valid

Writes ``OUT/metrics.json`` and ``OUT/ranks.parquet`` (the same files as ``llmrec evaluate``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from llmrec.config import ConfigError
from llmrec.data.dataset import PreparedDataset
from llmrec.evaluation.evaluate import evaluate_split_to_dir
from llmrec.recommender import SCORINGS, Recommender


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a fine-tuned run directory")
    parser.add_argument("--out", "-o", type=Path, required=True, help="directory for metrics.json and ranks.parquet")
    parser.add_argument("--dataset-dir", type=Path, default=None,
                        help="prepared dataset directory (default: the run's own, already loaded with it)")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="an inference setting of the run, key.sub=value; repeatable")
    parser.add_argument("--scoring", choices=SCORINGS, default="auto")
    parser.add_argument("--users", type=int, default=None, help="a subset of N users seeded by --seed (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the --users subset")
    parser.add_argument("--batch-size", type=int, default=256, help="users per scoring call")
    args = parser.parse_args(argv)
    if args.users is not None and args.users <= 0:
        parser.error(f"--users must be positive, got {args.users}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        scorer = Recommender.load(args.run, scoring=args.scoring, overrides=args.settings)
    except ConfigError as err:
        parser.error(str(err))
    dataset = scorer.dataset if args.dataset_dir is None else PreparedDataset.load(args.dataset_dir)
    result = evaluate_split_to_dir(scorer, dataset, args.split, args.out, users=args.users, seed=args.seed,
                                   model=str(args.run), scoring=args.scoring, settings=args.settings,
                                   command=shlex.join([sys.executable, *sys.argv]), batch_size=args.batch_size)
    for key, value in result.metrics.items():
        print(f"{key:>16} {value:.4f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
