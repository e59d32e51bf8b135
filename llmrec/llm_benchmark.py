"""The fine-tuned LLM recommender as benchmark entries: ``llm`` and the ``llm+pop`` hybrid.

``llm`` fine-tunes a decoder with :func:`llmrec.training.loop.train` from a recipe config (validation
ranking NDCG@10 after each epoch drives early stopping, see :mod:`llmrec.training.ranking_eval`),
or reuses a finished run directory (``params.run_dir``, or its own output directory when an earlier
benchmark trained the same recipe there and was stopped after training), and returns the run's :class:`~llmrec.recommender.Recommender`
(trie-constrained beam search, or the exact full-catalog scorer) to the one evaluator that ranks
Pop, GRU4Rec and SASRec. ``llm+pop`` is a separate row: the LLM's beam list re-scored with a
popularity prior (``log p_llm(item) + weight * log(count + 1)``); it is never reported as the LLM.

Benchmark YAML (``configs/ml100k/benchmark-llm.yaml``)::

    models:
      - name: llm
        params:
          config: [configs/ml100k/smollm2-lora.yaml]   # recipe file(s), merged left to right
          overrides: [train.epochs=2]                  # key=value overrides of the recipe
          run_dir: runs/ml100k-smollm2-lora            # optional: reuse this finished run, no training
          scoring: beam                                # beam | full_catalog | catalog_head (train.format: catalog)
          settings: []                                 # inference settings when ranking, e.g. [catalog_head.history_views=[20,14,7]]

Launch: ``llmrec benchmark --config configs/ml100k/benchmark-llm.yaml``
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.config import ConfigError, RunConfig, comparable, load_benchmark_recipe
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import UserSequence
from llmrec.io import write_json
from llmrec.training.ranking_eval import SCORINGS  # the scorings a decoder run can be ranked with

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "configs/ml100k/smollm2-lora.yaml"
TRAIN_TIME_FILE = "benchmark_train.json"  # written into a run trained by the benchmark (its wall time)
# Keys of a run's config.yaml that differ between seeds or machines of one recipe (left out of its digest).
PER_RUN_KEYS = (("train", "seed"), ("train", "output_dir"), ("data", "prepared_dir"))
# Runs trained in this process, by resolved output directory: (resolved config, run dir, seconds).
# ``llm+pop`` reuses the ``llm`` row's run; another config in the same directory is an error.
_TRAINED: dict[str, tuple[str, Path, float]] = {}


@dataclass
class LLMParams:
    """The ``params`` of an ``llm`` / ``llm+pop`` benchmark entry."""

    config: list[str] = field(default_factory=lambda: [DEFAULT_RECIPE])  # recipe YAML file(s)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of the recipe
    run_dir: str | None = None  # reuse this finished run (no training); None trains one
    output_dir: str | None = None  # where a new run goes (default: the recipe's train.output_dir + -seed<N>)
    scoring: str = "beam"  # beam (constrained beam search) | full_catalog (exact likelihood of every item) | catalog_head (train.format: catalog runs)
    settings: list[str] = field(default_factory=list)  # inference settings of the run when it is ranked (key.sub=value, e.g. catalog_head.history_views=[20,14,7]); not used by the per-epoch validation
    num_beams: int | None = None  # beam width at ranking time (None: the recipe's generation.num_beams)
    batch_size: int | None = None  # users per model call at ranking time (None: generation.batch_size)
    valid_users: int | None = 100  # validation users ranked after each epoch (None = all)
    valid_num_beams: int = 20  # beam width of the per-epoch validation ranking
    device: str | None = None  # cpu | cuda (None: CUDA when available)
    pop_weight: float = 0.0  # llm+pop only: weight of log(popularity) added to the LLM log-likelihood
    pop_weights: list[float] = field(default_factory=list)  # llm+pop only: candidates chosen on validation (overrides pop_weight)
    pool: int = 50  # llm+pop only: beam candidates re-scored (>= the evaluator's largest K)


def parse_params(params: dict[str, Any]) -> LLMParams:
    """Typed :class:`LLMParams` from a benchmark entry's ``params`` (unknown keys are an error)."""
    from llmrec.config import from_dict

    raw = dict(params)
    if isinstance(raw.get("config"), str):
        raw["config"] = [raw["config"]]
    parsed = from_dict(LLMParams, raw, "models[].params")
    if parsed.scoring not in SCORINGS:
        raise ConfigError(f"models[].params.scoring must be one of {SCORINGS}, got {parsed.scoring!r}")
    from llmrec.run_loading import check_inference_override

    for setting in parsed.settings:  # refused before hours of training, not after
        try:
            check_inference_override(setting)
        except ConfigError as err:
            raise ConfigError(f"models[].params.settings: {err}") from None
    return parsed


