"""Attention for packed rows without a (T, T) mask: one causal kernel call per packed example.

transformers handles a packed row (``position_ids`` restarting at 0 per example) by building a
block-diagonal (B, 1, T, T) mask and running attention over the whole row with it. The kernel
then computes every (query, key) pair of the row, also across examples and above the diagonal,
and on CPU the masked path is the slowest one. Here attention runs per example with
``is_causal=True``: exactly the causal work of each example, no mask tensor, and the fused
(flash) kernel where the backend has one.

Use :func:`packed_attention` around the forward of a packed batch; the model's own attention
setting is restored afterwards, so generation and padded batches are untouched::

    with packed_attention(model):
        out = model(input_ids=ids, position_ids=pos, use_cache=False)  # (B, T) packed rows

Inside the context a batch that is not packed (one example per row, or a KV cache) goes to
transformers' own SDPA attention with the mask transformers built for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "llmrec_sdpa_varlen"  # name registered in transformers' attention registries
PACKED_ATTENTION_MODES = ("varlen", "mask")  # values of train.packed_attention


def packed_mask_mode(packed_attention: str) -> str:
    """``packed_collate``'s ``mask`` for ``train.packed_attention``: varlen needs positions only."""
    if packed_attention not in PACKED_ATTENTION_MODES:
        raise ValueError(f"train.packed_attention must be one of {PACKED_ATTENTION_MODES}, got {packed_attention!r}")
    return "position_ids" if packed_attention == "varlen" else "4d"


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """``[start, end)`` of every packed example of every row: a new one starts where positions do not step by 1.

    Args:
        position_ids: (B, T) positions restarting at each example (as ``packed_collate`` makes them).
    """
    steps = torch.ones_like(position_ids, dtype=torch.bool)  # (B, T) True where an example starts
    steps[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    length = position_ids.shape[1]
    bounds = []
    for starts in (row.nonzero().flatten().tolist() for row in steps):
        bounds.append(list(zip(starts, [*starts[1:], length], strict=True)))
    return bounds


def _expand_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * groups, T, D) for grouped-query attention."""
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: per-example causal SDPA over packed rows.

    Args:
        query: (B, H, T, D); key, value: (B, H_kv, T, D).
        kwargs: must hold ``position_ids`` (B, T) for the packed path.

    Returns:
        ``(output (B, T, H, D), None)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if position_ids is None or query.shape[2] != key.shape[2] or position_ids.shape[-1] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,  # type: ignore[no-any-return]
                                      scaling=scaling, **kwargs)
    bounds = segment_bounds(position_ids.expand(query.shape[0], -1))
    groups = query.shape[1] // key.shape[1]
    key, value = _expand_kv(key, groups), _expand_kv(value, groups)
    dropout_p = dropout if module.training else 0.0
    rows = []
    for row, segments in enumerate(bounds):
        parts = [
            F.scaled_dot_product_attention(query[row:row + 1, :, s:e], key[row:row + 1, :, s:e],
                                           value[row:row + 1, :, s:e], dropout_p=dropout_p, is_causal=True,
                                           scale=scaling)
            for s, e in segments
        ]  # each (1, H, e - s, D)
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    output = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)  # (B, H, T, D)
    return output.transpose(1, 2).contiguous(), None


def register_varlen_attention() -> str:
    """Register :func:`varlen_sdpa_forward` (with SDPA's mask builder) in transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
    return VARLEN_ATTENTION


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config object that attention modules of ``model`` read."""
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs[id(config)] = config
    return list(configs.values())


@contextlib.contextmanager
def packed_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run ``model`` with :func:`varlen_sdpa_forward` inside the block (SDPA-family models only).

    Models set to eager or flash attention are left as they are: eager is the reference path and
    flash-attention handles packed rows itself.
    """
    configs = [c for c in _configs(model) if c._attn_implementation in ("sdpa", VARLEN_ATTENTION)] if enabled else []
    if not configs:
        yield
        return
    name = register_varlen_attention()
    previous = [c._attn_implementation for c in configs]
    try:
        for config in configs:
            config._attn_implementation = name
        yield
    finally:
        for config, value in zip(configs, previous, strict=True):
            config._attn_implementation = value
