"""Real assets: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 each train 3 LoRA steps, save, reload.

Run: ``python -m pytest tests/integration/test_real_models.py -m integration``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM

from llmrec.assets import fetch
from llmrec.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, RunConfig, TrainConfig
from llmrec.modeling.build import build_model, resolve_model_source
from llmrec.training.builders import TrainData, build_data
from llmrec.training.loop import train


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmrec.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "ml-100k"
    prepare_dataset(DataConfig(dataset="ml-100k"), out)
    return out


@pytest.mark.integration
def test_smollm2_gguf_lora_three_steps(tmp_path: Path, ml100k: Path) -> None:
    source = resolve_model_source("smollm2-135m-instruct")
    assert source.origin == "gguf" and source.gguf_file.endswith(".gguf")
    cfg = RunConfig(
        data=DataConfig(prepared_dir=str(ml100k)),
        prompt=PromptConfig(max_history_items=8, max_history_tokens=96, max_examples_per_user=1),
        model=ModelConfig(name_or_path="smollm2-135m-instruct", dtype="fp32"),
        lora=LoraConfig(r=8, alpha=16),
        train=TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=1, max_seq_len=160,
                          packing=True, mixed_precision="no", log_every_steps=1, warmup_ratio=0.0),
    )
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    # a dense model wherever it is built: transformers >= 5.25 would keep the GGUF blocks packed (and
    # attach its GGUF quantizer) on a machine whose `kernels` can fetch a matmul kernel
    assert getattr(model.get_base_model(), "hf_quantizer", None) is None
    assert getattr(model.get_base_model().config, "quantization_config", None) is None
    data = build_data(cfg, tokenizer)
    data.train.plan = data.train.plan[:8]  # a few packed rows are enough for 3 steps
    data.valid = None
    result = train(cfg, "pytest", model=model, tokenizer=tokenizer, data=data, device="cpu")
    assert result.global_step == 3 and all(torch.isfinite(torch.tensor([h["loss"] for h in result.history])))
    assert sorted(p.name for p in (result.run_dir / "prompts").iterdir())

    base = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, result.run_dir / "adapter").eval()
    ids = torch.tensor(data.train[0]["input_ids"][:48])[None]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def _mean_pool(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, H)


def contrastive_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """In-batch InfoNCE: each history should embed closest to its own next item (temperature 0.05)."""
    query = F.normalize(_mean_pool(model, batch["query_input_ids"], batch["query_attention_mask"]), dim=-1)
    item = F.normalize(_mean_pool(model, batch["item_input_ids"], batch["item_attention_mask"]), dim=-1)
    logits = query @ item.T / 0.05  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(logits)))


@pytest.mark.integration
def test_minilm_encoder_lora_three_steps(tmp_path: Path, ml100k: Path) -> None:
    from llmrec.data.dataset import PreparedDataset

    dataset = PreparedDataset.load(ml100k)
    pairs = []
    for seq in dataset.sequences(("train",))[:24]:
        history = "; ".join(dataset.catalog[i].title for i in seq.items[-6:-1])
        pairs.append((history, dataset.catalog[seq.items[-1]].title))
    model_dir = fetch("all-minilm-l6-v2")
    cfg = RunConfig(
        model=ModelConfig(name_or_path=str(model_dir), dtype="fp32", kind="encoder"),
        lora=LoraConfig(r=8, alpha=16, dropout=0.0),
        train=TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=8, mixed_precision="no",
                          warmup_ratio=0.0, learning_rate=1e-3, log_every_steps=1),
    )
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora, task="feature_extraction")
    assert tokenizer.padding_side == "right"

    def collate(rows: list[tuple[str, str]]) -> dict[str, Any]:
        query = tokenizer([q for q, _ in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
        item = tokenizer([t for _, t in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
        return {"query_input_ids": query["input_ids"], "query_attention_mask": query["attention_mask"],
                "item_input_ids": item["input_ids"], "item_attention_mask": item["attention_mask"]}

    result = train(cfg, "pytest", model=model, tokenizer=tokenizer, data=TrainData(train=pairs, collate=collate),
                   loss_fn=contrastive_loss, device="cpu")
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.final_loss))

    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dir), result.run_dir / "adapter").eval()
    batch = collate(pairs[:4])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_mean_pool(reloaded, batch["query_input_ids"], batch["query_attention_mask"]),
                                   _mean_pool(model, batch["query_input_ids"], batch["query_attention_mask"]))
