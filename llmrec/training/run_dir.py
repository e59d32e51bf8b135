"""The run directory: everything needed to reload, audit and reproduce one training run.

Layout (the contract read by ``Recommender``, serve and explain)::

    RUN/.incomplete        present while training runs; removed when the run finished cleanly
    RUN/config.yaml        resolved RunConfig            RUN/command.txt   exact command(s)
    RUN/versions.json      package versions              RUN/run.json      kind, base model, data, seed, ...
    RUN/prompts/*.jinja    templates used                RUN/adapter/      PEFT adapter (save_pretrained)
    RUN/tokenizer/         tokenizer                     RUN/metrics.json  final metrics
    RUN/train_curve.png    loss curve                    RUN/checkpoints/  Accelerate states
    RUN/logs/              tensorboard                   RUN/catalog_head.pt  catalog head (train.format: catalog)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmrec.config import PromptConfig, RunConfig, comparable, dump_yaml
from llmrec.io import atomic_dir, atomic_file, write_json

INCOMPLETE_MARKER = ".incomplete"
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "gguf", "llmrec")


def package_versions(packages: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (``missing`` when not installed) plus Python's."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def start_run_dir(run_dir: Path, config: RunConfig, command: str, resume: bool) -> None:
    """Create (or reopen on resume) ``run_dir`` and write config, command and versions.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is off.
        FileNotFoundError: ``resume`` is on but ``run_dir`` does not exist.
    """
    if resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: run directory {run_dir} does not exist")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run directory {run_dir} is not empty; pass --resume to continue it or choose train.output_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / INCOMPLETE_MARKER).write_text(f"started {_now()}\n", encoding="utf-8")
    with atomic_file(run_dir / "config.yaml") as handle:
        handle.write(dump_yaml(config))
    previous = (run_dir / "command.txt").read_text(encoding="utf-8") if resume and (run_dir / "command.txt").exists() else ""
    with atomic_file(run_dir / "command.txt") as handle:
        handle.write(previous + command.rstrip("\n") + "\n")
    write_json(run_dir / "versions.json", package_versions())


def save_prompts(run_dir: Path, prompt_cfg: PromptConfig) -> list[Path]:
    """Copy the prompt templates into ``RUN/prompts`` (reused verbatim at inference).

    Every template of ``prompt.prompts_dir`` is copied, not only ``prompt.template``: inference
    also renders the explanation and interest-tag templates of the same run.
    """
    from llmrec.prompts import save_templates, template_names

    names = set(template_names(prompt_cfg.prompts_dir)) | {prompt_cfg.template}
    target = run_dir / "prompts"
    if target.exists():
        shutil.rmtree(target)
    return save_templates(target, sorted(names), prompt_cfg.prompts_dir)


def save_pretrained_dir(obj: Any, target: Path) -> None:
    """``obj.save_pretrained`` into ``target`` atomically (replacing a previous one)."""
    with atomic_dir(target, overwrite=True) as tmp:
        obj.save_pretrained(str(tmp))


def write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Write ``run.json`` with ``created`` and ``llmrec_version`` filled in."""
    data = dict(info)
    data.setdefault("created", _now())
    data.setdefault("llmrec_version", package_versions(("llmrec",))["llmrec"])
    write_json(run_dir / "run.json", data)


def plot_train_curve(path: Path, history: Sequence[Mapping[str, float]], evals: Sequence[Mapping[str, float]]) -> None:
    """Plot training loss per step (and validation loss per epoch, if any) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss")
    points = [(e["step"], e["valid_loss"]) for e in evals if "valid_loss" in e]
    if points:
        ax.plot(*zip(*points, strict=True), "o-", label="valid loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, mode="wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def finish_run_dir(run_dir: Path) -> None:
    """Mark ``run_dir`` complete (removes the ``.incomplete`` marker)."""
    (run_dir / INCOMPLETE_MARKER).unlink(missing_ok=True)


def is_complete(run_dir: Path) -> bool:
    return (run_dir / "run.json").is_file() and not (run_dir / INCOMPLETE_MARKER).exists()


def is_finished_run_of(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a run of exactly ``config`` that finished training cleanly.

    A benchmark killed after training (e.g. while ranking) reloads such a run when it is run again
    instead of refusing it (:func:`resume_or_start`) or training it a second time.
    """
    return is_complete(run_dir) and _holds_config(run_dir, config)


def _holds_config(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``RUN/config.yaml`` is ``config`` as the run would write it (fields added to the schema
    since, at their default, aside: :func:`llmrec.config.comparable`)."""
    import yaml

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    return comparable(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}) == comparable(yaml.safe_load(dump_yaml(config)))


def resume_or_start(run_dir: Path, config: RunConfig) -> bool:
    """Whether a job that trains ``config`` into ``run_dir`` (a benchmark entry) should resume.

    Returns False when ``run_dir`` is missing or empty (start fresh) and True when it holds an
    interrupted run of the same config with at least one checkpoint: a benchmark that was killed
    mid-training continues from its last checkpoint when it is run again.

    Raises:
        FileExistsError: ``run_dir`` holds a finished run (load it instead, or remove it), or an
            interrupted run of a different config, or no checkpoint to resume from.
    """
    from llmrec.training.checkpoint import latest_checkpoint

    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return False
    if not (run_dir / INCOMPLETE_MARKER).exists():
        raise FileExistsError(f"{run_dir} holds a finished run: load it (e.g. the benchmark entry's params.run_dir) "
                              "or remove it / choose another output directory to train again")
    if not _holds_config(run_dir, config):
        raise FileExistsError(f"{run_dir} holds an interrupted run of a different config (config.yaml differs): "
                              "remove it or choose another output directory")
    if latest_checkpoint(run_dir / "checkpoints") is None:
        raise FileExistsError(f"{run_dir} holds an interrupted run without a checkpoint to resume from: remove it")
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
