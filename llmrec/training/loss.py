"""Causal-LM loss that projects onto the vocabulary only where a label needs it.

The stock loss (``model(**batch, labels=...).loss``) multiplies every position's hidden state by
the (V, d) output matrix, materializes (B, T, V) logits and upcasts them to fp32 before the
cross-entropy. Here the model is asked, through transformers' ``logits_to_keep`` with a boolean
(B, T) mask, for logits at the positions whose *next* token has a label only: padding, prompt
prefixes and list markers never reach the vocabulary. The call goes through the outer model
(PEFT and DDP/FSDP wrappers included), so gradient synchronization hooks still run; tied
embeddings need nothing special because ``lm_head`` is applied by the model itself.

Models whose ``forward`` has no ``logits_to_keep`` argument fall back to full logits and the same
gather, so the loss is always the mean next-token cross-entropy over label positions, computed in
fp32, exactly what transformers' loss computes (checked in ``tests/unit/test_loss.py``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from llmrec.training.varlen import packed_attention

IGNORE_INDEX = -100  # label of positions without loss


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The innermost transformers model: strips DDP/FSDP/compile wrappers (``.module`` / ``._orig_mod``) and PEFT."""
    inner: Any = model
    for _ in range(8):
        if isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module
        elif hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        elif hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        else:
            break
    return inner  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _accepts_logits_to_keep(forward_type: Any) -> bool:
    forward = getattr(forward_type, "forward", None)
    if forward is None:
        return False
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped) model's ``forward`` takes ``logits_to_keep`` (transformers >= 4.50 LMs)."""
    forward_type: Any = type(unwrap(model))
    return _accepts_logits_to_keep(forward_type)


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions predict a labelled token, and those tokens.

    Position ``t`` of a row predicts ``labels[t + 1]`` (labels are not shifted in the batch).

    Args:
        labels: (B, T) long, ``-100`` where there is no loss.

    Returns:
        ``keep`` (B, T) bool and ``targets`` (K,) long, K = ``keep.sum()``, in row-major order
        (the order ``hidden[keep]`` yields).
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (batch, seq_len), got shape {tuple(labels.shape)}")
    shifted = labels[:, 1:]  # (B, T-1)
    has_target = shifted != IGNORE_INDEX  # (B, T-1)
    keep = torch.zeros_like(labels, dtype=torch.bool)  # (B, T)
    keep[:, :-1] = has_target
    return keep, shifted[has_target]


def cross_entropy_fp32(logits: torch.Tensor, targets: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy of (K, V) ``logits`` against (K,) ``targets`` in fp32.

    Args:
        normalizer: divide the summed loss by this (e.g. label tokens of the whole accumulated
            step); None takes the mean over the K targets.

    Returns:
        A scalar; 0 (still attached to the graph) when there are no targets.
    """
    if targets.numel() == 0:
        return logits.sum() * 0.0
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    return total / (normalizer if normalizer is not None else targets.numel())


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without ``labels`` and the bookkeeping columns models do not take."""
    return {k: v for k, v in batch.items() if k not in ("labels", "num_targets", "seq_lens")}


def causal_lm_loss_on_labels(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], normalizer: float | None = None, varlen: bool = True
) -> torch.Tensor:
    """Mean next-token cross-entropy over label positions, logits computed there only.

    Args:
        model: a causal LM (transformers, optionally PEFT-, DDP- or compile-wrapped).
        batch: ``input_ids`` (B, T), ``labels`` (B, T) and whatever else the model takes
            (``attention_mask`` 2D or 4D, ``position_ids``).
        normalizer: see :func:`cross_entropy_fp32`.
        varlen: packed rows (``position_ids`` and no 4D mask) run attention per example
            (:func:`llmrec.training.varlen.packed_attention`) instead of under a (T, T) mask.

    Returns:
        A scalar loss equal to transformers' own causal-LM loss on the same batch.
    """
    keep, targets = label_positions(batch["labels"])  # (B, T), (K,)
    inputs = model_inputs(batch)
    packed = "position_ids" in inputs and inputs.get("attention_mask") is None
    with packed_attention(model, enabled=varlen and packed):
        if supports_logits_to_keep(model):
            logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (K, V)
        else:
            logits = model(**inputs, use_cache=False).logits[keep]  # (B, T, V) -> (K, V)
    return cross_entropy_fp32(logits, targets, normalizer)


def causal_lm_loss_full(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Reference: transformers' loss over full (B, T, V) logits (the slow path this module replaces)."""
    return model(**dict(batch), use_cache=False).loss  # type: ignore[no-any-return]


def select_loss(logits_only_on_labels: bool, varlen: bool) -> Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]:
    """The training loss: label-only logits (fast) or transformers' full-logits loss (reference)."""
    if logits_only_on_labels:
        return lambda model, batch: causal_lm_loss_on_labels(model, batch, varlen=varlen)
    return causal_lm_loss_full
