"""Training-throughput benchmark: the real training loop, timed, against the device's matmul ceiling.

:func:`run_train_benchmark` measures, in one process: the matmul ceiling (fp32 and, where the
device runs it, bf16; best of before/after training, so a busy neighbour lowers neither), then a
few steps of :func:`llmrec.training.loop.train` on the configured model and data, timing every
micro-batch from one loss call to the next (forward, backward, optimizer, collation of the next
batch: everything the loop does). It reports tokens/s (real tokens, padding excluded), achieved
model FLOP/s (:func:`llmrec.training.speed.train_flops_per_token`), MFU against both ceilings,
peak memory and the machine's load average (a shared machine shows up there).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from llmrec.config import RunConfig
from llmrec.training import speed
from llmrec.training.loss import IGNORE_INDEX, select_loss, unwrap
from llmrec.training.varlen import packed_mask_mode

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class StepTimer:
    """Counts tokens as batches are collated and stamps every loss call (batches arrive in order)."""

    tokens: deque[tuple[int, int]] = dataclasses.field(default_factory=deque)  # (tokens, label tokens) per batch
    stamps: list[float] = dataclasses.field(default_factory=list)
    cpu_stamps: list[float] = dataclasses.field(default_factory=list)  # process CPU seconds (all threads)
    measured: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def wrap_collate(self, collate: Callable[[list[dict[str, Any]]], Batch]) -> Callable[[list[dict[str, Any]]], Batch]:
        def counted(rows: list[dict[str, Any]]) -> Batch:
            batch = collate(rows)
            real = sum(len(r["input_ids"]) for r in rows)
            labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            self.tokens.append((real, labelled))
            return batch
        return counted

    def wrap_loss(self, loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor]) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
        def timed(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            self.stamps.append(time.perf_counter())
            self.cpu_stamps.append(time.process_time())
            self.measured.append(self.tokens.popleft())
            return loss_fn(model, batch)
        return timed

    def steps(self, warmup: int, threads: int) -> list[dict[str, float]]:
        """Per-batch records after ``warmup`` batches (each closed by the next loss call).

        ``cpu_share``: process CPU time / (wall time x threads); well below 1 on a CPU means the
        machine was shared (spin-waiting threads count as busy, so it is an upper bound).
        """
        records = []
        for i in range(warmup, len(self.stamps) - 1):
            seconds = self.stamps[i + 1] - self.stamps[i]
            cpu = self.cpu_stamps[i + 1] - self.cpu_stamps[i]
            tokens, labelled = self.measured[i]
            records.append({"tokens": tokens, "label_tokens": labelled, "seconds": seconds,
                            "tokens_per_s": tokens / seconds, "cpu_share": cpu / (seconds * threads)})
        return records


def attention_context(lengths: list[int]) -> float:
    """Token-weighted mean example length: the attention context of an average trained token."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 1.0


def measure_ceilings(device: str, n: int, repeats: int) -> dict[str, float]:
    """Matmul FLOP/s in fp32 and (where native) bf16."""
    ceilings = {"fp32": speed.measure_matmul_peak(torch.float32, n, device, repeats)}
    if speed.bf16_supported(device):
        ceilings["bf16"] = speed.measure_matmul_peak(torch.bfloat16, n, device, repeats)
    return ceilings


def summarize(records: list[dict[str, float]], flops_per_token: float, lm_head_flops_skipped: float,
              ceilings: Mapping[str, float], compute_dtype: str) -> dict[str, Any]:
    """Throughput, achieved FLOP/s and MFU (median over steps; min/max of tokens/s too)."""
    rates = [r["tokens_per_s"] for r in records]
    median = statistics.median(rates)
    achieved = median * flops_per_token
    required = median * (flops_per_token - lm_head_flops_skipped)
    out: dict[str, Any] = {
        "tokens_per_s": {"min": min(rates), "median": median, "max": max(rates)},
        "flops_per_token": flops_per_token,
        "achieved_flops": achieved,
        "achieved_required_flops": required,  # lm_head counted at label positions only
        "cpu_share": statistics.median(r["cpu_share"] for r in records),
    }
    for name, ceiling in ceilings.items():
        out[f"mfu_vs_{name}"] = achieved / ceiling
    out["mfu"] = achieved / ceilings.get(compute_dtype, ceilings["fp32"])
    return out


