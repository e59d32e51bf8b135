"""Throughput tools: thread settings, the device's matmul ceiling, training FLOP accounting, peak memory.

MFU (model FLOPs utilization) here is *achieved model FLOP/s divided by a matmul ceiling measured
on the same device in the same process* (a large square product in the training dtype), not a
datasheet number: on a shared or throttled CPU the datasheet says little about what is reachable.

FLOPs per trained token (:func:`train_flops_per_token`), with N the parameters that take part in
matrix products (:func:`flop_params`: input embedding lookups cost no FLOPs, a tied output matrix
counts once):

* forward: ``2 N``; backward to the activations: ``2 N`` (needed for LoRA and full fine-tuning);
  backward to the weights: ``2 N`` for full fine-tuning, ``2 N_trainable`` for LoRA. So ``4 N``
  for LoRA (plus the adapters' small share) and ``6 N`` for full fine-tuning (Kaplan et al.).
* attention scores and weighted values: ``4 L d T`` forward per token (L layers, width d, T
  tokens of attention context, the PaLM convention without halving for causality) and twice that
  backward, ``12 L d T`` in all, with or without LoRA (the activation gradients go through it).
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from llmrec.modeling.dtype import bf16_supported, device_type

__all__ = [
    "bf16_supported",
    "configure_threads",
    "flop_params",
    "measure_matmul_peak",
    "model_shape",
    "peak_memory_bytes",
    "reset_peak_memory",
    "train_flops_per_token",
]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: one per available core) and return it.

    One thread per *core* (not per hyper-thread sibling beyond the affinity mask) is what oneDNN's
    matmuls want; more threads than cores only adds contention. Inter-op parallelism is set to 1
    when still possible: a training step is one chain of dependent ops.
    """
    count = threads if threads is not None else available_cores()
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work has started: keep torch's value
        torch.set_num_interop_threads(1)
    return count


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    dtype: torch.dtype = torch.bfloat16,
    n: int = 2048,
    device: str | torch.device = "cpu",
    repeats: int = 5,
) -> float:
    """Best FLOP/s of an ``(n, n) @ (n, n)`` product in ``dtype`` on ``device`` over ``repeats`` runs.

    The best (not the mean) run is the ceiling: on a shared machine slower runs measure the
    neighbours. One untimed product warms up the kernels first.

    Returns:
        FLOP/s (``2 n^3`` per product).
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn((n, n), generator=gen, device=dev).to(dtype)  # (n, n)
    b = torch.randn((n, n), generator=gen, device=dev).to(dtype)  # (n, n)
    torch.matmul(a, b)
    _synchronize(dev)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(dev)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def train_flops_per_token(
    n_params: int,
    n_layers: int,
    d_model: int,
    seq_len: float,
    lora: bool,
    n_trainable: int = 0,
) -> float:
    """Training FLOPs per token (see the module docstring).

    Args:
        n_params: parameters in matrix products (:func:`flop_params`).
        n_layers, d_model: transformer depth and width (attention term).
        seq_len: attention context per token: the example length (for packed rows, the length of
            each packed example, not of the row: attention is block-diagonal).
        lora: True: frozen base, only ``n_trainable`` adapter weights get weight gradients.
        n_trainable: trainable parameters (LoRA adapters), counted with ``2`` extra FLOPs each.

    Returns:
        FLOPs per token of one forward + backward pass.
    """
    if min(n_params, n_layers, d_model) <= 0 or seq_len <= 0:
        raise ValueError(f"sizes must be positive: n_params={n_params}, n_layers={n_layers}, d_model={d_model}, seq_len={seq_len}")
    dense = 4.0 * n_params + 2.0 * n_trainable if lora else 6.0 * n_params
    attention = 12.0 * n_layers * d_model * seq_len
    return dense + attention


def flop_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix products: all unique ones except embedding lookups.

    An embedding matrix tied to the output layer counts once (as the output projection); an
    untied input embedding and position embeddings count zero.
    """
    output = getattr(model, "get_output_embeddings", lambda: None)()
    output_weight = getattr(output, "weight", None)
    lookups = {
        id(module.weight) for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not output_weight
    }
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen or id(param) in lookups:
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def model_shape(model: torch.nn.Module) -> tuple[int, int]:
    """``(n_layers, d_model)`` read from the model's config (Llama/GPT-2/BERT names)."""
    config = getattr(model, "config", None)
    layers = _first_attr(config, ("num_hidden_layers", "n_layer", "num_layers"))
    width = _first_attr(config, ("hidden_size", "n_embd", "d_model"))
    if layers is None or width is None:
        raise ValueError(f"cannot read layers/width from the config of {type(model).__name__}")
    return int(layers), int(width)


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def reset_peak_memory(device: str | torch.device = "cpu") -> None:
    """Start a new peak-memory window (CUDA allocator stats; on Linux the process's VmHWM).

    On other systems the CPU peak stays the process-lifetime peak (model loading included).
    """
    if device_type(device) == "cuda":
        torch.cuda.reset_peak_memory_stats(torch.device(device))
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # 5 = reset the peak RSS


def peak_memory_bytes(device: str | torch.device = "cpu") -> int:
    """Peak memory: CUDA allocator peak on a GPU, else the process's peak resident set size.

    On Linux the CPU value is VmHWM (reset by :func:`reset_peak_memory`), elsewhere ``ru_maxrss``.
    """
    if device_type(device) == "cuda":
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
