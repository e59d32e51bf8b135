"""A two-tower text recommender on a sentence encoder (all-MiniLM-L6-v2 by default).

The *user tower* encodes the user's history as text (most recent item first, so the encoder's
truncation drops the oldest items); the *item tower* encodes each catalog item's text (title,
year, categories). Both towers are the same encoder with mean pooling and L2 normalisation:
the user tower runs with the LoRA adapter, the item tower either shares it (``shared``) or runs
the base weights with the adapter switched off (``frozen``). A user's scores over the whole
catalog are one matrix product, ``users (B, H) @ items (N, H).T``, which makes the model a
:class:`~llmrec.evaluation.protocol.CatalogScorer`.

The ``CatalogScorer`` over a trained run (with its item-embedding cache) is
:class:`llmrec.encoder.recommender.TwoTowerRecommender`.

Optionally (``encoder.item_ids``) the item tower adds a learned per-item vector to the frozen
text embedding, zero at the start: a collaborative residual that the whole-catalog softmax
trains for every item at every step. It is stored by item *id*, so a catalog with new items
scores them by their text embedding alone (cold start), and the cached text matrix stays valid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

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
