"""Training checkpoints: Accelerate ``save_state`` folders plus the loop's own counters.

``RUN/checkpoints/step-N/`` holds what ``accelerator.save_state`` writes (optimizer, scheduler,
RNG states, sampler) and ``trainer_state.json`` (step, epoch, batches done, loss history). For
adapter training only the trainable weights are stored (a few MB instead of the whole base
model); the frozen base is rebuilt from its source on resume. A checkpoint is written to a
temporary folder and renamed, so a crash never leaves a half checkpoint that resume would pick.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from llmrec.io import write_json

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
BEST_FILE = "best-trainable.safetensors"  # RUN/checkpoints/: trainable weights of the best validation epoch
EPOCH_FILE = "epoch-{epoch}-trainable.safetensors"  # RUN/checkpoints/: trainable weights at each epoch's end (1-based)


@dataclass
class TrainerState:
    """The loop's counters, saved beside every checkpoint."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batches_done: int = 0  # micro-batches of ``epoch`` already consumed (per process)
    tokens_seen: int = 0  # input tokens processed, all processes
    history: list[dict[str, float]] = field(default_factory=list)  # per-log-step loss, lr, tokens/s
    evals: list[dict[str, float]] = field(default_factory=list)  # per-epoch validation results
    best_metric: float | None = None  # best early-stopping metric so far
    best_step: int | None = None  # global step at which ``best_metric`` was reached
    epochs_without_improvement: int = 0  # epochs since ``best_metric`` improved
    train_seconds: float = 0.0  # wall time of ``train`` up to this point, summed over resumes

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints under ``checkpoint_root``, oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = [
        p for p in checkpoint_root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
        and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(checkpoint_root: Path) -> Path | None:
    found = list_checkpoints(checkpoint_root)
    return found[-1] if found else None


def _stores_trainable_only(accelerator: Accelerator) -> bool:
    # FSDP / DeepSpeed shard their own state; leave their checkpoints to Accelerate.
    return accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def register_trainable_state_hooks(accelerator: Accelerator) -> None:
    """Make ``save_state`` / ``load_state`` store only parameters with ``requires_grad``.

    A frozen base model is identical on every resume, so storing it again per checkpoint only
    costs disk and time. Loading checks that every trainable tensor is present.
    """
    if not _stores_trainable_only(accelerator):
        return

    def save_hook(models: list[torch.nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, model in enumerate(models):
            if accelerator.is_main_process:
                save_file(_trainable_state(_unwrap(model)), os.path.join(output_dir, f"{i}-{TRAINABLE_FILE}"))
        weights.clear()  # Accelerate saves nothing else for these models

    def load_hook(models: list[torch.nn.Module], input_dir: str) -> None:
        for i, model in enumerate(list(models)):
            _load_trainable(_unwrap(model), Path(input_dir) / f"{i}-{TRAINABLE_FILE}")
        models.clear()  # tell Accelerate these are loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)  # DDP wraps the model in .module
    assert isinstance(inner, torch.nn.Module)
    return inner


def save_checkpoint(accelerator: Accelerator, checkpoint_root: Path, state: TrainerState, keep: int = 2) -> Path:
    """Save ``RUN/checkpoints/step-N`` atomically and prune to the newest ``keep`` checkpoints."""
    target = checkpoint_root / f"{CHECKPOINT_PREFIX}{state.global_step}"
    tmp = checkpoint_root / f".{target.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, asdict(state))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        for old in list_checkpoints(checkpoint_root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states from ``path``; return the loop counters."""
    accelerator.load_state(str(path))
    return TrainerState.load(path / STATE_FILE)


def save_trainable(accelerator: Accelerator, model: torch.nn.Module, path: Path) -> bool:
    """Store the model's trainable weights in the safetensors file ``path``.

    Written to a temporary file and renamed. Returns False (nothing written) where Accelerate owns
    the parameter layout (FSDP / DeepSpeed shards), where the weights are not whole on one process.
    """
    if not _stores_trainable_only(accelerator):
        return False
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(_trainable_state(accelerator.unwrap_model(model)), str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return True


def save_best_trainable(accelerator: Accelerator, model: torch.nn.Module, checkpoint_root: Path) -> bool:
    """Store the trainable weights as the best epoch's (``RUN/checkpoints/best-trainable.safetensors``)."""
    return save_trainable(accelerator, model, checkpoint_root / BEST_FILE)


def save_epoch_trainable(accelerator: Accelerator, model: torch.nn.Module, checkpoint_root: Path, epoch: int) -> bool:
    """Store the trainable weights at the end of ``epoch`` (1-based): ``RUN/checkpoints/epoch-N-trainable.safetensors``.

    Kept for the whole run (step checkpoints are pruned), so any epoch, or the mean of several,
    can be exported afterwards (:mod:`llmrec.training.export`).
    """
    return save_trainable(accelerator, model, checkpoint_root / EPOCH_FILE.format(epoch=epoch))


def restore_best_trainable(accelerator: Accelerator, model: torch.nn.Module, checkpoint_root: Path) -> bool:
    """Load the best epoch's trainable weights back into ``model`` on every process (False if none saved)."""
    path = checkpoint_root / BEST_FILE
    if not _stores_trainable_only(accelerator) or not path.is_file():
        return False
    _load_trainable(accelerator.unwrap_model(model), path)
    accelerator.wait_for_everyone()
    return True


def _trainable_state(inner: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with ``requires_grad``, detached on the CPU (what every trainable file stores)."""
    return {n: p.detach().cpu().contiguous() for n, p in inner.named_parameters() if p.requires_grad}


def _load_trainable(inner: torch.nn.Module, path: Path) -> None:
    """Load a trainable file into ``inner``; every trainable parameter must be in it."""
    state = load_file(str(path))
    missing = sorted({n for n, p in inner.named_parameters() if p.requires_grad} - set(state))
    if missing:
        raise RuntimeError(f"{path}: lacks trainable tensors {missing[:5]}")
    inner.load_state_dict(state, strict=False)
