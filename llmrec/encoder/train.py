"""Contrastive training of the two-tower recommender with Accelerate (run directory: ``encoder.run_dir``).

Training pairs are (history before position t, item at t) for every position t of a user's
*train* split (validation and test targets are never trained on). Each step encodes the batch's
histories with the LoRA user tower and takes InfoNCE over either the whole catalog (frozen item
tower: the item matrix is computed once) or the batch's target items plus optional
popularity-sampled negatives (shared item tower). Items already in a row's history are not
negatives for that row, mirroring the evaluator, which never ranks them.

Launch: ``python scripts/train_encoder.py --config configs/ml100k/minilm-two-tower.yaml``
(``accelerate launch scripts/train_encoder.py ...`` for several processes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmrec.config import ConfigError, LoraConfig, RunConfig
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import Catalog, EvalCase, UserSequence
from llmrec.encoder.recommender import ItemEmbeddingCache, TwoTowerRecommender
from llmrec.encoder.run_dir import save_run
from llmrec.encoder.two_tower import (
    EncoderConfig,
    TextSpec,
    TwoTowerModel,
    history_document,
    info_nce,
    item_document,
)


@dataclass
class EncoderRunConfig(RunConfig):
    """A :class:`RunConfig` plus the ``encoder`` group (schema of ``configs/*/minilm-two-tower.yaml``)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)



def text_spec(cfg: RunConfig) -> TextSpec:
    """The encoder text settings taken from the ``prompt`` group."""
    return TextSpec(
        max_history_items=cfg.prompt.max_history_items,
        include_year=cfg.prompt.include_year,
        include_categories=cfg.prompt.include_categories,
        include_rating=cfg.prompt.include_rating,
    )


# Linear layers of one BERT block (what the ``bert`` LoRA preset adapts), for ``encoder.lora_layers``.
BERT_BLOCK_LINEARS = (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense",
)


def lora_for_layers(lora: LoraConfig, layers: Sequence[int]) -> LoraConfig:
    """``lora`` with its targets limited to the linear layers of BERT blocks ``layers``.

    Adapting only the top blocks means the backward pass stops there: on a CPU this roughly
    halves a step's time for the top two of six blocks.
    """
    if not layers:
        return lora
    targets = [f"layer.{layer}.{name}" for layer in layers for name in BERT_BLOCK_LINEARS]
    return dataclasses.replace(lora, target_modules=targets)


def training_pairs(
    sequences: Sequence[UserSequence], pairs_per_user: int = 0, min_history: int = 1
) -> list[tuple[int, int]]:
    """``(sequence index, target position)`` for every usable position of the train sequences.

    Args:
        sequences: train-split sequences (nothing from valid/test).
        pairs_per_user: keep only each user's last N positions (0 = all).
        min_history: a position needs at least this many earlier items.
    """
    pairs: list[tuple[int, int]] = []
    for s, sequence in enumerate(sequences):
        positions = list(range(min_history, len(sequence)))
        if pairs_per_user > 0:
            positions = positions[-pairs_per_user:]
        pairs.extend((s, t) for t in positions)
    return pairs


class PairCollator:
    """Turns ``(sequence index, position)`` pairs into tokenized user/item batches."""

    def __init__(
        self,
        sequences: Sequence[UserSequence],
        catalog: Catalog,
        tokenizer: Any,
        spec: TextSpec,
        cfg: EncoderConfig,
        popularity: torch.Tensor,
        seed: int,
    ):
        self.sequences = sequences
        self.catalog = catalog
        self.tokenizer = tokenizer
        self.spec = spec
        self.cfg = cfg
        self.popularity = popularity  # (N,) sampling weights of extra negatives
        self.generator = torch.Generator().manual_seed(seed)

    def _tokens(self, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def __call__(self, pairs: list[tuple[int, int]]) -> dict[str, Any]:
        histories = [self.sequences[s].prefix(t) for s, t in pairs]
        targets = torch.tensor([self.sequences[s].items[t] for s, t in pairs])  # (B,)
        batch: dict[str, Any] = {
            "users": self._tokens([history_document(h, self.catalog, self.spec) for h in histories], self.cfg.max_user_tokens),
        }
        if self.cfg.negatives == "catalog":
            columns = torch.arange(len(self.catalog))  # (N,)
            batch["targets"] = targets
        else:
            extra = torch.multinomial(self.popularity, self.cfg.sampled_negatives, generator=self.generator) if self.cfg.sampled_negatives else torch.zeros(0, dtype=torch.long)
            columns = torch.cat([targets, extra])  # (B + S,)
            batch["targets"] = torch.arange(len(pairs))
            batch["columns"] = columns
            texts = [item_document(self.catalog[int(i)], self.spec) for i in columns]
            batch["items"] = self._tokens(texts, self.cfg.max_item_tokens)
        batch["exclude"] = exclusion_mask(histories, targets, columns)
        return batch


def exclusion_mask(histories: Sequence[UserSequence], targets: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` True where column ``j`` is not a negative for row ``i``.

    A column is excluded when its item is in row ``i``'s history or is row ``i``'s target item
    (a duplicate of the positive elsewhere in the batch). :func:`info_nce` keeps the target column.
    """
    same = columns.unsqueeze(0) == targets.unsqueeze(1)  # (B, M)
    seen = torch.zeros_like(same)
    position = {int(item): j for j, item in enumerate(columns.tolist())} if len(columns) else {}
    full = bool(len(columns)) and bool((columns == torch.arange(len(columns))).all())
    for i, history in enumerate(histories):
        if full:
            seen[i, list(history.items)] = True
        else:
            hits = [position[item] for item in history.items if item in position]
            seen[i, hits] = True
    return same | seen


def item_popularity(sequences: Sequence[UserSequence], num_items: int) -> torch.Tensor:
    """``(N,)`` train counts smoothed to the 0.75 power (word2vec-style negative sampling)."""
    counts = torch.ones(num_items)
    for sequence in sequences:
        counts.index_add_(0, torch.tensor(sequence.items, dtype=torch.long), torch.ones(len(sequence)))
    return counts.pow(0.75)


def _seeded_subset(cases: list[EvalCase], max_users: int | None, seed: int) -> list[EvalCase]:
    if max_users is None or max_users >= len(cases):
        return cases
    return random.Random(seed).sample(cases, max_users)


def validate_ndcg(recommender: TwoTowerRecommender, cases: list[EvalCase], k: int = 10) -> dict[str, float]:
    """Validation metrics through the shared evaluator (full ranking, history excluded)."""
    from llmrec.evaluation.evaluate import evaluate

    result = evaluate(recommender, cases, len(recommender.catalog), ks=(k,), batch_size=128)
    return {f"valid_{name}": value for name, value in result.metrics.items()}


def _lr_lambda(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def train_two_tower(
    cfg: EncoderRunConfig,
    dataset: PreparedDataset,
    out_dir: str | Path,
    command: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Train the two-tower model on ``dataset``'s train split and write a run directory.

    Args:
        cfg: the resolved run config (``model``, ``lora``, ``prompt``, ``train``, ``encoder``).
        dataset: the prepared dataset.
        out_dir: run directory to write (atomically).
        command: the command line stored in ``command.txt`` (default: ``sys.argv``).
        overwrite: replace an existing run directory.

    Returns:
        The run directory.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from llmrec.modeling.build import build_model
    from llmrec.modeling.dtype import resolve_mixed_precision
    from llmrec.training.speed import configure_threads

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    set_seed(cfg.train.seed)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
    )
    if accelerator.device.type == "cpu":
        configure_threads(cfg.train.threads)  # train.threads, as the decoder loop
    encoder, tokenizer = build_model(
        cfg.model, lora_for_layers(cfg.lora, cfg.encoder.lora_layers), task="feature_extraction"
    )
    model = TwoTowerModel(encoder, cfg.encoder.item_tower, dataset.catalog.item_ids if cfg.encoder.item_ids else ())
    spec = text_spec(cfg)
    sequences = dataset.sequences(("train",))
    pairs = training_pairs(sequences, cfg.encoder.pairs_per_user, cfg.encoder.min_history)
    if not pairs:
        raise ValueError(f"{dataset.root}: no training pairs (every train sequence is shorter than min_history + 1)")
    collator = PairCollator(
        sequences, dataset.catalog, tokenizer, spec, cfg.encoder, item_popularity(sequences, len(dataset.catalog)), cfg.train.seed
    )
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        pairs,  # type: ignore[arg-type]
        batch_size=cfg.train.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(cfg.train.seed),
        num_workers=cfg.train.num_workers,
    )
    steps_per_epoch = math.ceil(len(loader) / cfg.train.grad_accum)
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else steps_per_epoch * cfg.train.epochs
    epochs = math.ceil(total / steps_per_epoch)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.train.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(cfg.train.warmup_ratio * total), total))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    base_name = cfg.model.name_or_path
    cache = ItemEmbeddingCache(cfg.encoder.cache_dir)

    def recommender() -> TwoTowerRecommender:
        return TwoTowerRecommender(
            accelerator.unwrap_model(model), tokenizer, dataset.catalog, spec, base_name,
            cfg.encoder.max_user_tokens, cfg.encoder.max_item_tokens, cache, cfg.encoder.item_batch_size,
        )

    valid_cases = _seeded_subset(dataset.eval_cases("valid"), cfg.train.eval_max_users, cfg.eval.seed)
    catalog_items = recommender().embed_items().to(accelerator.device) if cfg.encoder.negatives == "catalog" else None
    history: list[dict[str, float]] = []
    step, start = 0, time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for batch in loader:
            loss = _train_step(accelerator, model, optimizer, scheduler, batch, catalog_items, cfg)
            if accelerator.sync_gradients:
                step += 1
                if step % cfg.train.log_every_steps == 0 or step == total:
                    record = {"step": step, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                              "seconds": time.perf_counter() - start}
                    history.append(record)
                    accelerator.print(json.dumps(record))
                if step >= total or _out_of_time(start, cfg.encoder.max_train_seconds):
                    total = step
                    break
        if cfg.train.eval_every_epoch or step >= total:
            metrics = validate_ndcg(recommender(), valid_cases)
            history.append({"step": step, "epoch": epoch, **metrics, "seconds": time.perf_counter() - start})
            accelerator.print(json.dumps(history[-1]))
        if step >= total:
            break
    train_seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = recommender()
        key = final.cache_key()  # the last validation embedded the catalog with the final weights
        save_run(out_dir, cfg, dataset, accelerator.unwrap_model(model), tokenizer, history,
                 {"train_seconds": train_seconds, "train_pairs": len(pairs), "optimizer_steps": step},
                 command, overwrite, item_matrix=(key, cache.get(key)))
    accelerator.wait_for_everyone()
    return out_dir


def parameter_groups(model: TwoTowerModel, cfg: EncoderRunConfig) -> list[dict[str, Any]]:
    """AdamW groups: the adapter at ``train.learning_rate`` with weight decay; the item
    residuals (when learned) at ``encoder.item_id_learning_rate`` without it."""
    residuals = model.item_residuals
    adapter = [p for p in model.parameters() if p.requires_grad and p is not residuals]
    groups: list[dict[str, Any]] = [{"params": adapter, "weight_decay": cfg.train.weight_decay}]
    if residuals is not None:
        groups.append({"params": [residuals], "lr": cfg.encoder.item_id_learning_rate, "weight_decay": 0.0})
    return groups


def _out_of_time(start: float, limit: float) -> bool:
    return limit > 0 and time.perf_counter() - start >= limit


def _train_step(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batch: dict[str, Any],
    catalog_items: torch.Tensor | None,
    cfg: EncoderRunConfig,
) -> float:
    with accelerator.accumulate(model):
        users = model(batch["users"]).float()  # (B, H)
        towers = accelerator.unwrap_model(model)
        if catalog_items is not None:
            items = catalog_items  # (N, H), constant
            if towers.item_residuals is not None:
                items = items + towers.item_residuals.float()
        else:
            items = towers.embed_items(batch["items"]).float()  # (B + S, H)
            if towers.item_residuals is not None:
                items = items + towers.item_residuals[batch["columns"]].float()
        loss = info_nce(users, items, batch["targets"], cfg.encoder.temperature, batch["exclude"])
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return float(loss.detach())


def build_and_train(dataset: PreparedDataset, params: dict[str, Any], seed: int) -> TwoTowerRecommender:
    """Benchmark builder: train the two-tower model on ``dataset`` and return it as a scorer.

    Args:
        dataset: the prepared dataset (train split trained on, valid cases for the log).
        params: ``{"config": [YAML paths], "overrides": ["key=value", ...], "output_dir": str}``;
            every key optional (default: ``configs/ml100k/minilm-two-tower.yaml`` values).
        seed: replaces ``train.seed``.
    """
    import tempfile

    from llmrec.config import load_config

    unknown = sorted(set(params) - {"config", "overrides", "output_dir"})
    if unknown:
        raise ConfigError(f"two-tower params: unknown key(s) {unknown}; known: config, overrides, output_dir")
    overrides = [*params.get("overrides", []), f"train.seed={seed}"]
    cfg = load_config(params.get("config", []), overrides, schema=EncoderRunConfig)
    out = Path(params.get("output_dir") or tempfile.mkdtemp(prefix="two-tower-")) / f"seed{seed}"
    run = train_two_tower(cfg, dataset, out, command=f"benchmark two_tower seed={seed}", overwrite=True)
    return TwoTowerRecommender.load(run, catalog=dataset.catalog)
