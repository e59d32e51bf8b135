"""A two-tower text recommender on a sentence encoder (all-MiniLM-L6-v2 by default).

The *user tower* encodes the user's history as text (most recent item first, so the encoder's
truncation drops the oldest items); the *item tower* encodes each catalog item's text (title,
year, categories). Both towers are the same encoder with mean pooling and L2 normalisation:
the user tower runs with the LoRA adapter, the item tower either shares it (``shared``) or runs
the base weights with the adapter switched off (``frozen``). A user's scores over the whole
catalog are one matrix product, ``users (B, H) @ items (N, H).T``, which makes the model a
:class:`~llmrec.evaluation.protocol.CatalogScorer`.

Item embeddings are cached under a key made of the catalog fingerprint, the item tower's
weights (the adapter hash when shared) and the text settings; a changed catalog or adapter
gets a new key, so stale embeddings are never served.

Optionally (``encoder.item_ids``) the item tower adds a learned per-item vector to the frozen
text embedding, zero at the start: a collaborative residual that the whole-catalog softmax
trains for every item at every step. It is stored by item *id*, so a catalog with new items
scores them by their text embedding alone (cold start), and the cached text matrix stays valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmrec.data.dataset import catalog_fingerprint
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.io import atomic_file, stable_hash

ITEM_TOWERS = ("frozen", "shared")
ITEM_RESIDUALS_FILE = "item_residuals.pt"  # learned per-item vectors in a run directory
NEGATIVES = ("catalog", "in_batch")


@dataclass
class EncoderConfig:
    """Settings of the two-tower model and its contrastive training (YAML group ``encoder``)."""

    item_tower: str = "frozen"  # frozen (base weights, adapter off) | shared (same LoRA as the user tower)
    negatives: str = "catalog"  # catalog (softmax over every item; frozen tower only) | in_batch
    sampled_negatives: int = 0  # in_batch: extra popularity-sampled negative items per batch
    temperature: float = 0.05  # InfoNCE softmax temperature on cosine similarities
    max_user_tokens: int = 256  # user-tower input length in tokens (MiniLM was trained at 256)
    max_item_tokens: int = 64  # item-tower input length in tokens
    pairs_per_user: int = 0  # train on the last N train positions of each user (0 = every position)
    min_history: int = 1  # smallest history prefix that makes a training pair
    item_batch_size: int = 256  # items per forward pass when embedding the catalog
    cache_dir: str | None = None  # on-disk item-embedding cache (None = in memory only)
    lora_layers: list[int] = field(default_factory=list)  # BERT layers that get LoRA (empty = lora.target_modules everywhere)
    max_train_seconds: float = 0.0  # stop training after this wall time (0 = no limit)
    item_ids: bool = False  # add a learned per-item residual (zero-initialised) to the text embedding
    item_id_learning_rate: float = 1.0e-3  # AdamW learning rate of the item residuals (no weight decay)

    def validate(self) -> None:
        if self.item_tower not in ITEM_TOWERS:
            raise ValueError(f"encoder.item_tower must be one of {ITEM_TOWERS}, got {self.item_tower!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"encoder.negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.negatives == "catalog" and self.item_tower != "frozen":
            raise ValueError("encoder.negatives=catalog needs encoder.item_tower=frozen (a shared tower changes every step)")
        if self.temperature <= 0:
            raise ValueError(f"encoder.temperature must be > 0, got {self.temperature}")
        if self.min_history < 1:
            raise ValueError(f"encoder.min_history must be >= 1, got {self.min_history}")
        if self.item_id_learning_rate <= 0:
            raise ValueError(f"encoder.item_id_learning_rate must be > 0, got {self.item_id_learning_rate}")


@dataclass(frozen=True)
class TextSpec:
    """How items and histories are written as encoder input."""

    max_history_items: int = 30  # most recent items in the user text
    include_year: bool = True  # "Heat (1995)"
    include_categories: bool = True  # "Heat (1995) [Action, Crime, Thriller]"
    include_rating: bool = False  # "... 4/5" after each history item

    def key(self) -> str:
        return stable_hash(
            [self.max_history_items, self.include_year, self.include_categories, self.include_rating]
        )


def item_document(item: Item, spec: TextSpec) -> str:
    """Item-tower text: title, year and (optionally) categories."""
    text = item.display_title() if spec.include_year else item.title
    if spec.include_categories and item.categories:
        text += " [" + ", ".join(item.categories) + "]"
    return text


def history_document(sequence: UserSequence, catalog: Catalog, spec: TextSpec) -> str:
    """User-tower text: the most recent ``max_history_items`` items, newest first.

    Newest first because a BERT tokenizer truncates from the end: when the text is over the
    token limit, the oldest items are the ones cut.
    """
    parts = []
    recent = list(zip(sequence.items, sequence.ratings, strict=True))[-spec.max_history_items :]
    for index, rating in reversed(recent):
        text = item_document(catalog[index], spec)
        if spec.include_rating and rating is not None:
            text += f" {rating:g}/5"
        parts.append(text)
    return " ; ".join(parts)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the attention mask, L2-normalised.

    Args:
        hidden: ``(B, T, H)`` last hidden states.
        mask: ``(B, T)`` attention mask (1 = real token).

    Returns:
        ``(B, H)`` unit vectors.
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * weights).sum(dim=1)  # (B, H)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return nn.functional.normalize(summed / counts, dim=-1)


def info_nce(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE: each user's target item against every other item column.

    Args:
        users: ``(B, H)`` user embeddings.
        items: ``(M, H)`` candidate item embeddings (the batch's targets, or the whole catalog).
        targets: ``(B,)`` column of each user's positive item in ``items``.
        temperature: softmax temperature.
        exclude: optional ``(B, M)`` bool mask of columns that are not negatives for that row
            (the same item as the target elsewhere in the batch, items already in the history);
            the target column itself is never excluded.

    Returns:
        Scalar mean cross-entropy.
    """
    logits = users @ items.T / temperature  # (B, M)
    if exclude is not None:
        keep_target = torch.zeros_like(exclude)
        keep_target[torch.arange(len(targets)), targets] = True
        logits = logits.masked_fill(exclude & ~keep_target, float("-inf"))
    return nn.functional.cross_entropy(logits, targets)


