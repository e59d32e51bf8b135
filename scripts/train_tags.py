"""Train the interest-tag classifier and compare it with the baselines (and a decoder) on one split.

Launch::

    python scripts/train_tags.py --config configs/ml100k/tags.yaml [key.sub=value ...]
    python scripts/train_tags.py --config configs/ml100k/tags.yaml --run runs/minilm-tags   # evaluate only
    python scripts/train_tags.py --config configs/ml100k/tags.yaml --decoder smollm2-135m-instruct --decoder-users 100

Writes ``RUN/tag_metrics.json``: precision/recall/F1@{1,3,5}, micro/macro AUC per model.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from llmrec.config import load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.io import write_json
from llmrec.tags.baselines import CooccurrenceTags, MostFrequentTags, evaluate_tags
from llmrec.tags.classifier import TagClassifier, TagsRunConfig, train_tag_classifier
from llmrec.tags.generate import load_decoder_tag_scorer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="YAML file(s), merged left to right")
    parser.add_argument("--run", type=Path, help="evaluate this trained run instead of training one")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--decoder", help="also score tags with this base decoder (asset, dir or hub id)")
    parser.add_argument("--decoder-users", type=int, default=100, help="seeded user subset for the decoder (slow on CPU)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, schema=TagsRunConfig)
    dataset = PreparedDataset.load(cfg.data.prepared_dir)
    run = args.run or train_tag_classifier(cfg, dataset, cfg.train.output_dir, shlex.join([sys.executable, *sys.argv]),
                                           args.overwrite)
    train = dataset.sequences(("train", "valid") if cfg.eval.split == "test" else ("train",))
    cases = dataset.eval_cases(cfg.eval.split)
    models: dict[str, Any] = {
        "most_frequent": MostFrequentTags(dataset.catalog).fit(train),
        "cooccurrence": CooccurrenceTags(dataset.catalog).fit(train),
        "classifier": TagClassifier.load(run, catalog=dataset.catalog),
    }
    results: dict[str, Any] = {}
    for name, model in models.items():
        start = time.perf_counter()
        results[name] = {**evaluate_tags(model, cases, dataset.catalog), "seconds": time.perf_counter() - start}
    if args.decoder:
        subset = random.Random(cfg.eval.seed).sample(cases, min(args.decoder_users, len(cases)))
        start = time.perf_counter()
        decoder = load_decoder_tag_scorer(args.decoder, dataset.catalog, cfg.prompt, num_tags=cfg.tags.num_tags,
                                          max_items=cfg.tags.decoder_history_items, length_normalize=cfg.tags.length_normalize)
        results[f"decoder:{args.decoder}@{len(subset)}users"] = {
            **evaluate_tags(decoder, subset, dataset.catalog, batch_size=8),
            "seconds": time.perf_counter() - start,
        }
        for name in ("most_frequent", "cooccurrence", "classifier"):  # the same users, for a fair row
            results[f"{name}@{len(subset)}users"] = evaluate_tags(models[name], subset, dataset.catalog)
    write_json(Path(run) / "tag_metrics.json", {"split": cfg.eval.split, "results": results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
