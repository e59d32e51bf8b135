"""Profile one LoRA training step of a recipe's model on synthetic all-label batches.

Launch::

    python scripts/profile_train_step.py --config configs/ml100k/smollm2-lora.yaml --batch 8 --seq-len 256 --profile
    python scripts/profile_train_step.py --config configs/ml100k/smollm2-lora.yaml lora.dropout=0.05 model.attn_implementation=sdpa

Builds the model as training does (``model`` and ``lora`` groups, overrides applied), runs
``--warmup`` then ``--steps`` optimizer steps of the library's loss (label-only logits, fused
cross-entropy; bf16 autocast over fp32 adapters when the base is bf16, as the loop does) and
prints seconds per step and tokens/s; ``--profile`` adds torch.profiler's table of the costliest
ops (by self CPU time, grouped by input shape). Complements ``bench_train.py``, which times the
real loop on real data against the matmul ceiling.
"""

from __future__ import annotations

import argparse
import time

import torch

from llmrec.config import RunConfig, load_config
from llmrec.modeling.build import build_model
from llmrec.training.loss import adapters_follow_autocast, causal_lm_loss_on_labels
from llmrec.training.speed import configure_threads


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", action="append", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="print the top ops of one more step")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, schema=RunConfig)
    configure_threads(args.threads)
    model, _ = build_model(cfg.model, cfg.lora)
    model.train()
    bf16_base = any(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    loss_fn = adapters_follow_autocast(causal_lm_loss_on_labels, "cpu") if bf16_base else causal_lm_loss_on_labels
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))  # (B, T)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if args.compile:
        model = torch.compile(model, dynamic=False)

    def step() -> None:
        loss_fn(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - began) / args.steps
    print(f"batch {args.batch} x {args.seq_len}: {seconds:.2f} s/step, {args.batch * args.seq_len / seconds:.0f} tokens/s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15))
    return seconds


if __name__ == "__main__":
    main()
