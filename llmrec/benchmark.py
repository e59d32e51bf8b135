"""Train every listed model, evaluate all of them on the same split, write one report.

Models come from a registry of short names. An entry is a function::

    build_and_train(dataset: PreparedDataset, params: dict, seed: int) -> CatalogScorer | TopKRanker

that trains on ``dataset`` (train split; the valid cases for early stopping) and returns a model
the evaluator can rank with. Entries are registered lazily as ``"module:function"`` strings in
:data:`MODEL_REGISTRY` (so the benchmark imports only what it runs) or at run time with
:func:`register_model`.

A second, optional table scores interest-tag models (``tags:`` entries, :data:`TAG_REGISTRY`,
:mod:`llmrec.tags.benchmark`) on the same split with :func:`llmrec.tags.baselines.evaluate_tags`.

Launch: ``llmrec benchmark --config configs/ml100k/benchmark.yaml [--out DIR] [--seeds 0,1,2]``

Seeds run as separate commands (one per time slot) join into one table with
:func:`merge_reports` (``llmrec merge-reports A B --out C``), which refuses reports that differ
in dataset, evaluation, hardware or a row's parameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError, DataConfig, EvalConfig, to_dict
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import EvalCase
from llmrec.evaluation.evaluate import EvalResult, evaluate, write_ranks
from llmrec.evaluation.report import plot_results, results_markdown
from llmrec.io import atomic_dir, read_json_object, write_json

log = logging.getLogger(__name__)

Builder = Callable[[PreparedDataset, dict[str, Any], int], Any]
TagBuilder = Callable[[PreparedDataset, dict[str, Any], int, str], Any]  # (dataset, params, seed, split) -> TagScorer

# Short name -> "module:function" (imported on first use) or the function itself.
MODEL_REGISTRY: dict[str, str | Builder] = {
    "pop": "llmrec.baselines.pop:build_and_train",
    "gru4rec": "llmrec.baselines.gru4rec:build_and_train",
    "sasrec": "llmrec.baselines.sasrec:build_and_train",
    "llm": "llmrec.llm_benchmark:build_and_train",  # fine-tuned decoder (llmrec.llm_benchmark)
    "llm+pop": "llmrec.llm_benchmark:build_hybrid",  # its beam list + a popularity prior (separate row)
    "minilm_two_tower": "llmrec.encoder.train:build_and_train",  # LoRA-tuned text two-tower (llmrec.encoder)
}

# Interest-tag models of the second table (``tags:`` entries), same lazy form; see llmrec.tags.benchmark.
TAG_REGISTRY: dict[str, str | TagBuilder] = {
    "most_frequent": "llmrec.tags.benchmark:build_most_frequent",  # tag shares of the input interactions
    "cooccurrence": "llmrec.tags.benchmark:build_cooccurrence",  # recent items' tags through co-occurrence
    "tag_classifier": "llmrec.tags.benchmark:build_classifier",  # encoder + multi-label head (load or train)
    "decoder_tags": "llmrec.tags.benchmark:build_decoder",  # base decoder, exact per-tag likelihoods
}

@dataclass
class BenchmarkModel:
    name: str = "pop"  # registry key: MODEL_REGISTRY for models, TAG_REGISTRY for tags (or registered at run time)
    label: str | None = None  # name in the report (default: name); must be unique within its table
    params: dict[str, Any] = field(default_factory=dict)  # passed to the builder (tags: less max_users, a seeded user subset)
    seeds: list[int] | None = None  # seeds of this model (None = the benchmark's seeds)


@dataclass
class BenchmarkConfig:
    """What ``llmrec benchmark`` trains and evaluates."""

    data: DataConfig = field(default_factory=DataConfig)  # prepared_dir is read (prepared when missing)
    eval: EvalConfig = field(default_factory=EvalConfig)  # the one evaluation every model goes through
    models: list[BenchmarkModel] = field(default_factory=list)  # models, in report order
    tags: list[BenchmarkModel] = field(default_factory=list)  # interest-tag models, second table (empty = none)
    seeds: list[int] = field(default_factory=lambda: [0])  # default seeds of every model
    out_dir: str = "reports/benchmark-ml100k"  # report directory (replaced atomically)
    num_threads: int = 2  # torch CPU threads (0 = torch default)
    save_ranks: bool = True  # write per-user ranks of every run under ranks/

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("models: list at least one model")
        _check_entries("models", "model", self.models, MODEL_REGISTRY)
        _check_entries("tags", "tag model", self.tags, TAG_REGISTRY)
        for spec in self.tags:
            limit = spec.params.get("max_users")
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
                raise ConfigError(f"tags: {spec.label or spec.name}: params.max_users must be a positive integer, got {limit!r}")
        if not self.seeds:
            raise ConfigError("seeds: list at least one seed")
        if self.eval.split not in ("valid", "test") or any(k <= 0 for k in self.eval.ks):
            raise ConfigError("eval.split must be valid or test and eval.ks positive")


def select_entries(config: BenchmarkConfig, labels: str | Sequence[str]) -> BenchmarkConfig:
    """``config`` with only the ``models`` and ``tags`` entries whose label is in ``labels``.

    Re-running some rows (another seed, a changed recipe) without the rest of the table.
    ``labels`` is a list or the ``--only`` text of both benchmark entry points ("pop, sasrec").

    Raises:
        ConfigError: a label that names no entry, or no ranking model left (the report needs one).
    """
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    known = [m.label or m.name for m in [*config.models, *config.tags]]
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise ConfigError(f"--only: no entry labelled {unknown}; the labels are {known}")
    keep = set(labels)
    selected = dataclasses.replace(
        config,
        models=[m for m in config.models if (m.label or m.name) in keep],
        tags=[m for m in config.tags if (m.label or m.name) in keep],
    )
    selected.validate()
    return selected


def _check_entries(group: str, kind: str, entries: Sequence[BenchmarkModel], registry: Mapping[str, object]) -> None:
    """Unique labels and known registry names in one list of entries (``models`` or ``tags``)."""
    labels = [m.label or m.name for m in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{group}: labels must be unique, got {labels}")
    unknown = [m.name for m in entries if m.name not in registry]
    if unknown:
        raise ConfigError(f"{group}: unknown {kind}(s) {unknown}; known: {sorted(registry)}")


def register_model(name: str, builder: str | Builder) -> None:
    """Add (or replace) a registry entry: a builder function or its ``"module:function"`` path."""
    MODEL_REGISTRY[name] = builder


def register_tag_model(name: str, builder: str | TagBuilder) -> None:
    """Add (or replace) a :data:`TAG_REGISTRY` entry: ``builder(dataset, params, seed, split) -> TagScorer``."""
    TAG_REGISTRY[name] = builder


def _resolve(registry: dict[str, Any], name: str, kind: str) -> Any:
    """The function registered as ``name`` (a ``"module:function"`` entry is imported once)."""
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    entry = registry[name]
    if isinstance(entry, str):
        module_name, _, function = entry.partition(":")
        entry = getattr(importlib.import_module(module_name), function)
        registry[name] = entry
    return entry


def get_builder(name: str) -> Builder:
    """The builder registered as ``name`` (imported on first use)."""
    builder: Builder = _resolve(MODEL_REGISTRY, name, "model")
    return builder


def get_tag_builder(name: str) -> TagBuilder:
    """The tag-model builder registered as ``name`` (imported on first use)."""
    builder: TagBuilder = _resolve(TAG_REGISTRY, name, "tag model")
    return builder


def seeded_subset(cases: list[EvalCase], max_users: int | None, seed: int) -> list[EvalCase]:
    """``max_users`` of ``cases`` drawn with ``seed``, in their original order (all when None or more)."""
    if max_users is None or max_users >= len(cases):
        return cases
    picked = np.sort(np.random.default_rng(seed).choice(len(cases), max_users, replace=False))
    return [cases[i] for i in picked]


def load_or_prepare(data: DataConfig) -> PreparedDataset:
    """Load ``data.prepared_dir``; prepare it first (``llmrec.data.prepare``) when it is missing."""
    root = Path(data.prepared_dir)
    if not (root / "manifest.json").is_file():
        from llmrec.data.prepare import prepare_dataset

        log.info("no prepared dataset at %s; preparing %s", root, data.dataset)
        return prepare_dataset(data, root)
    return PreparedDataset.load(root)


def hardware_info(num_threads: int) -> dict[str, Any]:
    """CPU model, thread counts and library versions (one line of the report)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "requested_threads": num_threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_one(
    dataset: PreparedDataset, spec: BenchmarkModel, seed: int, eval_cfg: EvalConfig
) -> tuple[dict[str, Any], EvalResult]:
    """Train one model with one seed and evaluate it; returns its report row and result."""
    label = spec.label or spec.name
    started = time.perf_counter()
    model = get_builder(spec.name)(dataset, dict(spec.params), seed)
    build_time = time.perf_counter() - started
    reported = getattr(model, "train_time_s", None)  # a reused run (e.g. llm with run_dir) reports when it was trained
    train_time = float(reported) if reported is not None else build_time
    cases = seeded_subset(dataset.eval_cases(eval_cfg.split), eval_cfg.max_users, eval_cfg.seed)
    started = time.perf_counter()
    result = evaluate(
        model,
        cases,
        len(dataset.catalog),
        ks=eval_cfg.ks,
        exclude_history=eval_cfg.exclude_history,
        batch_size=eval_cfg.batch_size,
        sampled_negatives=eval_cfg.sampled_negatives,
        seed=eval_cfg.seed,
    )
    inference_time = time.perf_counter() - started
    row = {
        "model": spec.name,
        "label": label,
        "seed": seed,
        "metrics": result.metrics,
        "warnings": result.warnings,
        "train_time_s": round(train_time, 2),
        "build_time_s": round(build_time, 2),  # wall time of the builder in this command (training or loading)
        "inference_time_s": round(inference_time, 2),
        "params": spec.params,
        "best_valid": getattr(model, "best_valid", None),
    }
    digest = getattr(model, "recipe_sha256", None)  # llm rows: the resolved recipe's content, seed left out
    if digest is not None:
        row["recipe_sha256"] = digest
    log.info("%s seed %d: ndcg@10 %.4f hr@10 %.4f (train %.0fs)", label, seed, result.metrics.get("ndcg@10", 0.0),
             result.metrics.get("hr@10", 0.0), train_time)
    return row, result


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of every metric and time, per model label."""
    summary = []
    for label in dict.fromkeys(run["label"] for run in runs):
        group = [run for run in runs if run["label"] == label]
        values: dict[str, list[float]] = {}
        for run in group:
            for key, value in {**run["metrics"], "train_time_s": run["train_time_s"],
                               "inference_time_s": run["inference_time_s"]}.items():
                values.setdefault(key, []).append(float(value))
        stats = {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for key, v in values.items()
        }
        summary.append({"label": label, "seeds": [run["seed"] for run in group], "stats": stats})
    return summary


def run_benchmark(config: BenchmarkConfig, out_dir: str | Path | None = None, command: str = "") -> dict[str, Any]:
    """Train and evaluate every model (and tag model) of ``config``; write the report directory atomically.

    Returns:
        The ``results.json`` content.
    """
    import torch

    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(out_dir or config.out_dir)
    dataset = load_or_prepare(config.data)
    started = time.perf_counter()
    runs, results = [], []
    for spec in config.models:
        for seed in spec.seeds or config.seeds:
            row, result = run_one(dataset, spec, seed, config.eval)
            runs.append(row)
            results.append(result)
    tag_runs: list[dict[str, Any]] = []
    if config.tags:
        from llmrec.tags.benchmark import run_tag_one

        tag_runs = [run_tag_one(dataset, spec, seed, config.eval) for spec in config.tags for seed in spec.seeds or config.seeds]
    report = {
        "dataset": {"dir": str(dataset.root), "fingerprint": dataset.fingerprint, "counts": dataset.manifest.get("counts")},
        "eval": to_dict(config.eval),
        "hardware": hardware_info(config.num_threads),
        "command": command,
        "total_time_s": round(time.perf_counter() - started, 1),
        "runs": runs,
        "summary": summarize(runs),
        "tags": tag_runs,  # interest-tag rows (empty without ``tags:`` entries)
        "tags_summary": summarize(tag_runs),
    }
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "results.json", report)
        (tmp / "results.md").write_text(results_markdown(report), encoding="utf-8")
        plot_results(report, tmp / "results.png")
        if config.save_ranks:
            for row, result in zip(runs, results, strict=True):
                write_ranks(result, tmp / "ranks" / f"{row['label']}-seed{row['seed']}.parquet")
    return report


def _read_report(path: Path) -> dict[str, Any]:
    file = path / "results.json"
    if not file.is_file():
        raise ConfigError(f"{file}: no such report (a directory written by `llmrec benchmark`)")
    try:
        report = read_json_object(file)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for key in ("dataset", "eval", "hardware", "runs"):
        if key not in report:
            raise ConfigError(f"{file}: field {key!r} missing; is this a benchmark report?")
    return report


def _same(field_name: str, first: Path, value: Any, other: Path, other_value: Any) -> None:
    if value != other_value:  # both parsed from results.json: plain structural equality
        raise ConfigError(f"{other / 'results.json'}: field {field_name!r} differs from {first / 'results.json'} "
                          f"({other_value!r} vs {value!r}); only reports of the same setup merge")


# Params of an LLM entry that say where its run lives, not what it is: one seed trained by the
# benchmark and another reloaded with ``run_dir`` (e.g. after a crash while ranking) still merge.
LOCATION_PARAMS = ("run_dir", "output_dir")


def _setup_params(run: dict[str, Any]) -> Any:
    """The params that must agree across reports: all of them, less :data:`LOCATION_PARAMS` for a
    row whose resolved recipe content (``recipe_sha256``) is recorded and compared instead."""
    params = run.get("params")
    if run.get("recipe_sha256") is None or not isinstance(params, dict):
        return params
    return {name: value for name, value in params.items() if name not in LOCATION_PARAMS}


def _merge_runs(key: str, reports: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The ``key`` runs ("runs" or "tags") of all reports, grouped by label in first-seen order, seeds ascending."""
    owner: dict[tuple[str, int], Path] = {}
    params: dict[str, tuple[Path, Any]] = {}
    recipes: dict[str, tuple[Path, str]] = {}  # label -> first report and recipe digest seen
    runs: list[dict[str, Any]] = []
    for path, report in reports:
        for run in report.get(key) or []:
            cell = (run["label"], int(run["seed"]))
            if cell in owner:
                raise ConfigError(f"{path / 'results.json'}: {key} row {cell[0]!r} seed {cell[1]} is also in "
                                  f"{owner[cell] / 'results.json'}; each (label, seed) may come from one report")
            owner[cell] = path
            setup = {"model": run.get("model"), "params": _setup_params(run)}
            if run["label"] in params:
                first, value = params[run["label"]]
                _same(f"{key}[{run['label']}].model/params", first, value, path, setup)
            else:
                params[run["label"]] = (path, setup)
            digest = run.get("recipe_sha256")  # absent from baseline rows and from reports before it existed
            if digest is not None:
                known = recipes.setdefault(run["label"], (path, digest))
                _same(f"{key}[{run['label']}].recipe_sha256", known[0], known[1], path, digest)
            runs.append(run)
    order = {label: i for i, label in enumerate(params)}
    return sorted(runs, key=lambda run: (order[run["label"]], int(run["seed"])))


