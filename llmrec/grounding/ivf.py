"""An inverted-file (IVF) index for approximate cosine search over large catalogs, in plain torch.

k-means (on a seeded sample) splits the normalized vectors into ``nlist`` cells; vectors are stored
grouped by cell (CSR). A query scans only the ``nprobe`` cells whose centroids are nearest, so the
bytes read per query drop by about ``nlist / nprobe`` against an exact scan (which is bound by
memory bandwidth at 10^6 x 384 floats). Approximate: report its recall against the exact scan.
"""

from __future__ import annotations

import torch


def kmeans(vectors: torch.Tensor, clusters: int, iterations: int = 8, seed: int = 0) -> torch.Tensor:
    """Spherical k-means centroids (clusters, d) of normalized ``vectors`` (n, d)."""
    generator = torch.Generator().manual_seed(seed)
    centroids = vectors[torch.randperm(vectors.shape[0], generator=generator)[:clusters]].clone()
    for _ in range(iterations):
        assign = (vectors @ centroids.T).argmax(1)  # (n,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=clusters)
        filled = counts > 0  # an empty cell keeps its old centroid
        centroids[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
    return centroids


class IVFIndex:
    """Cells of normalized vectors; ``search`` scans the ``nprobe`` nearest cells per query."""

    def __init__(self, vectors: torch.Tensor, nlist: int = 1024, nprobe: int = 16, sample: int = 65536,
                 seed: int = 0, chunk: int = 65536):
        n = vectors.shape[0]
        nlist = max(1, min(nlist, n // 256))  # at least ~256 vectors per cell on average
        generator = torch.Generator().manual_seed(seed)
        train = vectors[torch.randperm(n, generator=generator)[:max(sample, nlist)]]
        self.centroids = kmeans(train, nlist, seed=seed)  # (nlist, d)
        assign = torch.cat([(part @ self.centroids.T).argmax(1) for part in vectors.split(chunk)])
        order = torch.argsort(assign, stable=True)
        self.ids = order  # (n,) catalog index of each stored row
        self.vectors = vectors[order].contiguous()  # (n, d) grouped by cell
        counts = torch.bincount(assign, minlength=nlist)
        self.ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.nprobe = min(nprobe, nlist)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (scores, catalog indices), each (Q, k); -inf / -1 where fewer were scanned."""
        cells = (queries @ self.centroids.T).topk(self.nprobe, dim=1).indices  # (Q, nprobe)
        scores = torch.full((queries.shape[0], k), float("-inf"))
        indices = torch.full((queries.shape[0], k), -1, dtype=torch.long)
        for row in range(queries.shape[0]):
            found_s, found_i = [], []
            for cell in cells[row].tolist():  # cells are contiguous row ranges: scan views, copy nothing
                lo, hi = int(self.ptr[cell]), int(self.ptr[cell + 1])
                if hi == lo:
                    continue
                top = (self.vectors[lo:hi] @ queries[row]).topk(min(k, hi - lo))
                found_s.append(top.values)
                found_i.append(top.indices + lo)
            if not found_s:
                continue
            merged = torch.cat(found_s).topk(min(k, sum(t.numel() for t in found_s)))
            scores[row, : merged.values.numel()] = merged.values
            indices[row, : merged.values.numel()] = self.ids[torch.cat(found_i)[merged.indices]]
        return scores, indices
