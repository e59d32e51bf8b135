"""Train the two-tower text recommender, then score the test split with the shared evaluator.

Launch::

    python scripts/train_encoder.py --config configs/ml100k/minilm-two-tower.yaml [key.sub=value ...]
    accelerate launch scripts/train_encoder.py --config configs/ml100k/minilm-two-tower.yaml

Writes the run directory ``train.output_dir`` (adapter, config, metrics.json with ``test_*``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from llmrec.config import load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.encoder.recommender import TwoTowerRecommender
from llmrec.encoder.train import EncoderRunConfig, train_two_tower
from llmrec.evaluation.evaluate import evaluate, write_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="YAML file(s), merged left to right")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--skip-test", action="store_true", help="do not score the test split")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, schema=EncoderRunConfig)
    dataset = PreparedDataset.load(cfg.data.prepared_dir)
    command = shlex.join([sys.executable, *sys.argv])
    run_dir = train_two_tower(cfg, dataset, cfg.train.output_dir, command=command, overwrite=args.overwrite)
    if args.skip_test:
        return
    start = time.perf_counter()
    recommender = TwoTowerRecommender.load(run_dir, catalog=dataset.catalog)
    result = evaluate(recommender, dataset.eval_cases(cfg.eval.split), len(dataset.catalog), ks=cfg.eval.ks)
    trained = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    extra = {**trained, "eval_seconds": time.perf_counter() - start, "eval_split": cfg.eval.split}
    write_metrics(result, run_dir / "metrics.json", extra=extra)
    print(json.dumps({cfg.eval.split: result.metrics, "train_seconds": trained["train_seconds"]}, indent=2))


if __name__ == "__main__":
    main()
