"""What the training loop is built from: accelerator, data, dataloaders, optimizer, scheduler.

Each builder takes the run configuration (or plain arguments) and returns one ready object;
:func:`llmrec.training.loop.train` wires them together. Kept apart from the loop so that the
loop itself (epochs, steps, checkpoints, early stopping) reads on one screen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from torch.utils.data import DataLoader
from transformers import get_scheduler

from llmrec.config import RunConfig
from llmrec.modeling.catalog_head import attach_catalog_head, attached_head, build_catalog_head
from llmrec.modeling.dtype import resolve_mixed_precision
from llmrec.training.loss import adapters_follow_autocast, unwrap

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


@dataclass
class TrainData:
    """What the loop trains on: map-style datasets of examples and the collate function."""

    train: Any  # datasets.Dataset (or any sized, indexable collection) of examples
    collate: Callable[[list[dict[str, Any]]], Batch]
    valid: Any | None = None  # examples for the validation loss (None: no validation loss)
    info: dict[str, Any] = field(default_factory=dict)  # extra run.json fields (dataset_dir, ...)
    valid_collate: Callable[[list[dict[str, Any]]], Batch] | None = None  # None: same as ``collate``


def build_accelerator(run_cfg: RunConfig, run_dir: Path, device: str | None = None) -> Accelerator:
    """Accelerator with mixed precision, accumulation, tensorboard under ``RUN/logs`` and a seeded sampler."""
    train_cfg = run_cfg.train
    cpu = device == "cpu" or not torch.cuda.is_available()
    return Accelerator(
        mixed_precision=resolve_mixed_precision(train_cfg.mixed_precision, "cpu" if cpu else "cuda"),
        gradient_accumulation_steps=train_cfg.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train_cfg.seed),
        cpu=cpu,
        dynamo_backend="inductor" if train_cfg.compile else "no",
    )


def compute_dtype_loss(loss_fn: LossFn, model: torch.nn.Module, accelerator: Accelerator,
                       requested: str = "auto") -> LossFn:
    """Run adapter products in bf16 where the frozen weights are bf16 (see ``adapters_follow_autocast``).

    Under Accelerate's autocast (CUDA) only PEFT's input casting is turned off. On the CPU,
    Accelerate runs no autocast (``mixed_precision: auto`` -> ``no``: its wrapper would also upcast
    every output to fp32), so with ``train.mixed_precision: auto`` (``requested``) a bf16 base with
    fp32 adapters gets a bf16 autocast around the loss. 4-bit (QLoRA) bases keep bitsandbytes' own
    compute-dtype handling.
    """
    inner = unwrap(model)
    if getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "hf_quantizer", None) is not None:
        return loss_fn
    if accelerator.mixed_precision in ("bf16", "fp16"):
        return adapters_follow_autocast(loss_fn)
    frozen_bf16 = any(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    if accelerator.device.type == "cpu" and frozen_bf16 and requested == "auto":
        return adapters_follow_autocast(loss_fn, autocast_device="cpu")
    return loss_fn


def build_dataloader(examples: Any, collate: Callable[..., Batch], batch_size: int, shuffle: bool,
                     seed: int, num_workers: int = 0, group_by_length: bool = False) -> DataLoader:
    """A DataLoader whose shuffling never touches the global RNG (its own seeded generator).

    ``group_by_length`` (with ``shuffle``): batches of similar-length examples drawn in a seeded,
    per-epoch order (:class:`llmrec.training.sampler.LengthGroupedSampler`), for padded batches.
    """
    if shuffle and group_by_length:
        from llmrec.training.collate import example_lengths
        from llmrec.training.sampler import LengthGroupedSampler

        sampler = LengthGroupedSampler(example_lengths(examples), batch_size, seed)
        return DataLoader(examples, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=num_workers, drop_last=False)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=generator, num_workers=num_workers, drop_last=False)


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float,
                    head_learning_rate: float | None = None) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; biases and norms get no weight decay; fused on CUDA.

    With ``head_learning_rate`` the parameters of an attached catalog head (projection, title MLP,
    item residuals) form their own groups at that peak rate (matrices with weight decay, the title
    MLP's biases and norm without); the scheduler scales every group's rate by the same factor, so
    the head keeps its ratio to the rest over the whole run.
    """
    head = attached_head(model) if head_learning_rate is not None else None
    in_head = {id(p) for p in head.parameters()} if head is not None else set()
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    head_decay: list[torch.nn.Parameter] = []
    head_no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.ndim >= 2 and "norm" not in name.lower()
        if id(param) in in_head:
            (head_decay if decays else head_no_decay).append(param)
        else:
            (decay if decays else no_decay).append(param)
    if not decay and not no_decay and not head_decay and not head_no_decay:
        raise ValueError("the model has no trainable parameters (check lora.target_modules / lora.enabled)")
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}]
    for params, decay_rate in ((head_decay, weight_decay), (head_no_decay, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": decay_rate, "lr": head_learning_rate})
    fused = all(p.is_cuda for p in decay + no_decay + head_decay + head_no_decay)
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_ratio: float,
                    num_processes: int) -> Any:
    """Linear warmup then ``name`` decay; step counts scaled because Accelerate steps it per process."""
    kind = "constant_with_warmup" if name == "constant" else name
    warmup = math.ceil(total_steps * warmup_ratio)
    if warmup_ratio > 0 and warmup <= 1 < total_steps:
        logger.warning("train.warmup_ratio %g of %d steps is %d warm-up step: the learning rate reaches its peak at "
                       "once, and the loss may jump early (train longer or raise train.warmup_ratio)",
                       warmup_ratio, total_steps, warmup)
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup * num_processes,
                         num_training_steps=total_steps * num_processes)


