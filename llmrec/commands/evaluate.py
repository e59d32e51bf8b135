"""``llmrec benchmark`` and ``llmrec evaluate``: rank the held-out targets, report the metrics.

Examples::

    llmrec benchmark --config configs/ml100k/benchmark.yaml --out reports/ml100k --seeds 0,1,2
    llmrec benchmark --config configs/ml100k/benchmark-encoder.yaml --only pop,sasrec,minilm-two-tower+ids --seeds 1
    # one seed per command, then one table with mean ± std
    llmrec merge-reports reports/ml100k-seed0 reports/ml100k-seed1 --out reports/ml100k-2seeds
    llmrec evaluate --model sasrec --dataset-dir data/ml-100k --out reports/sasrec-test
    llmrec evaluate --run runs/smollm2-lora --dataset-dir data/ml-100k --split test --out reports/llm-test
    # search error vs model error: the same 50 seeded validation users, beam search and exact scores
    # (exact scores of a 1,682-title trie take minutes per user on 2 CPU cores: a GPU job)
    llmrec evaluate --run runs/smollm2-lora --split valid --users 50 --scoring beam --out reports/diag-beam
    llmrec evaluate --run runs/smollm2-lora --split valid --users 50 --scoring full_catalog --out reports/diag-full
    # the same weights reading a longer history than they were trained on
    llmrec evaluate --run runs/ml100k-smollm2-catalog-4ep --split valid --users 300 \
        --set prompt.max_history_items=40 --set prompt.max_history_tokens=640 --out reports/diag-40
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import typer


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise typer.BadParameter("--seeds is empty")
    return seeds


def benchmark_command(
    config: Path = typer.Option(..., "--config", "-c", help="benchmark YAML (data, eval, models, seeds)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="report directory (default: out_dir of the config)"),
    seeds: str | None = typer.Option(None, "--seeds", help="comma-separated seeds for every model without its own"),
    only: str | None = typer.Option(None, "--only", help="comma-separated labels: run only these rows (e.g. pop,sasrec)"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. eval.split=valid"),
) -> None:
    """Train every listed model, evaluate all on the same split, write results.json/.md/.png."""
    from llmrec.benchmark import BenchmarkConfig, run_benchmark, select_entries
    from llmrec.config import ConfigError, load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    extra = [f"seeds=[{','.join(map(str, parsed))}]"] if (parsed := _parse_seeds(seeds)) else []
    try:
        cfg = load_config([config], [*(overrides or []), *extra], schema=BenchmarkConfig)
        if only is not None:
            cfg = select_entries(cfg, only)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from None
    command = shlex.join(["llmrec", *sys.argv[1:]])
    report = run_benchmark(cfg, out, command=command)
    target = out or Path(cfg.out_dir)
    typer.echo((target / "results.md").read_text(encoding="utf-8"))
    typer.echo(f"report written to {target} in {report['total_time_s']:.0f} s")


def merge_reports_command(
    reports: list[Path] = typer.Argument(..., help="report directories of `llmrec benchmark` (same setup)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the merged results.json/.md/.png and ranks"),
) -> None:
    """Join benchmark reports of the same setup (e.g. one seed each) into one table with mean ± std."""
    from llmrec.benchmark import merge_reports
    from llmrec.config import ConfigError

    try:
        merge_reports(reports, out, command=shlex.join(["llmrec", *sys.argv[1:]]))
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo((out / "results.md").read_text(encoding="utf-8"))
    typer.echo(f"merged report written to {out}")


def evaluate_command(
    dataset_dir: Path | None = typer.Option(None, "--dataset-dir",
                                            help="prepared dataset directory (default: a run's own; data/ml-100k for --model)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for metrics.json and ranks.parquet"),
    model: str | None = typer.Option(None, "--model", "-m", help="registry model to train and evaluate (pop | gru4rec | sasrec ...)"),
    run: Path | None = typer.Option(None, "--run", help="a fine-tuned run directory (loaded with Recommender.load)"),
    params: Path | None = typer.Option(None, "--params", help="YAML mapping of the registry model's parameters"),
    split: str = typer.Option("test", "--split", help="valid | test"),
    seed: int = typer.Option(0, "--seed", help="training seed of a registry model; also seeds the --users subset"),
    batch_size: int = typer.Option(256, "--batch-size", help="users per scoring call"),
    sampled_negatives: int = typer.Option(0, "--sampled-negatives", help="also rank against N seeded negatives (sampled_* metrics)"),
    users: int | None = typer.Option(None, "--users", help="rank a subset of N users seeded by --seed (default: every user)"),
    scoring: str = typer.Option("auto", "--scoring", help="a decoder run: beam (constrained search) | full_catalog (exact likelihood of every item) | catalog_head (train.format: catalog runs) | auto"),
    settings: list[str] | None = typer.Option(None, "--set", help="an inference setting of the run, key.sub=value (e.g. prompt.max_history_items=40); repeatable"),
) -> None:
    """Evaluate one model (a registry baseline trained here, or a run directory) with full ranking."""
    from llmrec.config import ConfigError, load_params
    from llmrec.data.dataset import PreparedDataset
    from llmrec.evaluation.evaluate import evaluate_split_to_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (model is None) == (run is None):
        raise typer.BadParameter("pass exactly one of --model or --run")
    if split not in ("valid", "test"):
        raise typer.BadParameter(f"--split must be valid or test, got {split!r}")
    if users is not None and users <= 0:
        raise typer.BadParameter(f"--users must be positive, got {users}")
    if scoring != "auto":
        from llmrec.recommender import SCORINGS

        if scoring not in SCORINGS:
            raise typer.BadParameter(f"--scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        if run is None:
            raise typer.BadParameter("--scoring applies to a run directory (--run)")
    settings = settings or []
    if settings and run is None:
        raise typer.BadParameter("--set applies to a run directory (--run)")
    try:
        model_params = load_params(params) if params else {}
    except ConfigError as err:
        raise typer.BadParameter(f"--params: {err}") from None
    if run is not None:
        scorer = _load_run(run, scoring, settings)
        dataset = scorer.dataset if dataset_dir is None else PreparedDataset.load(dataset_dir)
    else:
        assert model is not None
        dataset = PreparedDataset.load(dataset_dir or Path("data/ml-100k"))
        scorer = _build_model(dataset, model, model_params, seed)
    result = evaluate_split_to_dir(scorer, dataset, split, out, users=users, seed=seed, model=model or str(run),
                                   scoring=scoring, settings=settings, command=shlex.join(["llmrec", *sys.argv[1:]]),
                                   batch_size=batch_size, sampled_negatives=sampled_negatives)
    for key, value in result.metrics.items():
        typer.echo(f"{key:>16} {value:.4f}")
    typer.echo(f"written to {out}")


def _build_model(dataset: Any, model: str, params: dict[str, Any], seed: int) -> Any:
    from llmrec.benchmark import get_builder

    try:
        builder = get_builder(model)
    except KeyError as err:
        raise typer.BadParameter(str(err)) from None
    return builder(dataset, params, seed)


def _load_run(run: Path, scoring: str, settings: list[str]) -> Any:
    try:
        from llmrec.recommender import Recommender  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        raise typer.BadParameter("--run needs llmrec.recommender, which this installation lacks") from None
    from llmrec.config import ConfigError

    try:
        return Recommender.load(run, scoring=scoring, overrides=settings)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from None


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
    app.command("merge-reports")(merge_reports_command)
    app.command("evaluate")(evaluate_command)
