"""The run directory of an encoder run: config, adapter, item residuals, metrics, curve, run.json.

Written atomically (a temporary directory renamed into place) by :func:`save_run`; the
two-tower and tag trainers share :func:`encoder_run_header` and :func:`plot_curve`.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import llmrec
from llmrec.config import RunConfig, dump_yaml
from llmrec.data.dataset import PreparedDataset
from llmrec.encoder.recommender import ItemEmbeddingCache
from llmrec.encoder.two_tower import ITEM_RESIDUALS_FILE, TwoTowerModel, save_item_residuals
from llmrec.io import atomic_dir, write_json
from llmrec.training.run_dir import package_versions

if TYPE_CHECKING:
    from llmrec.encoder.train import EncoderRunConfig


def save_run(
    out_dir: Path,
    cfg: EncoderRunConfig,
    dataset: PreparedDataset,
    model: TwoTowerModel,
    tokenizer: Any,
    history: list[dict[str, float]],
    summary: dict[str, Any],
    command: str | None,
    overwrite: bool,
    item_matrix: tuple[str, torch.Tensor | None] | None = None,
) -> None:
    """Write the run directory (run.json kind ``encoder``, adapter/, item residuals, metrics, curve).

    ``item_matrix`` (cache key, embeddings) seeds ``RUN/item_embeddings/`` so loading the run
    does not embed the catalog again.
    """
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if item_matrix is not None and item_matrix[1] is not None:
            ItemEmbeddingCache(tmp / "item_embeddings").put(item_matrix[0], item_matrix[1])
        (tmp / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
        (tmp / "command.txt").write_text((command or " ".join(sys.argv)) + "\n", encoding="utf-8")
        write_json(tmp / "versions.json", package_versions())
        write_json(tmp / "run.json", run_info(cfg, dataset))
        model.encoder.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
        save_item_residuals(model, tmp / ITEM_RESIDUALS_FILE)
        tokenizer.save_pretrained(tmp / "tokenizer")
        valid = [h for h in history if any(k.startswith("valid_") for k in h)]
        write_json(tmp / "metrics.json", {**summary, **(valid[-1] if valid else {}), "history": history})
        (tmp / "logs").mkdir()
        with open(tmp / "logs" / "train_log.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(h) + "\n" for h in history)
        plot_curve(history, tmp / "train_curve.png")


def encoder_run_header(cfg: RunConfig, dataset: PreparedDataset, task: str) -> dict[str, Any]:
    """The fields every encoder run's ``run.json`` starts with (two-tower and tag runs alike)."""
    return {
        "kind": "encoder",
        "task": task,
        "base_model": cfg.model.name_or_path,
        "dataset_dir": str(Path(dataset.root).resolve()),
        "catalog_fingerprint": dataset.fingerprint,
        "seed": cfg.train.seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "llmrec_version": getattr(llmrec, "__version__", "0"),
    }


def run_info(cfg: EncoderRunConfig, dataset: PreparedDataset) -> dict[str, Any]:
    """The ``run.json`` of an encoder run (what :meth:`TwoTowerRecommender.load` reads)."""
    from llmrec.encoder.train import text_spec  # the training module imports this one

    return {
        **encoder_run_header(cfg, dataset, "two_tower"),
        "two_tower": {
            "item_tower": cfg.encoder.item_tower,
            "item_ids": cfg.encoder.item_ids,
            "max_user_tokens": cfg.encoder.max_user_tokens,
            "max_item_tokens": cfg.encoder.max_item_tokens,
            "text": vars(text_spec(cfg)),
        },
    }



def plot_curve(history: list[dict[str, float]], path: Path) -> None:
    """Training loss (and validation NDCG@10 where measured) against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if losses:
        axis.plot(*zip(*losses, strict=True), label="train loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("InfoNCE loss")
    valid = [(h["step"], h["valid_ndcg@10"]) for h in history if "valid_ndcg@10" in h]
    if valid:
        twin = axis.twinx()
        twin.plot(*zip(*valid, strict=True), "o-", color="tab:orange", label="valid NDCG@10")
        twin.set_ylabel("valid NDCG@10")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
