"""Shared builders for the training tests: tiny configs, a saved tiny tokenizer, fixed examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmrec.config import LoraConfig, ModelConfig, RunConfig, TrainConfig
from llmrec.training.builders import TrainData

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
              "tie_word_embeddings": True}
TINY_GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}
TINY_BERT = {"model_type": "bert", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 256}
# A 32-wide Llama as a YAML override value, for running the repository's recipes on a tiny model.
TINY_RECIPE_LLAMA = ("{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
                     "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 512, tie_word_embeddings: true}")


def tiny_recipe_overrides(tokenizer_dir: Path) -> list[str]:
    """A recipe, unchanged but for a random-init tiny model (:data:`TINY_RECIPE_LLAMA`), fp32, and a 3-step run."""
    return [f"model.name_or_path={tokenizer_dir}", f"model.random_init_config={TINY_RECIPE_LLAMA}", "model.dtype=fp32",
            "model.attn_implementation=eager", "train.max_steps=3", "train.batch_size=2", "train.grad_accum=1",
            "train.max_seq_len=256", "train.mixed_precision='no'", "train.save_every_steps=0", "train.packing=false"]


def save_tokenizer(tokenizer: Any, root: Path) -> Path:
    path = root / "tokenizer"
    if not path.exists():
        tokenizer.save_pretrained(str(path))
    return path


def tiny_run_config(tmp: Path, tokenizer_dir: Path, arch: dict[str, Any] | None = None, **train: Any) -> RunConfig:
    """A RunConfig for a random-init tiny model, CPU, fp32, writing to ``tmp/run``."""
    train_cfg = {"output_dir": str(tmp / "run"), "batch_size": 4, "grad_accum": 1, "learning_rate": 5e-3,
                 "warmup_ratio": 0.1, "mixed_precision": "no", "log_every_steps": 1, "epochs": 1,
                 "early_stopping_patience": 0}
    train_cfg.update(train)
    return RunConfig(
        model=ModelConfig(name_or_path=str(tokenizer_dir), random_init_config=dict(arch or TINY_LLAMA),
                          dtype="fp32", attn_implementation="eager"),
        lora=LoraConfig(r=4, alpha=8, dropout=0.1),
        train=TrainConfig(**train_cfg),
    )


def fixed_examples(tokenizer: Any, n: int, length: int = 24, seed: int = 0) -> list[dict[str, list[int]]]:
    """``n`` equal-length examples of random tokens; the first third carries no loss."""
    gen = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    rows = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (length,), generator=gen).tolist()
        labels = [-100] * (length // 3) + ids[length // 3:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def pad_right(rows: list[dict[str, list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids (B, T), attention_mask (B, T), labels (B, T)."""
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), longest), pad_id)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), -100)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(row["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def tiny_data(tokenizer: Any, n: int = 32, valid: int = 0) -> TrainData:
    valid_rows = fixed_examples(tokenizer, valid, seed=1) if valid else None
    return TrainData(train=fixed_examples(tokenizer, n), collate=pad_right, valid=valid_rows)
