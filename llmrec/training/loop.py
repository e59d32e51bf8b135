"""The Accelerate training loop: LoRA fine-tuning with checkpoints, exact resume and a run directory.

Launch (any Accelerate config in ``configs/accelerate/``)::

    accelerate launch scripts/finetune.py --config configs/ml100k/smollm2-lora.yaml
    llmrec train --config configs/ml100k/smollm2-lora.yaml --resume

The pieces it is built from (accelerator, data, dataloaders, optimizer, scheduler) are in
:mod:`llmrec.training.builders`. The loop follows Hugging Face's ``run_clm_no_trainer.py``:
``accelerator.accumulate`` for gradient accumulation, ``save_state`` / ``load_state`` plus
``skip_first_batches`` for resume. Data order comes from a seeded sampler (seed + epoch), and
every random state is in the checkpoint, so a run killed and resumed ends with the same loss as
one that never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from llmrec.config import RunConfig, to_dict
from llmrec.io import write_json
from llmrec.modeling.catalog_head import (
    CATALOG_HEAD_FILE,
    attached_head,
    detach_catalog_head,
    feed_target_histories,
    save_catalog_head,
)
from llmrec.training import checkpoint as ckpt
from llmrec.training import run_dir as rd
from llmrec.training.builders import (
    Batch,
    LossFn,
    TrainData,
    attach_head_for_format,
    build_accelerator,
    build_data,
    build_dataloader,
    build_optimizer,
    build_scheduler,
    catalog_validation_fn,
    compute_dtype_loss,
)
from llmrec.training.loss import select_loss
from llmrec.training.speed import configure_threads

EvalFn = Callable[[torch.nn.Module, Any], Mapping[str, float]]
EARLY_STOPPING_METRIC = "ndcg@10"


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    run_dir: Path
    global_step: int
    final_loss: float  # mean training loss of the last optimizer step
    metrics: dict[str, Any]  # what metrics.json holds
    history: list[dict[str, float]]
    stopped_early: bool
    train_seconds: float = 0.0  # wall time of the run, summed over resumes (see TrainerState.train_seconds)


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over label positions (labels -100 carry no loss)."""
    return model(**batch).loss  # type: ignore[no-any-return]


def count_tokens(batch: Batch) -> int:
    """Real (non-padding) input tokens of a batch.

    Counts every 2D ``*attention_mask`` (so paired encoder batches, e.g. ``query_attention_mask``
    and ``item_attention_mask``, count both sides); without one, every ``*input_ids`` position.
    """
    masks = [v for k, v in batch.items() if k.endswith("attention_mask") and v.dim() == 2]
    if masks:
        return int(sum(int(m.sum()) for m in masks))
    return int(sum(v.numel() for k, v in batch.items() if k.endswith("input_ids")))


def batch_rows(batch: Batch) -> int:
    """Examples in a batch (the leading dimension of its first tensor)."""
    return int(next(iter(batch.values())).shape[0])


def train_epoch(accelerator: Accelerator, model: torch.nn.Module, loader: Iterable[Batch],
                optimizer: torch.optim.Optimizer, scheduler: Any, state: ckpt.TrainerState,
                run_cfg: RunConfig, loss_fn: LossFn, on_step: Callable[[], None],
                progress: tqdm) -> bool:
    """One pass over ``loader`` (already skipped on resume); returns True when ``max_steps`` is reached."""
    train_cfg = run_cfg.train
    model.train()
    window_loss, window_batches, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    for batch in loader:
        with accelerator.accumulate(model):
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and train_cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        state.batches_done += 1
        window_loss += float(accelerator.reduce(loss.detach(), "mean"))
        window_batches += 1
        window_tokens += int(accelerator.reduce(torch.tensor(count_tokens(batch), device=accelerator.device), "sum"))
        if not accelerator.sync_gradients:
            continue
        state.global_step += 1
        state.tokens_seen += window_tokens
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        record = {"step": state.global_step, "loss": window_loss / window_batches,
                  "lr": scheduler.get_last_lr()[0], "tokens_per_s": window_tokens / elapsed}
        state.history.append(record)
        if state.global_step % max(train_cfg.log_every_steps, 1) == 0:
            accelerator.log({"train/loss": record["loss"], "train/lr": record["lr"],
                             "train/tokens_per_s": record["tokens_per_s"]}, step=state.global_step)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        window_loss, window_batches, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        on_step()
        if 0 < train_cfg.max_steps <= state.global_step:
            return True
    return False


