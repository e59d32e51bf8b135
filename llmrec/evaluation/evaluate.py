"""One evaluator for every model: rank the target of each query, then compute the metrics.

A :class:`~llmrec.evaluation.protocol.CatalogScorer` scores the whole catalog. Items in the
query's history are masked out (``exclude_history``), and the target's 0-based rank is the number
of remaining items with a higher score plus those with an equal score and a lower item index
(ties go to the lower index, the same for every model). A
:class:`~llmrec.evaluation.protocol.TopKRanker` returns its own list; the target's rank is its
position there, or "not in the list" (a miss at every K). Malformed lists (padding, ids outside
the catalog, duplicates, excluded history items) never raise a metric: they are either an error
(``on_invalid="error"``) or counted in :attr:`EvalResult.warnings`.

Under Accelerate, pass ``accelerator``: each process ranks one contiguous shard of the queries
and every process receives the same, complete result.

Example::

    result = evaluate(model, dataset.eval_cases("test"), len(dataset.catalog))
    write_metrics(result, "RUN/metrics.json"); write_ranks(result, "RUN/ranks.parquet")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from llmrec.data.schema import EvalCase
from llmrec.evaluation.distributed import gather_rows, shard_bounds
from llmrec.evaluation.metrics import coverage_at_k, ranking_metrics
from llmrec.evaluation.protocol import CatalogScorer, TopKRanker
from llmrec.io import atomic_dir, atomic_file, write_json

if TYPE_CHECKING:
    from llmrec.data.dataset import PreparedDataset

DEFAULT_KS = (1, 5, 10, 20)
# Per-query counters of a top-K ranker's malformed output (summed into EvalResult.warnings).
WARNING_KEYS = ("padded_slots", "invalid_ids", "duplicate_ids", "history_ids", "target_in_history")


@dataclass
class EvalResult:
    """Metrics plus the per-query evidence they were computed from."""

    metrics: dict[str, float]  # "hr@10", "ndcg@10", "mrr@10", "coverage@10", ... (means over queries)
    user_ids: list[str]  # one per query, in the order of the cases
    targets: np.ndarray  # (Q,) target item index
    ranks: np.ndarray  # (Q,) 0-based rank of the target; -1 = not ranked (miss at every K)
    top_items: np.ndarray  # (Q, max K) item indices best first; -1 = empty slot
    warnings: dict[str, int] = field(default_factory=dict)  # counts of malformed ranker output
    sampled_ranks: np.ndarray | None = None  # (Q,) rank among sampled negatives (sampled mode)
    model_kind: str = "scorer"  # scorer | ranker

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "warnings": dict(self.warnings),
            "num_queries": len(self.user_ids),
            "model_kind": self.model_kind,
        }


def evaluate(
    model: CatalogScorer | TopKRanker,
    cases: Sequence[EvalCase],
    num_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
    batch_size: int = 256,
    sampled_negatives: int = 0,
    seed: int = 0,
    coverage_k: int = 10,
    on_invalid: str = "count",
    accelerator: Any | None = None,
) -> EvalResult:
    """Rank every case's target with ``model`` and compute the ranking metrics.

    Args:
        model: A ``CatalogScorer`` (preferred when a model has both methods) or a ``TopKRanker``.
        cases: The queries (``PreparedDataset.eval_cases(split)``).
        num_items: Catalog size N (the scorer's number of columns).
        ks: Cut-offs of HR/NDCG/MRR.
        exclude_history: Never rank items in the query's own history.
        batch_size: Queries per model call.
        sampled_negatives: 0 = full-catalog ranking only; N > 0 also ranks the target against
            N seeded random negatives (scorers only), reported as ``sampled_*`` metrics.
        seed: Seeds the sampled negatives (per query, so sharding does not change them).
        coverage_k: K of the ``coverage@K`` metric.
        on_invalid: ``count`` (malformed ranker output is counted in ``warnings``) or ``error``.
        accelerator: An ``accelerate.Accelerator`` to shard the queries over its processes.

    Returns:
        An :class:`EvalResult`, complete and identical on every process.
    """
    _check_arguments(cases, num_items, ks, batch_size, sampled_negatives, on_invalid)
    is_scorer = isinstance(model, CatalogScorer)
    if not is_scorer and not isinstance(model, TopKRanker):
        raise TypeError(f"{type(model).__name__} implements neither CatalogScorer.score nor TopKRanker.rank")
    if sampled_negatives and not is_scorer:
        raise ValueError("sampled_negatives needs a CatalogScorer (a top-K ranker gives no score to negatives)")
    max_k = max(max(ks), coverage_k)
    num_processes = accelerator.num_processes if accelerator is not None else 1
    process_index = accelerator.process_index if accelerator is not None else 0
    start, end = shard_bounds(len(cases), num_processes, process_index)
    batches = []
    for offset in range(start, end, batch_size):
        batch = list(cases[offset : min(offset + batch_size, end)])
        if is_scorer:
            with torch.no_grad():
                scores = model.score([case.history for case in batch])  # type: ignore[union-attr]
            scores = _check_scores(scores, len(batch), num_items, type(model).__name__).float().cpu()  # (B, N)
            batch_out = _rank_with_scores(scores, batch, num_items, max_k, exclude_history)
            if sampled_negatives:
                batch_out["sampled"] = _sampled_ranks(scores, batch, num_items, exclude_history, sampled_negatives, seed, offset)
        else:
            batch_out = _rank_with_ranker(model, batch, num_items, max_k, exclude_history, on_invalid)  # type: ignore[arg-type]
        batches.append(batch_out)
    local = _concat(batches, max_k, sampled_negatives > 0, is_scorer)
    rows = gather_rows(accelerator, local, start, len(cases)) if num_processes > 1 else local
    return _summarize(rows, cases, num_items, ks, coverage_k, max_k, is_scorer, sampled_negatives)


def _check_arguments(
    cases: Sequence[EvalCase], num_items: int, ks: Sequence[int], batch_size: int, sampled: int, on_invalid: str
) -> None:
    if not cases:
        raise ValueError("no evaluation cases")
    if num_items <= 0 or batch_size <= 0 or sampled < 0:
        raise ValueError("num_items and batch_size must be positive and sampled_negatives >= 0")
    if not ks or any(k <= 0 for k in ks):
        raise ValueError(f"ks must be non-empty and positive, got {list(ks)}")
    if on_invalid not in ("count", "error"):
        raise ValueError(f"on_invalid must be count or error, got {on_invalid!r}")
    for case in cases:
        if not 0 <= case.target < num_items:
            raise ValueError(f"user {case.user_id!r}: target index {case.target} is outside the catalog (N={num_items})")


def history_mask(cases: Sequence[EvalCase], num_items: int, exclude_history: bool) -> torch.Tensor:
    """``(B, N)`` boolean mask, True for items excluded from the ranking of each case."""
    mask = torch.zeros(len(cases), num_items, dtype=torch.bool)
    if exclude_history:
        for row, case in enumerate(cases):
            if case.history.items:
                mask[row, list(case.history.items)] = True
    return mask


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among the non-excluded items; ties go to the lower index.

    Args:
        scores: ``(B, N)`` float scores.
        targets: ``(B,)`` item indices.
        excluded: ``(B, N)`` bool, items that take no part in the ranking.

    Returns:
        ``(B,)`` int64 ranks; ``-1`` where the target itself is excluded.
    """
    rows = torch.arange(scores.shape[0])
    target_scores = scores[rows, targets].unsqueeze(1)  # (B, 1)
    lower_index = torch.arange(scores.shape[1]).unsqueeze(0) < targets.unsqueeze(1)  # (B, N)
    ahead = (scores > target_scores) | ((scores == target_scores) & lower_index)
    ranks = (ahead & ~excluded).sum(dim=1)
    return torch.where(excluded[rows, targets], torch.full_like(ranks, -1), ranks)


def top_k_items(scores: torch.Tensor, excluded: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` best items per row (ties to the lower index); excluded slots become -1."""
    masked = scores.masked_fill(excluded, float("-inf"))
    # A stable sort keeps equal scores in index order, so ties go to the lower index.
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    valid = ~torch.gather(excluded, 1, order)
    return torch.where(valid, order, torch.full_like(order, -1))


def _rank_with_scores(
    scores: torch.Tensor, batch: list[EvalCase], num_items: int, max_k: int, exclude_history: bool
) -> dict[str, np.ndarray]:
    excluded = history_mask(batch, num_items, exclude_history)
    targets = torch.tensor([case.target for case in batch], dtype=torch.long)
    ranks = target_ranks(scores, targets, excluded)
    top = top_k_items(scores, excluded, min(max_k, num_items))
    if top.shape[1] < max_k:  # catalog smaller than K
        top = torch.cat([top, torch.full((len(batch), max_k - top.shape[1]), -1, dtype=top.dtype)], dim=1)
    counts = np.zeros((len(batch), len(WARNING_KEYS)), dtype=np.int64)
    counts[:, WARNING_KEYS.index("target_in_history")] = (ranks < 0).numpy()
    return {"ranks": ranks.numpy(), "top": top.numpy(), "counts": counts}


def _check_scores(scores: Any, rows: int, num_items: int, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name}.score must return a torch.Tensor, got {type(scores).__name__}")
    if tuple(scores.shape) != (rows, num_items):
        raise ValueError(f"{name}.score returned shape {tuple(scores.shape)}, expected ({rows}, {num_items})")
    if torch.isnan(scores).any():
        raise ValueError(f"{name}.score returned NaN scores")
    return scores


def _rank_with_ranker(
    model: TopKRanker, batch: list[EvalCase], num_items: int, max_k: int, exclude_history: bool, on_invalid: str
) -> dict[str, np.ndarray]:
    name = type(model).__name__
    exclude = [set(case.history.items) if exclude_history else set() for case in batch]
    with torch.no_grad():
        ids, _ = model.rank([case.history for case in batch], max_k, exclude)
    ids_array = np.asarray(torch.as_tensor(ids).cpu().numpy(), dtype=np.int64)
    if ids_array.ndim != 2 or ids_array.shape[0] != len(batch) or ids_array.shape[1] < max_k:
        raise ValueError(f"{name}.rank returned shape {ids_array.shape}, expected ({len(batch)}, >= {max_k}) padded with -1")
    ids_array = ids_array[:, :max_k]
    ranks = np.full(len(batch), -1, dtype=np.int64)
    top = np.full((len(batch), max_k), -1, dtype=np.int64)
    counts = np.zeros((len(batch), len(WARNING_KEYS)), dtype=np.int64)
    for row, case in enumerate(batch):
        seen: set[int] = set()
        for slot, item in enumerate(ids_array[row].tolist()):
            problem = _slot_problem(item, num_items, seen, exclude[row])
            if problem is not None:
                counts[row, WARNING_KEYS.index(problem)] += 1
                if problem != "padded_slots" and on_invalid == "error":
                    raise ValueError(f"{name}.rank, user {case.user_id!r}, slot {slot}: item {item} is one of {problem}")
                continue
            seen.add(item)
            top[row, slot] = item
            if item == case.target and ranks[row] < 0:
                ranks[row] = slot
        if case.target in exclude[row]:
            counts[row, WARNING_KEYS.index("target_in_history")] = 1
        if on_invalid == "error" and counts[row, 0]:
            raise ValueError(f"{name}.rank, user {case.user_id!r}: returned fewer than {max_k} items")
    return {"ranks": ranks, "top": top, "counts": counts}


def _slot_problem(item: int, num_items: int, seen: set[int], exclude: set[int]) -> str | None:
    if item == -1:
        return "padded_slots"
    if not 0 <= item < num_items:
        return "invalid_ids"
    if item in seen:
        return "duplicate_ids"
    if item in exclude:
        return "history_ids"
    return None


def _sampled_ranks(
    scores: torch.Tensor,
    batch: list[EvalCase],
    num_items: int,
    exclude_history: bool,
    negatives: int,
    seed: int,
    offset: int,
) -> np.ndarray:
    """Rank of each target among ``negatives`` items drawn uniformly (per-query seeded)."""
    ranks = np.zeros(len(batch), dtype=np.int64)
    for row, case in enumerate(batch):
        rng = np.random.default_rng([seed, offset + row])  # same draw on any number of processes
        banned = set(case.history.items) if exclude_history else set()
        if case.target in banned:
            ranks[row] = -1
            continue
        banned.add(case.target)
        pool = np.setdiff1d(np.arange(num_items), np.fromiter(banned, dtype=np.int64))
        drawn = rng.choice(pool, size=min(negatives, pool.size), replace=False)
        target_score = scores[row, case.target].item()
        drawn_scores = scores[row, torch.from_numpy(drawn)].numpy()
        ahead = (drawn_scores > target_score) | ((drawn_scores == target_score) & (drawn < case.target))
        ranks[row] = int(ahead.sum())
    return ranks


def _concat(batches: list[dict[str, np.ndarray]], max_k: int, sampled: bool, is_scorer: bool) -> dict[str, np.ndarray]:
    keys = ["ranks", "top", "counts"] + (["sampled"] if sampled else [])
    if not batches:  # an empty shard (more processes than queries)
        empty = {"ranks": np.zeros(0, np.int64), "top": np.zeros((0, max_k), np.int64)}
        empty["counts"] = np.zeros((0, len(WARNING_KEYS)), np.int64)
        if sampled:
            empty["sampled"] = np.zeros(0, np.int64)
        return empty
    return {key: np.concatenate([b[key] for b in batches]) for key in keys}


def _summarize(
    rows: dict[str, np.ndarray],
    cases: Sequence[EvalCase],
    num_items: int,
    ks: Sequence[int],
    coverage_k: int,
    max_k: int,
    is_scorer: bool,
    sampled_negatives: int,
) -> EvalResult:
    metrics = ranking_metrics(rows["ranks"], ks)
    metrics[f"coverage@{coverage_k}"] = coverage_at_k(rows["top"], coverage_k, num_items)
    if sampled_negatives:
        metrics.update(ranking_metrics(rows["sampled"], ks, prefix="sampled_"))
        metrics["sampled_negatives"] = float(sampled_negatives)
    totals = rows["counts"].sum(axis=0)
    warnings = {key: int(total) for key, total in zip(WARNING_KEYS, totals, strict=True)}
    if not is_scorer:
        bad_slots = totals[: WARNING_KEYS.index("history_ids") + 1].sum()
        metrics["valid_item_rate"] = float(1.0 - bad_slots / (len(cases) * max_k))
        warnings["short_lists"] = int((rows["counts"][:, 0] > 0).sum())
    metrics["num_queries"] = float(len(cases))
    return EvalResult(
        metrics=metrics,
        user_ids=[case.user_id for case in cases],
        targets=np.asarray([case.target for case in cases], dtype=np.int64),
        ranks=rows["ranks"],
        top_items=rows["top"],
        warnings=warnings,
        sampled_ranks=rows.get("sampled"),
        model_kind="scorer" if is_scorer else "ranker",
    )


def ranks_frame(result: EvalResult) -> pd.DataFrame:
    """Per-query table: ``user_id``, ``target``, ``rank`` (-1 = not ranked), ``top_items``."""
    frame = pd.DataFrame({"user_id": result.user_ids, "target": result.targets, "rank": result.ranks})
    if result.sampled_ranks is not None:
        frame["sampled_rank"] = result.sampled_ranks
    frame["top_items"] = [row[row >= 0].tolist() for row in result.top_items]
    return frame


def write_ranks(result: EvalResult, path: str | Path) -> Path:
    """Write the per-query ranks atomically, as Parquet (``.parquet``) or CSV (``.csv``)."""
    path = Path(path)
    frame = ranks_frame(result)
    if path.suffix == ".parquet":
        with atomic_file(path, "wb") as handle:
            frame.to_parquet(handle, index=False)
    elif path.suffix == ".csv":
        frame["top_items"] = [" ".join(map(str, items)) for items in frame["top_items"]]
        with atomic_file(path, "w") as handle:
            frame.to_csv(handle, index=False)
    else:
        raise ValueError(f"{path}: per-user ranks are written as .parquet or .csv")
    return path


def write_metrics(result: EvalResult, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"metrics", "warnings", "num_queries", "model_kind", **extra}`` as JSON, atomically."""
    payload = result.to_dict()
    payload.update(extra or {})
    write_json(path, payload)
    return Path(path)


def evaluate_to_dir(scorer: Any, cases: Sequence[EvalCase], num_items: int, out: str | Path,
                    extra: dict[str, Any] | None = None, **options: Any) -> EvalResult:
    """:func:`evaluate`, then ``out/metrics.json`` (with ``extra``) and ``out/ranks.parquet``.

    ``out`` appears whole or not at all (written beside it, then renamed), and replaces an earlier
    ``out``; ``options`` go to :func:`evaluate` (``batch_size``, ``sampled_negatives``, ``seed``, ...).
    What ``llmrec evaluate`` and ``scripts/evaluate_run.py`` write.
    """
    result = evaluate(scorer, cases, num_items, **options)
    with atomic_dir(out, overwrite=True) as tmp:
        write_metrics(result, tmp / "metrics.json", extra)
        write_ranks(result, tmp / "ranks.parquet")
    return result


def evaluate_split_to_dir(scorer: Any, dataset: PreparedDataset, split: str, out: str | Path, *, users: int | None, seed: int,
                          model: str, scoring: str, settings: Sequence[str], command: str,
                          **options: Any) -> EvalResult:
    """Rank ``dataset``'s ``split`` cases (a seeded subset of ``users`` of them, or all) into ``out``
    with :func:`evaluate_to_dir`, recording in ``metrics.json`` what was ranked (model or run
    directory, with its inference settings), on which prepared data and split, and the command.
    What ``llmrec evaluate`` and ``scripts/evaluate_run.py`` both do once the scorer is loaded."""
    from llmrec.training.ranking_eval import sample_cases

    cases = sample_cases(dataset.eval_cases(split), users, seed)
    extra = {"dataset_dir": str(dataset.root), "split": split, "model": model, "seed": seed, "users": len(cases),
             "scoring": scoring, "settings": list(settings), "command": command}
    return evaluate_to_dir(scorer, cases, len(dataset.catalog), out, extra, seed=seed, **options)