def recipe_config(params: LLMParams, dataset: PreparedDataset, seed: int) -> RunConfig:
    """The recipe with the benchmark's dataset, seed and output directory forced in."""
    return load_benchmark_recipe(params.config, params.overrides, dataset.root, seed, params.output_dir)


def recipe_digest(run_dir: Path) -> str | None:
    """SHA-256 of the run's resolved ``config.yaml`` without its per-run keys (:data:`PER_RUN_KEYS`).

    Two seeds of one recipe share the digest; an edit to the recipe's content changes it even when
    the benchmark entry names the same files (None: the run directory has no config.yaml). Fields
    added to the schema later are left out at their default (:func:`llmrec.config.comparable`), so a
    run written before one existed and a run written after share the digest.
    """
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    tree = comparable(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    for section, key in PER_RUN_KEYS:
        if isinstance(tree.get(section), dict):
            tree[section].pop(key, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode("utf-8")).hexdigest()


class LLMRanker:
    """A loaded run as a ``TopKRanker`` plus what the benchmark reports about it."""

    def __init__(self, recommender: Any, train_time_s: float | None, run_dir: Path, best_valid: dict[str, Any] | None):
        self.recommender = recommender
        self.train_time_s = train_time_s  # wall time of the fine-tuning run (None: unknown)
        self.run_dir = run_dir
        self.best_valid = best_valid  # best per-epoch validation ranking metrics of the run
        self.recipe_sha256 = recipe_digest(run_dir)  # what merge-reports compares across seeds

    def rank(self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.recommender.rank(histories, k, exclude)  # type: ignore[no-any-return]


class LLMScorer(LLMRanker):
    """A run loaded with ``scoring: full_catalog`` (exact item log-likelihoods) or ``catalog_head``: a ``CatalogScorer``."""

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        with torch.inference_mode():
            return self.recommender.score(histories)  # type: ignore[no-any-return]


class PopularityRescorer:
    """``TopKRanker``: the LLM's top ``pool`` items re-scored with ``weight * log(count + 1)``.

    Items outside the LLM's pool are never ranked, so every returned item is one the LLM generated.
    """

    def __init__(self, llm: Any, counts: np.ndarray, weight: float, pool: int):
        self.llm = llm
        self.log_counts = torch.from_numpy(np.log1p(counts.astype(np.float64))).float()  # (N,)
        self.weight = weight
        self.pool = pool
        self.train_time_s = getattr(llm, "train_time_s", None)
        self.best_valid: dict[str, Any] | None = getattr(llm, "best_valid", None)
        self.recipe_sha256: str | None = getattr(llm, "recipe_sha256", None)

    def rank(self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        items, scores = self.llm.rank(histories, max(k, self.pool), exclude)  # (B, P)
        prior = torch.where(items >= 0, self.log_counts[items.clamp(min=0)], 0.0)
        blended = torch.where(items >= 0, scores + self.weight * prior, float("-inf"))
        order = torch.sort(blended, dim=1, descending=True, stable=True).indices[:, :k]
        return items.gather(1, order), blended.gather(1, order)


class MemoRanker:
    """Caches a ranker's lists per (user, k): several re-scorings of one pool cost one model call."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.cache: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def rank(self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [(h.user_id, len(h), k) for h in histories]
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        if todo:
            items, scores = self.inner.rank([histories[i] for i in todo], k, [exclude[i] for i in todo])
            for row, i in enumerate(todo):
                self.cache[keys[i]] = (items[row], scores[row])
        return (torch.stack([self.cache[key][0] for key in keys]), torch.stack([self.cache[key][1] for key in keys]))


def select_pop_weight(llm: Any, dataset: PreparedDataset, counts: np.ndarray, weights: Sequence[float], pool: int,
                      num_users: int | None, seed: int) -> tuple[float, dict[str, float]]:
    """The weight with the best validation NDCG@10 (ties: the smaller weight), and every weight's NDCG@10.

    The LLM ranks each sampled validation user once (``pool`` items); each weight only re-scores.
    """
    from llmrec.evaluation.evaluate import evaluate
    from llmrec.training.ranking_eval import sample_cases

    cases = sample_cases(dataset.eval_cases("valid"), num_users, seed)
    memo = MemoRanker(llm)
    found: dict[str, float] = {}
    for weight in sorted(weights):
        result = evaluate(PopularityRescorer(memo, counts, weight, pool), cases, len(dataset.catalog), ks=[10])
        found[str(weight)] = result.metrics["ndcg@10"]
    best = max(sorted(weights), key=lambda w: found[str(w)])  # max keeps the first (smallest) of equals
    return best, found


def train_counts(dataset: PreparedDataset) -> np.ndarray:
    """(N,) interactions per item in the train split (the popularity prior)."""
    frame = dataset.interactions
    indices = frame.loc[frame["split"] == "train", "item_index"].to_numpy()
    return np.bincount(indices, minlength=len(dataset.catalog))


def train_run(run_cfg: RunConfig, dataset: PreparedDataset, params: LLMParams) -> tuple[Path, float]:
    """Fine-tune per ``run_cfg`` with validation-ranking early stopping; returns (run dir, seconds)."""
    from llmrec.training.loop import train
    from llmrec.training.ranking_eval import run_ranking_eval_fn
    from llmrec.training.run_dir import resume_or_start

    eval_fn = run_ranking_eval_fn(run_cfg, dataset, params.valid_users, params.valid_num_beams)
    resume = resume_or_start(Path(run_cfg.train.output_dir), run_cfg)
    result = train(run_cfg, command=f"llmrec benchmark (llm, seed {run_cfg.train.seed})", resume=resume,
                   eval_fn=eval_fn, device=params.device)
    # Summed over resumes: an interrupted benchmark's earlier calls count up to their last checkpoint.
    record_train_time(result.run_dir, result.train_seconds, result.global_step, validation_setup(params))
    return result.run_dir, result.train_seconds


def validation_setup(params: LLMParams) -> dict[str, Any]:
    """The entry's per-epoch validation (it picks the kept epoch, yet is not in the run's config.yaml)."""
    return {"users": params.valid_users, "num_beams": params.valid_num_beams}


def record_train_time(run_dir: Path, seconds: float, global_step: int, validation: dict[str, Any] | None = None) -> None:
    """Write the wall time (and validation setup) of a run trained by the benchmark into ``RUN/benchmark_train.json``."""
    record: dict[str, Any] = {"train_time_s": round(seconds, 2), "global_step": global_step}
    if validation is not None:
        record["validation"] = validation
    write_json(run_dir / TRAIN_TIME_FILE, record)


def recorded_train_time(run_dir: Path) -> float | None:
    """The wall time :func:`record_train_time` wrote for ``run_dir`` (None: not trained by a benchmark)."""
    path = run_dir / TRAIN_TIME_FILE
    return float(json.loads(path.read_text(encoding="utf-8"))["train_time_s"]) if path.is_file() else None


def finished_train_time(run_dir: Path, run_cfg: RunConfig, params: LLMParams, dataset: PreparedDataset) -> float | None:
    """The recorded training time of a finished benchmark-trained run of ``run_cfg`` in ``run_dir``.

    None when there is none to reuse: the directory is missing, unfinished, holds another config,
    was not trained by a benchmark (no :data:`TRAIN_TIME_FILE`, so no honest training time), or
    was validated otherwise than ``params`` ask (the validation chose its kept epoch). A record
    without the validation setup (written before it was kept) is checked by the number of
    validation users its epochs ranked.
    """
    from llmrec.training.run_dir import is_finished_run_of

    path = run_dir / TRAIN_TIME_FILE
    if not path.is_file() or not is_finished_run_of(run_dir, run_cfg):
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    seconds = float(record["train_time_s"])
    if "validation" in record:
        return seconds if record["validation"] == validation_setup(params) else None
    num_valid = len(dataset.eval_cases("valid"))
    wanted = num_valid if params.valid_users is None else min(params.valid_users, num_valid)
    best = best_validation(run_dir)
    return seconds if best is not None and int(best.get("valid_users", -1)) == wanted else None


def load_ranker(run_dir: Path, dataset: PreparedDataset, params: LLMParams, train_time_s: float | None) -> LLMRanker:
    """Load ``run_dir`` as a ranker; refuse a run trained on another catalog than the benchmark's."""
    from llmrec.recommender import Recommender

    recommender = Recommender.load(run_dir, device=params.device, scoring=params.scoring, overrides=params.settings)
    if recommender.dataset.fingerprint != dataset.fingerprint:
        raise ValueError(
            f"run {run_dir} was trained on {recommender.dataset.root} (catalog {recommender.dataset.fingerprint[:12]}), "
            f"the benchmark ranks {dataset.root} (catalog {dataset.fingerprint[:12]}): item indices would differ"
        )
    inner = getattr(recommender.ranker, "scorer", recommender.ranker)  # ScoreRanker wraps the scorer
    if params.num_beams is not None and hasattr(inner, "num_beams"):
        inner.num_beams = params.num_beams
    if params.batch_size is not None and hasattr(inner, "batch_size"):
        inner.batch_size = params.batch_size
    if train_time_s is None:
        train_time_s = recorded_train_time(run_dir)
    cls = LLMScorer if params.scoring in ("full_catalog", "catalog_head") else LLMRanker
    return cls(recommender, train_time_s, run_dir, best_validation(run_dir))


def best_validation(run_dir: Path) -> dict[str, Any] | None:
    """The per-epoch evaluation with the highest ``ndcg@10`` in ``RUN/metrics.json`` (None if none)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    evals = [e for e in json.loads(path.read_text(encoding="utf-8")).get("evals", []) if "ndcg@10" in e]
    return max(evals, key=lambda e: e["ndcg@10"]) if evals else None


def build_and_train(dataset: PreparedDataset, params: dict[str, Any], seed: int) -> LLMRanker:
    """Benchmark entry ``llm``: train (or reuse ``params.run_dir``) and return the run's ranker."""
    parsed = parse_params(params)
    if parsed.run_dir is not None:
        log.info("llm: reusing run %s (no training)", parsed.run_dir)
        return load_ranker(Path(parsed.run_dir), dataset, parsed, None)
    from llmrec.config import dump_yaml

    run_cfg = recipe_config(parsed, dataset, seed)
    out, resolved = Path(run_cfg.train.output_dir), dump_yaml(run_cfg)
    key = str(out.resolve())
    if key in _TRAINED:
        if _TRAINED[key][0] != resolved:
            raise ConfigError(
                f"llm (seed {seed}): output_dir {out} already holds another run of this benchmark (another seed or "
                "recipe); give each its own directory, e.g. leave params.output_dir unset for <recipe dir>-seed<N>")
        log.info("llm: reusing run %s trained earlier in this benchmark", key)
    elif (done := finished_train_time(out, run_cfg, parsed, dataset)) is not None:
        log.info("llm: %s already holds this recipe's finished run (trained in %.0f s): reloading it, no training",
                 out, done)
        _TRAINED[key] = (resolved, out, done)
    else:
        _TRAINED[key] = (resolved, *train_run(run_cfg, dataset, parsed))
    _, run_dir, seconds = _TRAINED[key]
    return load_ranker(run_dir, dataset, parsed, seconds)


def build_hybrid(dataset: PreparedDataset, params: dict[str, Any], seed: int) -> PopularityRescorer:
    """Benchmark entry ``llm+pop``: the ``llm`` ranker's pool re-scored with a popularity prior."""
    parsed = parse_params(params)
    if parsed.scoring != "beam":
        raise ConfigError("llm+pop re-scores the beam list: use scoring: beam")
    llm = build_and_train(dataset, params, seed)
    counts = train_counts(dataset)
    if not parsed.pop_weights:
        return PopularityRescorer(llm, counts, parsed.pop_weight, parsed.pool)
    weight, found = select_pop_weight(llm, dataset, counts, parsed.pop_weights, parsed.pool, parsed.valid_users, seed)
    log.info("llm+pop: pop_weight %s chosen on validation (ndcg@10 by weight: %s)", weight, found)
    hybrid = PopularityRescorer(llm, counts, weight, parsed.pool)
    hybrid.best_valid = {"pop_weight": weight, "valid_ndcg@10_by_weight": found, "llm": llm.best_valid}
    return hybrid