@torch.no_grad()
def validation_loss(accelerator: Accelerator, model: torch.nn.Module, loader: Iterable[Batch],
                    loss_fn: LossFn) -> float:
    """Example-weighted mean loss over ``loader``, summed across processes."""
    model.eval()
    totals = torch.zeros(2, device=accelerator.device)  # (loss * examples, examples)
    for batch in loader:
        n = batch_rows(batch)
        totals += torch.stack([loss_fn(model, batch).float() * n, torch.tensor(float(n), device=totals.device)])
    totals = accelerator.reduce(totals, "sum")
    model.train()
    return float(totals[0] / totals[1].clamp(min=1))


def evaluate(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, valid_loader: Iterable[Batch] | None,
             eval_fn: EvalFn | None, loss_fn: LossFn, step: int) -> dict[str, float]:
    """Validation loss (when there are validation examples) plus the ``eval_fn`` hook's metrics."""
    results: dict[str, float] = {"step": float(step)}
    if valid_loader is not None:
        results["valid_loss"] = validation_loss(accelerator, model, valid_loader, loss_fn)
    if eval_fn is not None:
        inner = accelerator.unwrap_model(model)
        inner.eval()
        with torch.no_grad():
            results.update({k: float(v) for k, v in eval_fn(inner, tokenizer).items()})
        model.train()
    accelerator.log({f"valid/{k}": v for k, v in results.items() if k != "step"}, step=step)
    return results


def early_stopping_value(results: Mapping[str, float]) -> float | None:
    """Higher-is-better value to track: the hook's NDCG@10 if given, else minus the validation loss."""
    for key, value in results.items():
        if key.lower() == EARLY_STOPPING_METRIC:
            return float(value)
    return -results["valid_loss"] if "valid_loss" in results else None


def update_early_stopping(state: ckpt.TrainerState, results: Mapping[str, float], patience: int) -> bool:
    """Record ``results``; True when ``patience`` epochs passed without improvement."""
    value = early_stopping_value(results)
    if value is None:
        return False
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.epochs_without_improvement = value, 0
        return False
    state.epochs_without_improvement += 1
    return 0 < patience <= state.epochs_without_improvement


def save_outputs(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, run_dir: Path,
                 run_cfg: RunConfig, state: ckpt.TrainerState, info: Mapping[str, Any],
                 stopped_early: bool, weights_step: int | None = None) -> dict[str, Any]:
    """Write adapter, tokenizer, prompts, metrics, curve and run.json; mark the run complete.

    ``weights_step``: the step whose weights are saved (the best validation epoch's when the
    loop restored them; default the last step), recorded in ``metrics.json``.
    """
    accelerator.wait_for_everyone()
    inner = accelerator.unwrap_model(model)
    final_loss = state.history[-1]["loss"] if state.history else float("nan")
    metrics: dict[str, Any] = {"global_step": state.global_step, "final_train_loss": final_loss,
                               "tokens_seen": state.tokens_seen, "stopped_early": stopped_early,
                               "weights_step": weights_step if weights_step is not None else state.global_step,
                               "best_step": state.best_step, "evals": state.evals,
                               "train_seconds": round(state.train_seconds, 2)}
    if state.evals:
        metrics["final_eval"] = state.evals[-1]
    if accelerator.is_main_process:
        head = attached_head(inner)
        if head is not None:
            save_catalog_head(head, run_dir / CATALOG_HEAD_FILE)
        rd.save_pretrained_dir(inner, run_dir / "adapter")
        rd.save_pretrained_dir(tokenizer, run_dir / "tokenizer")
        rd.save_prompts(run_dir, run_cfg.prompt)
        write_json(run_dir / "metrics.json", metrics)
        rd.plot_train_curve(run_dir / "train_curve.png", state.history, state.evals)
        rd.write_run_info(run_dir, info)
        rd.finish_run_dir(run_dir)
    accelerator.wait_for_everyone()
    return metrics


