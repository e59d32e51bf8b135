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

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import torch

from llmrec.training.varlen import packed_attention

IGNORE_INDEX = -100  # label of positions without loss
LossT = TypeVar("LossT", bound=Callable[..., torch.Tensor])


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


# The helper through which transformers' models slice hidden states by ``logits_to_keep``; a model
# module that imports it takes a boolean (B, T) mask. Older modules index ``hidden_states[:, keep, :]``
# (an int or 1D tensor only), which a 2D mask breaks (IndexError in transformers 5.17's Llama).
MASK_SLICER = "slice_logits_to_keep"


@functools.lru_cache(maxsize=64)
def _accepts_logits_to_keep(forward_type: Any) -> bool:
    forward = getattr(forward_type, "forward", None)
    if forward is None:
        return False
    try:
        takes_it = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    return takes_it and MASK_SLICER in getattr(inspect.unwrap(forward), "__globals__", {})


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped) model's ``forward`` takes a boolean (B, T) ``logits_to_keep`` mask.

    True for transformers' models whose module slices with ``slice_logits_to_keep`` (recent 5.x);
    models that take only an int or 1D ``logits_to_keep`` get full logits and the same gather.
    """
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


CE_CHUNK_ELEMENTS = 1 << 20  # fp32 elements per chunk of the fused cross-entropy (4 MiB: heap-reused, no page faults)


class _FusedCrossEntropy(torch.autograd.Function):
    """Summed fp32 cross-entropy of (K, V) logits whose gradient is computed in the forward pass.

    The loss is a scalar, so d loss / d logits = softmax - one_hot is known as soon as the softmax
    is: each chunk of rows is upcast once, exponentiated in place, reduced to its log-sum-exp and
    turned into its gradient (stored in the logits' dtype). Compared with ``F.cross_entropy`` on
    upcast logits this skips the saved fp32 log-probabilities, the zero-filled gradient buffer of
    the NLL backward and a second pass over the vocabulary in backward (measured: the loss head
    took about half of a bf16 CPU LoRA step on all-label batches).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rows = max(1, CE_CHUNK_ELEMENTS // max(logits.shape[1], 1))
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None  # (K, V)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], rows):
            chunk = logits[start:start + rows].to(torch.float32, copy=True)  # (c, V), never a view of logits
            index = targets[start:start + rows].unsqueeze(1)  # (c, 1)
            picked = chunk.gather(1, index)  # (c, 1)
            peak = chunk.amax(dim=1, keepdim=True)  # (c, 1)
            chunk.sub_(peak).exp_()
            norm = chunk.sum(dim=1, keepdim=True)  # (c, 1)
            total += (peak + norm.log() - picked).sum()
            if grad is not None:
                chunk.div_(norm).scatter_add_(1, index, torch.full_like(picked, -1.0))
                grad[start:start + rows] = chunk
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad.mul_(grad_output.to(grad.dtype)) if grad is not None else None), None  # once_differentiable: reuse


def cross_entropy_fp32(logits: torch.Tensor, targets: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy of (K, V) ``logits`` against (K,) ``targets`` in fp32.

    Args:
        normalizer: divide the summed loss by this (e.g. label tokens of the whole accumulated
            step); None takes the mean over the K targets.

    Returns:
        A scalar; 0 (still attached to the graph) when there are no targets. Values and
        gradients equal ``F.cross_entropy(logits.float(), targets)`` (tested); computed in
        chunks by :class:`_FusedCrossEntropy` (targets must be valid class indices).
    """
    if targets.numel() == 0:
        return logits.sum() * 0.0
    total = _FusedCrossEntropy.apply(logits, targets)
    return total / (normalizer if normalizer is not None else targets.numel())  # type: ignore[no-any-return]


def adapters_follow_autocast(loss_fn: LossT, autocast_device: str | None = None) -> LossT:
    """``loss_fn`` with PEFT's adapter input casting off, for training under autocast.

    PEFT casts each LoRA layer's input to the adapter weights' dtype (fp32 here, so AdamW updates
    keep their precision); under bf16 autocast that is a bf16 -> fp32 -> bf16 round trip of every
    activation entering every adapter. With the cast off, autocast runs the adapter products in
    bf16 directly (its fp32 weights are cast, not the activations). Only for autocast regions: a
    bf16 input meeting fp32 adapter weights outside autocast would be a dtype error.

    Args:
        autocast_device: also enter a bf16 autocast on this device type (``cpu``); None when the
            caller (Accelerate's mixed precision) already runs the forward under autocast.
    """
    from peft.helpers import disable_input_dtype_casting

    def loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        autocast = (torch.autocast(autocast_device, dtype=torch.bfloat16) if autocast_device
                    else contextlib.nullcontext())
        with autocast, disable_input_dtype_casting(model):
            return loss_fn(model, batch)

    return cast(LossT, loss)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without ``labels`` and the bookkeeping columns models do not take."""
    return {k: v for k, v in batch.items() if k not in ("labels", "num_targets", "seq_lens", "prior_items")}


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
            logits = logits_at_positions(model, inputs, keep)  # (K, V)
    return cross_entropy_fp32(logits, targets, normalizer)


def logits_at_positions(model: torch.nn.Module, inputs: Mapping[str, Any], keep: torch.Tensor) -> torch.Tensor:
    """The model's logits at the ``keep`` positions, for a model whose ``logits_to_keep`` takes no mask.

    The model runs with its ``lm_head`` swapped for the identity, so its "logits" are the final
    hidden states; the real head (an LM head or an attached catalog head, which expects the label
    positions only) is then applied to the kept ones. Models that transform logits after the head
    (``final_logit_softcapping``) or have no ``lm_head`` get full logits, then the same gather.
    """
    inner = unwrap(model)
    head = getattr(inner, "lm_head", None)
    if not isinstance(head, torch.nn.Module) or getattr(getattr(inner, "config", None), "final_logit_softcapping", None):
        return cast(torch.Tensor, model(**inputs, use_cache=False).logits[keep])  # (B, T, V) -> (K, V)
    inner.lm_head = torch.nn.Identity()
    try:
        hidden = model(**inputs, use_cache=False).logits  # (B, T, d): the identity's output
    finally:
        inner.lm_head = head
    return cast(torch.Tensor, head(hidden[keep]))


def causal_lm_loss_full(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Reference: transformers' loss over full (B, T, V) logits (the slow path this module replaces)."""
    return model(**dict(batch), use_cache=False).loss  # type: ignore[no-any-return]


def select_loss(logits_only_on_labels: bool, varlen: bool) -> Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]:
    """The training loss: label-only logits (fast) or transformers' full-logits loss (reference)."""
    if logits_only_on_labels:
        return lambda model, batch: causal_lm_loss_on_labels(model, batch, varlen=varlen)
    return causal_lm_loss_full