class TwoTowerModel(nn.Module):
    """Both towers over one (PEFT-wrapped) encoder.

    Args:
        encoder: a ``PeftModel`` around a BERT-style ``AutoModel`` (or a plain model when no
            adapter is used).
        item_tower: ``frozen`` runs items through the base weights (adapter disabled, no
            gradient); ``shared`` runs them through the adapter like the users.
        item_ids: ids of the items that get a learned residual (row ``j`` of
            ``item_residuals`` belongs to ``item_ids[j]``); empty = text embeddings only.
    """

    def __init__(self, encoder: nn.Module, item_tower: str = "frozen", item_ids: Sequence[str] = ()):
        super().__init__()
        if item_tower not in ITEM_TOWERS:
            raise ValueError(f"item_tower must be one of {ITEM_TOWERS}, got {item_tower!r}")
        self.encoder = encoder
        self.item_tower = item_tower
        self.item_ids: list[str] = list(item_ids)
        self.item_residuals: nn.Parameter | None = None
        if self.item_ids:
            self.item_residuals = nn.Parameter(torch.zeros(len(self.item_ids), _hidden_size(encoder)))  # (N_ids, H)

    def residuals_for(self, catalog: Catalog) -> torch.Tensor | None:
        """``(len(catalog), H)`` residual of each catalog item, zero for ids the model never saw.

        None when the model has no residuals. For the training catalog (same ids, same order)
        this is the parameter itself, so training steps can use it; any other catalog gets a
        matrix gathered by item id.
        """
        if self.item_residuals is None:
            return None
        if catalog.item_ids == self.item_ids:
            return self.item_residuals
        known = {item_id: row for row, item_id in enumerate(self.item_ids)}
        rows = torch.tensor([known.get(item_id, -1) for item_id in catalog.item_ids])  # (N,)
        out = torch.zeros(len(catalog), self.item_residuals.shape[1], dtype=self.item_residuals.dtype,
                          device=self.item_residuals.device)
        hit = rows >= 0
        out[hit] = self.item_residuals[rows[hit]]
        return out

    def _embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])  # (B, H)

    def embed_users(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, H)`` user embeddings (adapter on)."""
        return self._embed(batch)

    def embed_items(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, H)`` item embeddings (adapter off and no gradient when the tower is frozen)."""
        if self.item_tower == "shared":
            return self._embed(batch)
        disable = getattr(self.encoder, "disable_adapter", None)
        with torch.no_grad():
            if disable is None:
                return self._embed(batch)
            with disable():
                return self._embed(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed_users(batch)

    def tower_fingerprint(self, base_name: str) -> str:
        """Hash of what the item tower's *text* path computes with: the base model, plus the
        adapter when shared (the residuals are added after the cache, so they are not in it)."""
        digest = hashlib.sha256(f"{base_name}|{self.item_tower}".encode())
        if self.item_tower == "shared":
            for name, tensor in sorted(self.encoder.state_dict().items()):
                if "lora_" in name:
                    digest.update(name.encode())
                    digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]


def _hidden_size(encoder: nn.Module) -> int:
    """Hidden size of a (PEFT-wrapped) encoder, read from its config."""
    size = getattr(getattr(encoder, "config", None), "hidden_size", None)
    if size is None:
        raise ValueError("cannot read the encoder's config.hidden_size for the item residuals")
    return int(size)


def save_item_residuals(model: TwoTowerModel, path: Path) -> None:
    """Write the learned item residuals with their item ids (a torch file; nothing when absent)."""
    if model.item_residuals is None:
        return
    with atomic_file(path, mode="wb") as handle:
        torch.save({"item_ids": model.item_ids, "residuals": model.item_residuals.detach().float().cpu()}, handle)


def load_item_residuals(model: TwoTowerModel, path: Path) -> None:
    """Attach residuals written by :func:`save_item_residuals` to ``model``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    ids, matrix = list(state["item_ids"]), state["residuals"]
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"{path}: {len(ids)} item ids for {matrix.shape[0]} residual rows")
    model.item_ids = ids
    model.item_residuals = nn.Parameter(matrix, requires_grad=False)


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

