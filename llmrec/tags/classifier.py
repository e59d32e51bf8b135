"""Interest tags with an encoder and a multi-label classification head (LoRA, BCE).

The input is the same history text as the two-tower user tower; the labels are the categories
of the item at the next position (multi-hot over the tag vocabulary). The head is a peft
``SEQ_CLS`` adapter, so the classifier weights travel inside ``RUN/adapter`` and plain peft
reloads the model::

    base = AutoModelForSequenceClassification.from_pretrained(
        BASE, num_labels=len(tags), problem_type="multi_label_classification")
    model = PeftModel.from_pretrained(base, "RUN/adapter")

Launch: ``python scripts/train_tags.py --config configs/ml100k/tags.yaml``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.config import RunConfig, dump_yaml
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import Catalog, UserSequence
from llmrec.encoder.run_dir import plot_curve
from llmrec.encoder.train import lora_for_layers, text_spec, training_pairs
from llmrec.encoder.two_tower import TextSpec, history_document
from llmrec.io import atomic_dir, write_json
from llmrec.tags.baselines import FloatArray, tag_matrix

PROBLEM_TYPE = "multi_label_classification"


@dataclass
class TagsConfig:
    """Settings of the interest-tag task (YAML group ``tags``)."""

    num_tags: int = 3  # tags shown / asked for (the K of F1@K in reports)
    max_user_tokens: int = 128  # classifier input length in tokens
    pairs_per_user: int = 20  # train on the last N train positions of each user (0 = every position)
    lora_layers: list[int] = field(default_factory=list)  # BERT layers that get LoRA (empty = every layer)
    max_train_seconds: float = 0.0  # stop training after this wall time (0 = no limit)
    decoder_history_items: int = 10  # decoder head: most recent items in the interest_tags prompt
    length_normalize: bool = False  # decoder head: rank tags by mean instead of summed token log-prob

    def validate(self) -> None:
        if self.num_tags < 1:
            raise ValueError(f"tags.num_tags must be >= 1, got {self.num_tags}")


@dataclass
class TagsRunConfig(RunConfig):
    """A :class:`RunConfig` plus the ``tags`` group (schema of ``configs/ml100k/tags.yaml``)."""

    tags: TagsConfig = field(default_factory=TagsConfig)



def multi_hot(catalog: Catalog, tags: Sequence[str], items: Sequence[int]) -> torch.Tensor:
    """``(B, T)`` float labels: the tags of each item in ``items``."""
    return torch.from_numpy(tag_matrix(catalog, tags)[list(items)]).float()


class TagClassifier:
    """A loaded multi-label tag classifier (a :class:`~llmrec.tags.baselines.TagScorer`).

    Args:
        model: a sequence-classification model (PEFT-wrapped or not) with ``len(tags)`` labels.
        tokenizer: its tokenizer.
        catalog: item table used to write history text.
        tags: the label vocabulary, in head-column order.
        spec: history text settings (must match training).
        max_tokens: input length limit.
        batch_size: histories per forward pass.
    """

    def __init__(
        self, model: Any, tokenizer: Any, catalog: Catalog, tags: Sequence[str], spec: TextSpec,
        max_tokens: int = 128, batch_size: int = 64,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.tags = list(tags)
        self.spec = spec
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, T)`` head logits for raw input texts."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        out = self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return out.logits.float()

    @torch.no_grad()
    def score_tags(self, histories: Sequence[UserSequence]) -> FloatArray:
        """``(B, T)`` tag probabilities (sigmoid of the logits)."""
        was_training = self.model.training
        self.model.eval()
        texts = [history_document(h, self.catalog, self.spec) for h in histories]
        chunks = [torch.sigmoid(self.logits(texts[s : s + self.batch_size])).cpu() for s in range(0, len(texts), self.batch_size)]
        self.model.train(was_training)
        return torch.cat(chunks).double().numpy() if chunks else np.zeros((0, len(self.tags)))

    @classmethod
    def load(cls, run_dir: str | Path, catalog: Catalog | None = None, device: str = "cpu") -> TagClassifier:
        """Load a tag-classifier run directory (``run.json`` kind ``encoder``, task ``tags``)."""
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from llmrec.modeling.build import resolve_model_source

        run_dir = Path(run_dir)
        info = read_tags_run(run_dir)
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_source(info["base_model"]).path, num_labels=len(info["tags"]),
            problem_type=PROBLEM_TYPE, use_safetensors=True,
        )
        model = PeftModel.from_pretrained(base, run_dir / "adapter").to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        if catalog is None:
            catalog = PreparedDataset.load(info["dataset_dir"]).catalog
        settings = info["classifier"]
        return cls(model, tokenizer, catalog, info["tags"], TextSpec(**settings["text"]), settings["max_user_tokens"])


def read_tags_run(run_dir: Path) -> dict[str, Any]:
    """``RUN/run.json`` of a tag-classifier run; clear errors when missing or of another kind."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no run.json)")
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if info.get("kind") != "encoder" or info.get("task") != "tags":
        raise ValueError(f"{path}: kind/task is {info.get('kind')!r}/{info.get('task')!r}, expected 'encoder'/'tags'")
    return info


