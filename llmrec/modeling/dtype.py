"""Pick weight dtypes and Accelerate mixed-precision modes per device.

``auto`` means bf16 where the hardware runs it natively (CUDA with bf16 support, or a CPU with
AVX512-BF16 / AMX), else fp32. fp16 is never chosen automatically: it needs loss scaling and is
slower than fp32 on CPUs.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from llmrec.config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MIXED_PRECISION_MODES = ("auto", "no", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    capability = ""
    with contextlib.suppress(AttributeError, RuntimeError):
        capability = str(torch.backends.cpu.get_cpu_capability())
    if "AMX" in capability.upper():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_type(device: str | torch.device | None = None) -> str:
    """``cuda`` when a CUDA device is requested (or available and none is named), else ``cpu``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def bf16_supported(device: str | torch.device | None = None) -> bool:
    """Whether bf16 runs natively on ``device``."""
    if device_type(device) == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_supports_bf16()


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """Turn ``auto | bf16 | fp16 | fp32`` into a ``torch.dtype`` for ``device``.

    Raises:
        ConfigError: ``name`` is not one of the known dtypes.
    """
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"model.dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_mixed_precision(name: str, device: str | torch.device | None = None) -> str:
    """Turn ``train.mixed_precision`` into Accelerate's ``no | bf16 | fp16``.

    ``auto`` picks bf16 on CUDA with bf16 support, fp16 on older CUDA devices, and ``no`` on the
    CPU: there the weights are already bf16 (``model.dtype: auto``) when the CPU runs bf16, and
    autocast on top of fp32 weights measured slower than bf16 weights (see the README's numbers).
    The training loop adds its own bf16 autocast for a bf16 base with fp32 LoRA adapters
    (``llmrec.training.builders.compute_dtype_loss``).
    """
    if name not in MIXED_PRECISION_MODES:
        raise ConfigError(f"train.mixed_precision {name!r} is not one of {', '.join(MIXED_PRECISION_MODES)}")
    if name != "auto":
        return name
    if device_type(device) == "cuda":
        return "bf16" if bf16_supported(device) else "fp16"
    return "no"
