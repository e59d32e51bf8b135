"""Shard evaluation queries over processes and gather the per-query results back.

Each process takes one contiguous shard of the queries. Shards may differ in length by one, so
before gathering every process pads its arrays to the longest shard and marks the padding with
query index ``-1``; after gathering the padding is dropped and the rows are put back in query
order. The result is the same on every process and identical to a one-process run (no query is
lost or counted twice, unlike a padded dataloader gathered without ``gather_for_metrics``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def shard_bounds(num_items: int, num_processes: int, process_index: int) -> tuple[int, int]:
    """``[start, end)`` of the contiguous shard of ``num_items`` owned by ``process_index``.

    The first ``num_items % num_processes`` shards hold one extra element.
    """
    if num_processes <= 0 or not 0 <= process_index < num_processes:
        raise ValueError(f"bad process index {process_index} of {num_processes}")
    base, extra = divmod(num_items, num_processes)
    start = process_index * base + min(process_index, extra)
    end = start + base + (1 if process_index < extra else 0)
    return start, end


def gather_rows(accelerator: Any, local: dict[str, np.ndarray], start: int, total: int) -> dict[str, np.ndarray]:
    """Gather per-query arrays from every process and restore the global query order.

    Args:
        accelerator: An ``accelerate.Accelerator`` (anything with ``gather`` and ``num_processes``).
        local: Arrays whose first dimension is this process's shard length (same keys everywhere).
        start: Global index of this shard's first query.
        total: Number of queries over all processes.

    Returns:
        The arrays of all ``total`` queries, in global order.
    """
    rows = len(next(iter(local.values()))) if local else 0
    longest = -(-total // accelerator.num_processes)  # ceil: the first shard is the longest
    index = np.full(longest, -1, dtype=np.int64)
    index[:rows] = np.arange(start, start + rows)
    gathered_index = _gather(accelerator, index)
    keep = gathered_index >= 0
    order = np.argsort(gathered_index[keep], kind="stable")
    if keep.sum() != total or not np.array_equal(gathered_index[keep][order], np.arange(total)):
        raise RuntimeError("distributed gather lost or duplicated queries; shards do not tile the query list")
    out = {}
    for key, array in local.items():
        padded = np.zeros((longest, *array.shape[1:]), dtype=array.dtype)
        padded[:rows] = array
        out[key] = _gather(accelerator, padded)[keep][order]
    return out


def _gather(accelerator: Any, array: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(accelerator.device)
    gathered = accelerator.gather(tensor)  # concatenates along dim 0 in process order
    return np.asarray(gathered.cpu().numpy())
