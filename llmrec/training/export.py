"""Re-export a finished decoder run with the weights of other checkpoints (or their mean).

A run directory keeps the weights of its best validation epoch, but its ``checkpoints/`` also
hold the trainable tensors of the last steps (``step-N/0-trainable.safetensors``), of every
epoch's end (``epoch-N-trainable.safetensors``, runs since session 18) and of that best epoch
(``best-trainable.safetensors``). :func:`export_checkpoints` writes a new, complete
run directory whose adapter (and catalog head) are one of those, or the element-wise mean of
several (checkpoint averaging), so any epoch can be evaluated, served or explained like the
run itself::

    python scripts/export_checkpoint.py runs/my-run --checkpoint runs/my-run/checkpoints/step-2088 --out runs/my-run-last

Only runs whose checkpoints store the trainable tensors are supported (single process, DDP; not
FSDP / DeepSpeed shards), and only adapters and catalog heads: a trainable tensor of any other
kind is an error rather than silently left at the run's value.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmrec.io import atomic_dir, write_json
from llmrec.training.checkpoint import BEST_FILE, TRAINABLE_FILE
from llmrec.training.run_dir import INCOMPLETE_MARKER

ADAPTER_FILE = "adapter/adapter_model.safetensors"
HEAD_FILE = "catalog_head.pt"
HEAD_PREFIX = "base_model.model.lm_head."  # where the catalog head sits in the trained PEFT model
HEAD_PARTS = ("mlp", "pool")  # sub-modules saved as state dicts in catalog_head.pt
EXPORT_FILE = "export.json"  # RUN/export.json: the source run and checkpoints of an exported run


def trainable_file(checkpoint: Path) -> Path:
    """The trainable tensors of ``checkpoint``: a ``step-N`` directory or a ``.safetensors`` file."""
    if checkpoint.is_dir():
        found = sorted(checkpoint.glob(f"*{TRAINABLE_FILE}"))
        if len(found) != 1:
            raise FileNotFoundError(f"{checkpoint}: expected one *{TRAINABLE_FILE} (trainable tensors), found "
                                    f"{len(found)}; FSDP / DeepSpeed checkpoints are not supported")
        return found[0]
    if checkpoint.suffix != ".safetensors" or not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: not a step-N checkpoint directory or a .safetensors file "
                                f"(e.g. checkpoints/{BEST_FILE})")
    return checkpoint


def mean_trainable(checkpoints: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The element-wise float32 mean of the trainable tensors of ``checkpoints`` (same names in each)."""
    from safetensors.torch import load_file

    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    total: dict[str, torch.Tensor] = {}
    for checkpoint in checkpoints:
        path = trainable_file(checkpoint)
        tensors = load_file(str(path))
        if total and set(tensors) != set(total):
            raise ValueError(f"{path}: its trainable tensors differ from {trainable_file(checkpoints[0])}'s "
                             f"(e.g. {sorted(set(tensors) ^ set(total))[:3]}): not checkpoints of one run")
        for name, tensor in tensors.items():
            total[name] = total[name] + tensor.float() if name in total else tensor.float().clone()
    return {name: tensor / len(checkpoints) for name, tensor in total.items()}


def _adapter_name(trainable: str) -> str:
    """PEFT saves adapter tensors without the adapter's name (``lora_A.default.weight`` -> ``lora_A.weight``)."""
    return trainable.replace(".default.", ".")


def _new_adapter(run_dir: Path, weights: dict[str, torch.Tensor], used: set[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / ADAPTER_FILE))
    by_saved_name = {_adapter_name(name): name for name in weights if not name.startswith(HEAD_PREFIX)}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in saved.items():
        source = by_saved_name.get(name)
        if source is None:
            raise ValueError(f"{run_dir / ADAPTER_FILE}: tensor {name!r} has no trainable counterpart in the checkpoints")
        if weights[source].shape != tensor.shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(weights[source].shape)} != run's {tuple(tensor.shape)}")
        out[name] = weights[source].to(tensor.dtype).contiguous()
        used.add(source)
    return out


def _new_head(run_dir: Path, weights: dict[str, torch.Tensor], used: set[str]) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(run_dir / HEAD_FILE, map_location="cpu", weights_only=True)

    def take(name: str, like: torch.Tensor) -> torch.Tensor:
        key = HEAD_PREFIX + name
        if key not in weights:
            raise ValueError(f"{run_dir / HEAD_FILE}: {name!r} has no trainable counterpart ({key}) in the checkpoints")
        if weights[key].shape != like.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(weights[key].shape)} != run's {tuple(like.shape)}")
        used.add(key)
        return weights[key].to(like.dtype)

    state["proj"] = take("proj.weight", state["proj"])
    if "residuals" in state:
        state["residuals"] = take("residuals", state["residuals"])
    for part in HEAD_PARTS:
        if state.get(part) is not None:
            state[part] = {name: take(f"{part}.{name}", tensor) for name, tensor in state[part].items()}
    return state


def export_checkpoints(run_dir: str | Path, checkpoints: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ``out_dir``: ``run_dir`` with the (mean) trainable weights of ``checkpoints``.

    Everything but ``checkpoints/`` and ``logs/`` is copied; the adapter and catalog head are
    replaced, and ``export.json`` names the source run and checkpoints. Written to a temporary
    directory and renamed, so ``out_dir`` is either complete or absent.

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished decoder run, or a checkpoint is missing.
        FileExistsError: ``out_dir`` exists.
        ValueError: the checkpoints do not fit the run (names, shapes, unsupported trainable tensors).
    """
    from safetensors.torch import save_file

    source, target = Path(run_dir), Path(out_dir)
    if (source / INCOMPLETE_MARKER).exists() or not (source / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{source} is not a finished decoder run ({ADAPTER_FILE} missing or training unfinished)")
    if target.exists():
        raise FileExistsError(f"{target} exists: choose a new directory")
    paths = [Path(c) for c in checkpoints]
    weights = mean_trainable(paths)
    used: set[str] = set()
    adapter = _new_adapter(source, weights, used)
    head = _new_head(source, weights, used) if (source / HEAD_FILE).is_file() else None
    if left := sorted(set(weights) - used):
        raise ValueError(f"trainable tensors this export cannot place (only LoRA adapters and catalog heads): {left[:5]}")
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", "logs"))
        save_file(adapter, str(tmp / ADAPTER_FILE))
        if head is not None:
            torch.save(head, tmp / HEAD_FILE)
        write_json(tmp / EXPORT_FILE, {"source_run": str(source), "checkpoints": [str(p) for p in paths],
                                       "weights": "mean" if len(paths) > 1 else "copy"})
    return target