def merge_reports(paths: Sequence[str | Path], out_dir: str | Path, command: str = "") -> dict[str, Any]:
    """Join benchmark reports of the same setup (e.g. one seed per command) into one report directory.

    The reports must agree on the dataset fingerprint, the evaluation settings and the hardware,
    and a label must carry the same parameters (and, for LLM rows, the same resolved recipe
    content: ``recipe_sha256``) in every report; a (label, seed) row may appear
    once. Rows, mean ± std summaries, the markdown table, the chart and the per-user ranks are
    written to ``out_dir`` atomically (``out_dir`` may be one of the inputs).

    Raises:
        ConfigError: naming the file and field that keeps two reports apart.
    """
    dirs = [Path(p) for p in paths]
    if len(dirs) < 2:
        raise ConfigError("merge-reports: give at least two report directories")
    reports = [(path, _read_report(path)) for path in dirs]
    first_path, first = reports[0]
    for path, report in reports[1:]:
        _same("dataset.fingerprint", first_path, first["dataset"].get("fingerprint"), path,
              report["dataset"].get("fingerprint"))
        _same("eval", first_path, first["eval"], path, report["eval"])
        _same("hardware", first_path, first["hardware"], path, report["hardware"])
    runs, tag_runs = _merge_runs("runs", reports), _merge_runs("tags", reports)
    merged = {
        "dataset": first["dataset"],
        "eval": first["eval"],
        "hardware": first["hardware"],
        "command": command,
        "sources": [{"dir": str(path), "command": report.get("command", ""),
                     "total_time_s": report.get("total_time_s", 0.0)} for path, report in reports],
        "total_time_s": round(sum(float(report.get("total_time_s", 0.0)) for _, report in reports), 1),
        "runs": runs,
        "summary": summarize(runs),
        "tags": tag_runs,
        "tags_summary": summarize(tag_runs),
    }
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for path, _ in reports:
            for ranks in sorted((path / "ranks").glob("*.parquet")):
                (tmp / "ranks").mkdir(exist_ok=True)
                shutil.copy2(ranks, tmp / "ranks" / ranks.name)
        write_json(tmp / "results.json", merged)
        (tmp / "results.md").write_text(results_markdown(merged), encoding="utf-8")
        plot_results(merged, tmp / "results.png")
    return merged