def build_tag_classifier(cfg: TagsRunConfig, num_labels: int, prior: FloatArray | None = None) -> tuple[Any, Any]:
    """Encoder + multi-label head with LoRA (the head is trained and saved with the adapter).

    Args:
        cfg: run config (``model``, ``lora``, ``tags.lora_layers``).
        num_labels: tag vocabulary size.
        prior: ``(T,)`` training frequency of each tag; the head's bias starts at its log-odds, so
            the untrained model already ranks like the most-frequent-tags baseline and training
            spends its (few, on a CPU) steps on what the history adds.
    """
    import dataclasses

    from llmrec.modeling.build import build_model
    from llmrec.modeling.lora import apply_lora

    lora = lora_for_layers(cfg.lora, cfg.tags.lora_layers)
    model, tokenizer = build_model(cfg.model, dataclasses.replace(lora, enabled=False), task="seq_cls", num_labels=num_labels)
    model.config.problem_type = PROBLEM_TYPE
    if prior is not None:
        p = torch.as_tensor(prior, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            model.classifier.bias.copy_(torch.log(p / (1 - p)))
    return (apply_lora(model, lora, "seq_cls") if lora.enabled else model), tokenizer


def train_tag_classifier(
    cfg: TagsRunConfig, dataset: PreparedDataset, out_dir: str | Path, command: str | None = None, overwrite: bool = False
) -> Path:
    """Train the multi-label head on train-split positions and write a run directory.

    Args:
        cfg: resolved config (``model``, ``lora``, ``prompt``, ``train``, ``tags``).
        dataset: the prepared dataset.
        out_dir: run directory (written atomically).
        command: stored in ``command.txt`` (default ``sys.argv``).
        overwrite: replace an existing directory.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from llmrec.modeling.dtype import resolve_mixed_precision
    from llmrec.training.speed import configure_threads

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    set_seed(cfg.train.seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision))
    if accelerator.device.type == "cpu":
        configure_threads(cfg.train.threads)  # train.threads, as the decoder loop
    tags = dataset.catalog.categories()
    spec = text_spec(cfg)
    sequences = dataset.sequences(("train",))
    pairs = training_pairs(sequences, cfg.tags.pairs_per_user)
    labels = tag_matrix(dataset.catalog, tags)
    targets = np.asarray([sequences[s].items[t] for s, t in pairs])
    model, tokenizer = build_tag_classifier(cfg, len(tags), prior=labels[targets].mean(axis=0))

    def collate(batch: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        texts = [history_document(sequences[s].prefix(t), dataset.catalog, spec) for s, t in batch]
        out = tokenizer(texts, padding=True, truncation=True, max_length=cfg.tags.max_user_tokens, return_tensors="pt")
        target = torch.from_numpy(labels[[sequences[s].items[t] for s, t in batch]]).float()  # (B, T)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "labels": target}

    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        pairs, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=collate,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(len(loader) / cfg.train.grad_accum) * cfg.train.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate,
                                  weight_decay=cfg.train.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    history = _fit(accelerator, model, optimizer, loader, total, cfg)
    if accelerator.is_main_process:
        _save_tags_run(out_dir, cfg, dataset, accelerator.unwrap_model(model), tokenizer, tags, history, command, overwrite)
    accelerator.wait_for_everyone()
    return out_dir


def _fit(accelerator: Any, model: Any, optimizer: Any, loader: Any, total: int, cfg: TagsRunConfig) -> list[dict[str, float]]:
    """The BCE training loop; returns the logged loss history."""
    history: list[dict[str, float]] = []
    step, start = 0, time.perf_counter()
    model.train()
    while step < total:
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss  # BCE-with-logits (problem_type=multi_label_classification)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                limit = cfg.tags.max_train_seconds
                done = step >= total or (limit > 0 and time.perf_counter() - start >= limit)
                if step % cfg.train.log_every_steps == 0 or done:
                    history.append({"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - start})
                    accelerator.print(json.dumps(history[-1]))
                if done:
                    return history
    return history


def _save_tags_run(
    out_dir: Path, cfg: TagsRunConfig, dataset: PreparedDataset, model: Any, tokenizer: Any, tags: list[str],
    history: list[dict[str, float]], command: str | None, overwrite: bool,
) -> None:
    from llmrec.encoder.run_dir import encoder_run_header
    from llmrec.training.run_dir import package_versions

    info = {
        **encoder_run_header(cfg, dataset, "tags"),
        "tags": tags,
        "classifier": {"max_user_tokens": cfg.tags.max_user_tokens, "text": vars(text_spec(cfg)), "problem_type": PROBLEM_TYPE},
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
        (tmp / "command.txt").write_text((command or " ".join(sys.argv)) + "\n", encoding="utf-8")
        write_json(tmp / "versions.json", package_versions())
        write_json(tmp / "run.json", info)
        model.save_pretrained(tmp / "adapter")
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_json(tmp / "metrics.json", {"train_seconds": history[-1]["seconds"] if history else 0.0, "history": history})
        plot_curve(history, tmp / "train_curve.png")
