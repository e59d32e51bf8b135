"""The two-tower ``CatalogScorer``: user embeddings against a cached item-embedding matrix.

Item embeddings are cached under a key made of the catalog fingerprint, the item tower's
weights (the adapter hash when shared) and the text settings; a changed catalog or adapter
gets a new key, so stale embeddings are never served. :meth:`TwoTowerRecommender.load` reads a
run directory written by :func:`llmrec.encoder.train.train_two_tower`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmrec.data.dataset import catalog_fingerprint
from llmrec.data.schema import Catalog, UserSequence
from llmrec.encoder.two_tower import (
    ITEM_RESIDUALS_FILE,
    TextSpec,
    TwoTowerModel,
    history_document,
    item_document,
    load_item_residuals,
)
from llmrec.io import atomic_file, stable_hash


class ItemEmbeddingCache:
    """Item-embedding matrices keyed by catalog fingerprint + tower fingerprint + text settings.

    Kept in memory; with ``directory`` also written there (atomically) and reused across runs.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.misses = 0  # how many times the matrix had to be computed (tests read this)

    @staticmethod
    def key(catalog_fp: str, tower_fp: str, text_key: str) -> str:
        return stable_hash([catalog_fp, tower_fp, text_key])

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            path = self.directory / f"{key}.pt"
            if path.is_file():
                matrix = torch.load(path, map_location="cpu", weights_only=True)
                self._memory[key] = matrix
                return matrix
        return None

    def put(self, key: str, matrix: torch.Tensor) -> None:
        self._memory[key] = matrix
        if self.directory is not None:
            with atomic_file(self.directory / f"{key}.pt", mode="wb") as handle:
                torch.save(matrix, handle)


class TwoTowerRecommender:
    """Scores the whole catalog for a batch of histories (a ``CatalogScorer``).

    Args:
        model: the two towers.
        tokenizer: the encoder's tokenizer.
        catalog: the item table whose order defines the score columns.
        spec: text settings (must match training).
        base_name: base model name or path (part of the cache key).
        max_user_tokens: user-text token limit.
        max_item_tokens: item-text token limit.
        cache: item-embedding cache (a fresh in-memory one when None).
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        tokenizer: Any,
        catalog: Catalog,
        spec: TextSpec,
        base_name: str,
        max_user_tokens: int = 256,
        max_item_tokens: int = 64,
        cache: ItemEmbeddingCache | None = None,
        batch_size: int = 64,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.spec = spec
        self.base_name = base_name
        self.max_user_tokens = max_user_tokens
        self.max_item_tokens = max_item_tokens
        self.cache = cache if cache is not None else ItemEmbeddingCache()
        self.batch_size = batch_size
        self._scored: tuple[Catalog, torch.Tensor] | None = None  # item_matrix() of a catalog, for a model in eval mode

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def cache_key(self) -> str:
        return ItemEmbeddingCache.key(
            catalog_fingerprint(self.catalog), self.model.tower_fingerprint(self.base_name), self.spec.key()
        )

    @torch.no_grad()
    def embed_items(self) -> torch.Tensor:
        """``(N, H)`` embeddings of every catalog item, in item-index order (cached)."""
        key = self.cache_key()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        self.cache.misses += 1
        was_training = self.model.training
        self.model.eval()
        texts = [item_document(item, self.spec) for item in self.catalog]
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenize(texts[start : start + self.batch_size], self.max_item_tokens)
            chunks.append(self.model.embed_items(batch).float().cpu())
        self.model.train(was_training)
        matrix = torch.cat(chunks)  # (N, H)
        self.cache.put(key, matrix)
        return matrix

    @torch.no_grad()
    def embed_users(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        """``(B, H)`` embeddings of the histories."""
        was_training = self.model.training
        self.model.eval()
        texts = [history_document(h, self.catalog, self.spec) for h in histories]
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenize(texts[start : start + self.batch_size], self.max_user_tokens)
            chunks.append(self.model.embed_users(batch).float().cpu())
        self.model.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    @torch.no_grad()
    def item_matrix(self) -> torch.Tensor:
        """``(N, H)`` what users are scored against: text embeddings plus the learned residuals.

        Kept for the current catalog (immutable) while the model is in eval mode, i.e. a loaded
        run whose weights do not change, so scoring a request does not hash the catalog and
        re-gather the residuals each time; during training it is recomputed on every call.
        """
        if self._scored is not None and self._scored[0] is self.catalog:
            return self._scored[1]
        items = self.embed_items()
        residuals = self.model.residuals_for(self.catalog)
        matrix = items if residuals is None else items + residuals.detach().float().cpu()
        if not self.model.training:
            self._scored = (self.catalog, matrix)
        return matrix

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        """Dot product of each history with every item: ``(len(histories), num_items)``
        (a cosine similarity when the model has no item residuals)."""
        items = self.item_matrix()  # (N, H)
        if not histories:
            return torch.zeros(0, items.shape[0])
        return self.embed_users(histories) @ items.T  # (B, N)

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike[str],
        catalog: Catalog | None = None,
        cache: ItemEmbeddingCache | None = None,
        device: str = "cpu",
    ) -> TwoTowerRecommender:
        """Load an encoder run directory (``run.json`` kind ``encoder``).

        Args:
            run_dir: directory written by :func:`llmrec.encoder.train.train_two_tower`.
            catalog: item table to score; None loads the run's prepared dataset catalog. A
                catalog that differs from the training one is allowed (new items get text
                embeddings) and simply gets its own cache key.
            cache: item-embedding cache; None uses ``RUN/item_embeddings/``.
            device: torch device.
        """
        from peft import PeftModel
        from transformers import AutoModel, AutoTokenizer

        run_dir = Path(run_dir)
        info = read_run_info(run_dir)
        settings = info["two_tower"]
        from llmrec.modeling.build import resolve_model_source

        base = AutoModel.from_pretrained(resolve_model_source(info["base_model"]).path, use_safetensors=True)
        encoder = PeftModel.from_pretrained(base, run_dir / "adapter")
        model = TwoTowerModel(encoder, settings["item_tower"])
        if settings.get("item_ids"):
            load_item_residuals(model, run_dir / ITEM_RESIDUALS_FILE)
        model = model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        if catalog is None:
            from llmrec.data.dataset import PreparedDataset

            catalog = PreparedDataset.load(info["dataset_dir"]).catalog
        return cls(
            model,
            tokenizer,
            catalog,
            TextSpec(**settings["text"]),
            base_name=info["base_model"],
            max_user_tokens=settings["max_user_tokens"],
            max_item_tokens=settings["max_item_tokens"],
            cache=cache if cache is not None else ItemEmbeddingCache(run_dir / "item_embeddings"),
        )


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``RUN/run.json`` of an encoder run; clear errors when it is missing or of another kind."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no run.json)")
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if info.get("kind") != "encoder":
        raise ValueError(f"{path}: kind is {info.get('kind')!r}, expected 'encoder'")
    if info.get("task", "two_tower") != "two_tower" or "two_tower" not in info:
        raise ValueError(f"{path}: task is {info.get('task')!r}; a two-tower run has task 'two_tower' and a 'two_tower' section")
    return info