def run_train_benchmark(run_cfg: RunConfig, steps: int = 5, warmup: int = 1, ceiling_n: int = 2048,
                        ceiling_repeats: int = 5, device: str | None = None) -> dict[str, Any]:
    """Benchmark ``run_cfg``'s training (see the module docstring); returns a JSON-ready dict."""
    from llmrec.modeling.build import build_model
    from llmrec.training.builders import build_data
    from llmrec.training.collate import example_lengths, packed_collate
    from llmrec.training.loop import train

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = speed.configure_threads(run_cfg.train.threads) if device == "cpu" else torch.get_num_threads()
    load_before = os.getloadavg()
    ceilings = measure_ceilings(device, ceiling_n, ceiling_repeats)
    model, tokenizer = build_model(run_cfg.model, run_cfg.lora)
    dtype = next(p.dtype for p in model.parameters() if not p.requires_grad) if any(
        not p.requires_grad for p in model.parameters()) else next(model.parameters()).dtype
    data = build_data(run_cfg, tokenizer, dtype)
    train_cfg = run_cfg.train
    if train_cfg.packing:
        mask = packed_mask_mode(train_cfg.packed_attention)
        pad_id = int(tokenizer.pad_token_id)
        data.collate = lambda rows: packed_collate(rows, pad_id, mask=mask, mask_dtype=dtype)
    timer = StepTimer()
    data.collate = timer.wrap_collate(data.collate)
    varlen = train_cfg.packing and train_cfg.packed_attention == "varlen"
    loss_fn = timer.wrap_loss(select_loss(train_cfg.logits_only_on_labels, varlen))
    batches = warmup + steps + 1  # the last batch only closes the last measured interval
    with tempfile.TemporaryDirectory(prefix="llmrec-bench-") as tmp:
        bench_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(
            train_cfg, output_dir=str(Path(tmp) / "run"), max_steps=math.ceil(batches / train_cfg.grad_accum),
            eval_every_epoch=False, save_every_steps=0, early_stopping_patience=0))
        data.valid = None
        speed.reset_peak_memory(device)  # the training window only, not model loading
        train(bench_cfg, "bench_train", model=model, tokenizer=tokenizer, data=data, loss_fn=loss_fn, device=device)
    after = measure_ceilings(device, ceiling_n, ceiling_repeats)
    ceilings = {k: max(v, after.get(k, 0.0)) for k, v in ceilings.items()}
    records = timer.steps(warmup, threads)[:steps]
    inner = unwrap(model)
    layers, width = speed.model_shape(inner)
    lengths = example_lengths(getattr(data.train, "source", data.train))
    lora = run_cfg.lora.enabled
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_params = speed.flop_params(inner)
    flops_per_token = speed.train_flops_per_token(n_params, layers, width, attention_context(lengths), lora,
                                                  trainable if lora else 0)
    tokens = sum(r["tokens"] for r in records)
    label_share = sum(r["label_tokens"] for r in records) / max(tokens, 1)
    output_layer = getattr(inner, "get_output_embeddings", lambda: None)()
    vocab_matrix = getattr(output_layer, "weight", None)
    head = vocab_matrix.numel() if vocab_matrix is not None else 0
    skipped = 4.0 * head * (1.0 - label_share) if train_cfg.logits_only_on_labels else 0.0
    compute_dtype = "bf16" if dtype == torch.bfloat16 or train_cfg.mixed_precision == "bf16" else "fp32"
    return {
        "device": device, "threads": threads, "torch": torch.__version__,
        "model": run_cfg.model.name_or_path, "random_init": run_cfg.model.random_init_config is not None,
        "n_params_flops": n_params, "n_trainable": trainable, "n_layers": layers, "d_model": width,
        "settings": {"dtype": str(dtype).replace("torch.", ""), "mixed_precision": train_cfg.mixed_precision,
                     "attn_implementation": run_cfg.model.attn_implementation, "packing": train_cfg.packing,
                     "packed_attention": train_cfg.packed_attention if train_cfg.packing else None,
                     "logits_only_on_labels": train_cfg.logits_only_on_labels, "batch_size": train_cfg.batch_size,
                     "group_by_length": train_cfg.group_by_length and not train_cfg.packing,
                     "grad_accum": train_cfg.grad_accum, "max_seq_len": train_cfg.max_seq_len,
                     "lora_r": run_cfg.lora.r if lora else None, "lora_dropout": run_cfg.lora.dropout if lora else None},
        "examples": len(lengths), "attention_context": attention_context(lengths), "label_share": label_share,
        "ceilings_flops": ceilings, "compute_dtype": compute_dtype,
        **summarize(records, flops_per_token, skipped, ceilings, compute_dtype),
        "steps": records, "peak_memory_bytes": speed.peak_memory_bytes(device),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
    }