def _tracker_config(run_cfg: RunConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for group, values in to_dict(run_cfg).items():
        for key, value in values.items():
            flat[f"{group}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _run_info(run_cfg: RunConfig, model: torch.nn.Module, data: TrainData) -> dict[str, Any]:
    from llmrec.modeling.build import ENCODER_MODEL_TYPES

    model_type = getattr(getattr(model, "config", None), "model_type", "")
    kind = run_cfg.model.kind if run_cfg.model.kind != "auto" else (
        "encoder" if model_type in ENCODER_MODEL_TYPES else "decoder")
    info = {"kind": kind, "base_model": run_cfg.model.name_or_path, "gguf_file": run_cfg.model.gguf_file,
            "model_type": model_type, "dataset_dir": run_cfg.data.prepared_dir, "catalog_fingerprint": "",
            "seed": run_cfg.train.seed, "prompt_template": run_cfg.prompt.template,
            "format": run_cfg.train.format, "random_init": run_cfg.model.random_init_config is not None}
    info.update(data.info)
    return info


def train(
    run_cfg: RunConfig,
    command: str = "",
    resume: bool = False,
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    data: TrainData | None = None,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn | None = None,
    device: str | None = None,
) -> TrainResult:
    """Fine-tune per ``run_cfg`` and write the run directory ``train.output_dir``.

    Args:
        run_cfg: the resolved configuration (saved as ``RUN/config.yaml``).
        command: the command line that started the run (saved as ``RUN/command.txt``).
        resume: continue from the newest checkpoint in ``RUN/checkpoints``.
        model, tokenizer: a ready model (e.g. from ``build_model``); None builds it from ``run_cfg``.
            With ``resume`` it must be built exactly as in the interrupted run (same seed).
        data: training examples and collate; None builds them from the prepared dataset.
        eval_fn: ``eval_fn(model, tokenizer) -> {"ndcg@10": ...}`` run after each epoch; its
            ``ndcg@10`` drives early stopping (else the validation loss does). None: the
            validation ranking of ``train.format: catalog`` runs
            (:func:`llmrec.training.builders.catalog_validation_fn`), no hook for other formats.
        loss_fn: ``loss_fn(model, batch) -> scalar``; None: the causal-LM loss ``train.logits_only_on_labels``
            and ``train.packed_attention`` select (``llmrec.training.loss.select_loss``).
        device: ``cpu`` to force the CPU; None uses CUDA when available.

    Returns:
        A :class:`TrainResult`.
    """
    started = time.perf_counter()
    train_cfg = run_cfg.train
    run_dir = Path(train_cfg.output_dir)
    accelerator = build_accelerator(run_cfg, run_dir, device)
    if accelerator.device.type == "cpu":
        configure_threads(train_cfg.threads)
    if loss_fn is None:
        loss_fn = select_loss(train_cfg.logits_only_on_labels, train_cfg.packing and train_cfg.packed_attention == "varlen")
    if accelerator.is_main_process:
        rd.start_run_dir(run_dir, run_cfg, command, resume)
    accelerator.wait_for_everyone()
    set_seed(train_cfg.seed)
    if model is None:
        from llmrec.modeling.build import build_model

        model, tokenizer = build_model(run_cfg.model, run_cfg.lora)
    dataset = None  # the prepared dataset, read once here for whichever step below needs it
    if data is None or train_cfg.format == "catalog":
        from llmrec.data.dataset import PreparedDataset

        dataset = PreparedDataset.load(run_cfg.data.prepared_dir)
    original_head = attach_head_for_format(run_cfg, model, tokenizer, dataset)
    if eval_fn is None:
        eval_fn = catalog_validation_fn(run_cfg, accelerator, dataset)
    if original_head is not None:
        # a head with history_pool needs each target's earlier items; mask_history leaves them out of its softmax
        loss_fn = feed_target_histories(loss_fn, run_cfg.catalog_head.mask_history, run_cfg.catalog_head.mask_scope)
    data = data if data is not None else build_data(run_cfg, tokenizer, next(model.parameters()).dtype, dataset)
    loss_fn = compute_dtype_loss(loss_fn, model, accelerator, train_cfg.mixed_precision)
    train_loader = build_dataloader(data.train, data.collate, train_cfg.batch_size, True, train_cfg.seed,
                                    train_cfg.num_workers, train_cfg.group_by_length and not train_cfg.packing)
    valid_loader = None if data.valid is None else build_dataloader(
        data.valid, data.valid_collate or data.collate, train_cfg.batch_size, False, train_cfg.seed, train_cfg.num_workers)
    optimizer = build_optimizer(model, train_cfg.learning_rate, train_cfg.weight_decay,
                                run_cfg.catalog_head.learning_rate)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / train_cfg.grad_accum)
    total_steps = train_cfg.max_steps if train_cfg.max_steps > 0 else steps_per_epoch * train_cfg.epochs
    scheduler = build_scheduler(optimizer, train_cfg.lr_scheduler, total_steps, train_cfg.warmup_ratio,
                                accelerator.num_processes)
    ckpt.register_trainable_state_hooks(accelerator)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if valid_loader is not None:
        valid_loader = accelerator.prepare(valid_loader)
    accelerator.init_trackers("train", config=_tracker_config(run_cfg))
    state = _restore(accelerator, run_dir, resume)
    # Time already spent by interrupted calls (up to their last checkpoint) counts as if spent now.
    clock_origin = started - state.train_seconds
    result = _run_epochs(accelerator, model, tokenizer, train_loader, valid_loader, optimizer, scheduler,
                         state, run_cfg, loss_fn, eval_fn, total_steps, clock_origin)
    restored = train_cfg.restore_best and state.best_step is not None and ckpt.restore_best_trainable(
        accelerator, model, run_dir / "checkpoints")
    state.train_seconds = time.perf_counter() - clock_origin
    metrics = save_outputs(accelerator, model, tokenizer, run_dir, run_cfg, state,
                           _run_info(run_cfg, accelerator.unwrap_model(model), data), result,
                           state.best_step if restored else state.global_step)
    accelerator.end_training()
    if original_head is not None:
        detach_catalog_head(accelerator.unwrap_model(model), original_head)
    return TrainResult(run_dir, state.global_step, metrics["final_train_loss"], metrics, state.history, result,
                       state.train_seconds)


def _restore(accelerator: Accelerator, run_dir: Path, resume: bool) -> ckpt.TrainerState:
    if not resume:
        return ckpt.TrainerState()
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    accelerator.print(f"resuming from {latest}")
    return ckpt.load_checkpoint(accelerator, latest)


def _run_epochs(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, train_loader: Any,
                valid_loader: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                state: ckpt.TrainerState, run_cfg: RunConfig, loss_fn: LossFn, eval_fn: EvalFn | None,
                total_steps: int, clock_origin: float) -> bool:
    """Epochs from ``state`` on (mid-epoch after a resume); returns True when stopped early.

    ``clock_origin``: the ``perf_counter`` value at which the run would have started had it never
    been interrupted; each checkpoint records the wall time since then in ``state.train_seconds``.
    """
    train_cfg = run_cfg.train
    checkpoints = Path(train_cfg.output_dir) / "checkpoints"
    progress = tqdm(total=total_steps, initial=state.global_step, desc="train",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)

    def save() -> None:
        state.train_seconds = time.perf_counter() - clock_origin
        ckpt.save_checkpoint(accelerator, checkpoints, state, train_cfg.keep_checkpoints)

    def on_step() -> None:
        if train_cfg.save_every_steps > 0 and state.global_step % train_cfg.save_every_steps == 0:
            save()

    if state.batches_done >= len(train_loader):  # the checkpoint was taken at an epoch's end
        state.epoch, state.batches_done = state.epoch + 1, 0
    def more_to_do() -> bool:
        if train_cfg.max_steps > 0:
            return state.global_step < train_cfg.max_steps
        return state.epoch < train_cfg.epochs

    stopped_early = False
    while more_to_do():
        train_loader.set_epoch(state.epoch)
        loader = accelerator.skip_first_batches(train_loader, state.batches_done) if state.batches_done else train_loader
        reached_max = train_epoch(accelerator, model, loader, optimizer, scheduler, state, run_cfg, loss_fn,
                                  on_step, progress)
        if not reached_max:  # a whole epoch (not cut short by max_steps)
            ckpt.save_epoch_trainable(accelerator, model, checkpoints, state.epoch + 1)
        if train_cfg.eval_every_epoch and (valid_loader is not None or eval_fn is not None):
            results = evaluate(accelerator, model, tokenizer, valid_loader, eval_fn, loss_fn, state.global_step)
            state.evals.append(results)
            best_before = state.best_metric
            stopped_early = update_early_stopping(state, results, train_cfg.early_stopping_patience)
            if state.best_metric is not None and state.best_metric != best_before:
                state.best_step = state.global_step
                if train_cfg.restore_best:
                    ckpt.save_best_trainable(accelerator, model, checkpoints)
        if not reached_max:
            state.epoch, state.batches_done = state.epoch + 1, 0
        save()
        if reached_max or stopped_early:
            break
    progress.close()
    return stopped_early