def _prepared(run_cfg: RunConfig, dataset: Any) -> Any:
    """``dataset`` if given, else the prepared dataset in ``data.prepared_dir``."""
    from llmrec.data.dataset import PreparedDataset

    return dataset if dataset is not None else PreparedDataset.load(run_cfg.data.prepared_dir)


def build_data(run_cfg: RunConfig, tokenizer: Any, model_dtype: torch.dtype = torch.float32,
               dataset: Any = None) -> TrainData:
    """Tokenized examples from the prepared dataset in ``data.prepared_dir``.

    Training examples come from the train split (``build_examples``, cached by config hash); the
    validation examples are one prompt -> validation-item completion per user (train history
    only), so the validation loss measures exactly the held-out next item. ``catalog`` examples
    (labels are item indices) have no validation loss: their runs are validated by ranking.
    ``dataset``: the prepared dataset if already loaded (else read from ``data.prepared_dir``).
    """
    import dataclasses

    from llmrec.prompts import load_template
    from llmrec.training.collate import pack_examples, packed_collate, pad_collate
    from llmrec.training.examples import build_examples, make_builder
    from llmrec.training.varlen import packed_mask_mode

    train_cfg, prompt_cfg = run_cfg.train, run_cfg.prompt
    dataset = _prepared(run_cfg, dataset)
    examples = build_examples(dataset, tokenizer, prompt_cfg, train_cfg.format, train_cfg.max_seq_len,
                              Path(run_cfg.data.prepared_dir) / "cache")
    user_mask = train_cfg.format == "catalog" and run_cfg.catalog_head.mask_history and run_cfg.catalog_head.mask_scope == "user"
    examples = examples.select_columns(["input_ids", "labels", "num_targets", *(["prior_items"] if user_mask else [])])
    pad_id = int(tokenizer.pad_token_id)
    info: dict[str, Any] = {"dataset_dir": str(dataset.root), "catalog_fingerprint": dataset.fingerprint,
                            "train_examples": len(examples)}
    valid = None
    if train_cfg.format != "catalog":  # catalog labels are item indices: no token-level validation loss (rank instead)
        valid_cfg = dataclasses.replace(prompt_cfg, max_examples_per_user=1)
        valid_format = "interest_tags" if train_cfg.format == "interest_tags" else "prompt_completion"
        builder = make_builder(dataset, load_template(prompt_cfg.template, prompt_cfg.prompts_dir), tokenizer,
                               valid_cfg, train_cfg.max_seq_len, valid_format)
        valid = builder.build(dataset.sequences(("train", "valid"))).select_columns(["input_ids", "labels"])
        if train_cfg.eval_max_users is not None and train_cfg.eval_max_users < len(valid):
            valid = valid.shuffle(seed=train_cfg.seed).select(range(train_cfg.eval_max_users))  # one example per user

    def pad(rows: list[dict[str, Any]]) -> Batch:
        return pad_collate(rows, pad_id, "right")  # training needs no generation prompt: pad right

    mask = packed_mask_mode(train_cfg.packed_attention)  # varlen: positions only, no (T, T) mask

    def packed(rows: list[dict[str, Any]]) -> Batch:
        return packed_collate(rows, pad_id, mask=mask, mask_dtype=model_dtype)

    if train_cfg.packing:
        train_data, collate = pack_examples(examples, train_cfg.max_seq_len), packed
    else:
        train_data, collate = examples, pad
    info.update(train_rows=len(train_data), valid_examples=len(valid) if valid is not None else 0)
    return TrainData(train=train_data, collate=collate, valid=valid, info=info, valid_collate=pad)


def catalog_validation_fn(run_cfg: RunConfig, accelerator: Accelerator | None = None, dataset: Any = None,
                          ) -> Callable[[torch.nn.Module, Any], Mapping[str, float]] | None:
    """The per-epoch validation a ``train.format: catalog`` run gets when its caller passes none.

    Catalog labels are item indices, so these runs have no token-level validation loss; without
    this hook ``llmrec train`` would keep the last epoch whatever it scored. It is the benchmark's
    own validation (:func:`llmrec.training.ranking_eval.run_ranking_eval_fn`, catalog-head scoring
    of the whole catalog) on ``train.eval_max_users`` validation users (None = every one), so
    ``llmrec train`` keeps the epoch ``llmrec benchmark`` would keep with ``valid_users`` equal to
    ``train.eval_max_users``. None for the other formats, or when ``train.eval_every_epoch`` is off.
    ``dataset``: the prepared dataset if already loaded (else read from ``data.prepared_dir``).
    """
    from llmrec.training.ranking_eval import run_ranking_eval_fn

    train_cfg = run_cfg.train
    if train_cfg.format != "catalog" or not train_cfg.eval_every_epoch:
        return None
    sharded = accelerator if accelerator is not None and accelerator.num_processes > 1 else None
    return run_ranking_eval_fn(run_cfg, _prepared(run_cfg, dataset), train_cfg.eval_max_users, accelerator=sharded)


def attach_head_for_format(run_cfg: RunConfig, model: torch.nn.Module, tokenizer: Any,
                           dataset: Any = None) -> torch.nn.Module | None:
    """``train.format: catalog``: put a catalog head for the prepared catalog in place of the LM head.

    Returns the LM head it replaced (put back after training), or None for the other formats.
    ``dataset``: the prepared dataset if already loaded (else read from ``data.prepared_dir``).
    """
    if run_cfg.train.format != "catalog":
        return None
    catalog = _prepared(run_cfg, dataset).catalog
    head = build_catalog_head(model, tokenizer, catalog, run_cfg.prompt, run_cfg.catalog_head.item_residuals,
                              run_cfg.catalog_head.title_mlp, run_cfg.catalog_head.history_pool,
                              run_cfg.catalog_head.title_source)
    return attach_catalog_head(model, head)
