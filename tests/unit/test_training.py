"""The Accelerate loop on a tiny random Llama: learning, run directory, adapter reload, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmrec.config import ModelConfig
from llmrec.modeling.build import build_model
from llmrec.training.builders import TrainData
from llmrec.training.loop import train
from llmrec.training.run_dir import INCOMPLETE_MARKER, is_complete
from tests.tiny import tiny_llama
from tests.unit.train_helpers import fixed_examples, pad_right, save_tokenizer, tiny_data, tiny_run_config


def test_loss_decreases_on_a_fixed_batch(tmp_path: Path, tiny_tokenizer) -> None:
    cfg = tiny_run_config(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), max_steps=20, learning_rate=1e-2,
                          warmup_ratio=0.0, lr_scheduler="constant")
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    data = TrainData(train=fixed_examples(tokenizer, 4), collate=pad_right)  # one batch of 4, 20 times
    result = train(cfg, "pytest", model=model, tokenizer=tokenizer, data=data, device="cpu")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 20 and result.global_step == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert losses[-1] < losses[0] - 0.5, losses


def test_run_directory_and_plain_peft_reload(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    tiny_llama(len(tiny_tokenizer), seed=5).save_pretrained(tmp_path / "base")
    cfg = tiny_run_config(tmp_path, tok_dir, max_steps=3)
    cfg.model = ModelConfig(name_or_path=str(tmp_path / "base"), tokenizer=str(tok_dir), dtype="fp32",
                            attn_implementation="eager")
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    result = train(cfg, "llmrec train --config x.yaml", model=model, tokenizer=tokenizer,
                   data=tiny_data(tokenizer, 16, valid=8), device="cpu")
    run = result.run_dir
    for name in ("config.yaml", "command.txt", "versions.json", "run.json", "metrics.json", "train_curve.png",
                 "adapter/adapter_config.json", "tokenizer/tokenizer.json", "prompts"):
        assert (run / name).exists(), name
    assert is_complete(run) and not (run / INCOMPLETE_MARKER).exists()
    assert (run / "command.txt").read_text().strip() == "llmrec train --config x.yaml"
    assert json.loads((run / "versions.json").read_text())["peft"]
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "decoder" and info["seed"] == cfg.train.seed
    assert list((run / "logs").rglob("events.out.tfevents*")), "no tensorboard events"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["final_train_loss"] == pytest.approx(result.final_loss)

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32, attn_implementation="eager")
    reloaded = PeftModel.from_pretrained(base, run / "adapter").eval()
    model.eval()
    ids = torch.tensor(fixed_examples(tokenizer, 2)[0]["input_ids"])[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_adapter_changes_the_model(tmp_path: Path, tiny_tokenizer) -> None:
    cfg = tiny_run_config(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), max_steps=2)
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train(cfg, "pytest", model=model, tokenizer=tokenizer, data=tiny_data(tokenizer, 8), device="cpu")
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_existing_run_dir_needs_resume(tmp_path: Path, tiny_tokenizer) -> None:
    cfg = tiny_run_config(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), max_steps=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    model, tokenizer = build_model(cfg.model, cfg.lora)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, "pytest", model=model, tokenizer=tokenizer, data=tiny_data(tokenizer, 4), device="cpu")


def test_eval_hook_and_early_stopping(tmp_path: Path, tiny_tokenizer) -> None:
    cfg = tiny_run_config(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), epochs=6, early_stopping_patience=2)
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    scores = iter([0.30, 0.25, 0.20, 0.50, 0.60, 0.70])
    calls = []
    snapshots: list[dict[str, torch.Tensor]] = []

    def eval_fn(m, tok):
        calls.append((m.training, tok is tokenizer))
        snapshots.append({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        return {"NDCG@10": next(scores), "hr@10": 0.1}

    result = train(cfg, "pytest", model=model, tokenizer=tokenizer, data=tiny_data(tokenizer, 8, valid=4),
                   eval_fn=eval_fn, device="cpu")
    assert result.stopped_early and len(calls) == 3  # best at epoch 1, two epochs without gain
    assert calls[0] == (False, True)
    assert [e["NDCG@10"] for e in result.metrics["evals"]] == [0.30, 0.25, 0.20]
    assert all("valid_loss" in e for e in result.metrics["evals"])
    assert result.global_step == 3 * 2  # 8 examples / batch 4 = 2 steps per epoch
    # the saved weights are the best epoch's (epoch 1, step 2), not the last epoch's
    assert result.metrics["best_step"] == 2 and result.metrics["weights_step"] == 2
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], t) for n, t in snapshots[0].items())
    assert not all(torch.equal(final[n], t) for n, t in snapshots[-1].items())
    saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    lora_a = next(n for n in snapshots[0] if "lora_A" in n)
    assert any(torch.equal(v, snapshots[0][lora_a]) for v in saved.values())


def test_bf16_base_trains_with_fp32_adapters_under_cpu_autocast(tmp_path: Path, tiny_tokenizer) -> None:
    import dataclasses

    from llmrec.training import loop

    cfg = tiny_run_config(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), max_steps=12, learning_rate=1e-2,
                          warmup_ratio=0.0, lr_scheduler="constant", mixed_precision="auto")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bf16"))
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    wrapped: list[bool] = []
    original = loop.compute_dtype_loss

    def spy(loss_fn, model, accelerator, requested):  # type: ignore[no-untyped-def]
        out = original(loss_fn, model, accelerator, requested)
        wrapped.append(out is not loss_fn)
        return out

    loop.compute_dtype_loss = spy
    try:
        data = TrainData(train=fixed_examples(tokenizer, 4), collate=pad_right)
        result = train(cfg, "pytest", model=model, tokenizer=tokenizer, data=data, device="cpu")
    finally:
        loop.compute_dtype_loss = original
    assert wrapped == [True], "a bf16 base on the CPU trains its fp32 adapters under bf16 autocast"
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.3, losses


def test_a_warm_up_of_at_most_one_step_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from llmrec.training.builders import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with caplog.at_level("WARNING", logger="llmrec.training.builders"):
        build_scheduler(optimizer, "cosine", total_steps=3, warmup_ratio=0.05, num_processes=1)
    assert "1 warm-up step" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmrec.training.builders"):
        build_scheduler(optimizer, "cosine", total_steps=400, warmup_ratio=0.05, num_processes=1)
        build_scheduler(optimizer, "cosine", total_steps=3, warmup_ratio=0.0, num_processes=1)
    assert "warm-up" not in caplog.text
