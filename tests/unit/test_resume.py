"""Kill-and-resume reproduces the uninterrupted run (data order, dropout, optimizer, schedule)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from llmrec.modeling.build import build_model
from llmrec.training.checkpoint import STATE_FILE, list_checkpoints
from llmrec.training.export import trainable_file
from llmrec.training.loop import causal_lm_loss, train
from llmrec.training.run_dir import INCOMPLETE_MARKER
from tests.unit.train_helpers import save_tokenizer, tiny_data, tiny_run_config


class Crash(RuntimeError):
    pass


def _crash_after(calls: int):
    count = {"n": 0}

    def loss_fn(model, batch):
        count["n"] += 1
        if count["n"] > calls:
            raise Crash(f"simulated crash at micro-batch {count['n']}")
        return causal_lm_loss(model, batch)

    return loss_fn


def _run(tmp: Path, tok_dir: Path, name: str, tiny_tokenizer, resume: bool = False, loss_fn=causal_lm_loss):
    # 24 examples, batch 2, accumulation 2: 6 optimizer steps per epoch; 8 steps cross an epoch end.
    cfg = tiny_run_config(tmp / name, tok_dir, batch_size=2, grad_accum=2, max_steps=8, save_every_steps=2,
                          keep_checkpoints=2)
    set_seed(7)  # the model is rebuilt identically on resume, as the CLI does
    model, tokenizer = build_model(cfg.model, cfg.lora)
    return train(cfg, "pytest", resume=resume, model=model, tokenizer=tokenizer,
                 data=tiny_data(tokenizer, 24), loss_fn=loss_fn, device="cpu"), model


def test_kill_and_resume_matches_uninterrupted_run(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    straight, straight_model = _run(tmp_path, tok_dir, "straight", tiny_tokenizer)

    with pytest.raises(Crash):  # dies during optimizer step 5, after checkpoint step-4
        _run(tmp_path, tok_dir, "crashed", tiny_tokenizer, loss_fn=_crash_after(9))
    run = tmp_path / "crashed" / "run"
    assert (run / INCOMPLETE_MARKER).exists()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2", "step-4"]
    states = [run / "checkpoints" / name / STATE_FILE for name in ("step-2", "step-4")]
    seconds = [json.loads(path.read_text())["train_seconds"] for path in states]
    assert 0 < seconds[0] < seconds[1]
    state = json.loads(states[1].read_text())
    states[1].write_text(json.dumps({**state, "train_seconds": 1000.0}))  # as if the crashed call had run long

    started = time.perf_counter()
    resumed, resumed_model = _run(tmp_path, tok_dir, "crashed", tiny_tokenizer, resume=True)
    this_call = time.perf_counter() - started
    assert resumed.global_step == straight.global_step == 8
    assert abs(resumed.final_loss - straight.final_loss) < 1e-5
    tail = [h["loss"] for h in resumed.history[-4:]]
    assert tail == pytest.approx([h["loss"] for h in straight.history[-4:]], abs=1e-5)
    for (name, a), (_, b) in zip(straight_model.named_parameters(), resumed_model.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-6), name
    assert not (run / INCOMPLETE_MARKER).exists()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-6", "step-8"]
    assert (run / "command.txt").read_text().count("pytest") == 2
    # epoch 1 ended at step 6 (kept after pruning: its own file and the step-6 checkpoint agree);
    # step 8 is max_steps, mid-epoch 2: no epoch file for it
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == ["epoch-1-trainable.safetensors"]
    epoch1 = load_file(str(run / "checkpoints" / "epoch-1-trainable.safetensors"))
    step6 = load_file(str(trainable_file(run / "checkpoints" / "step-6")))
    assert epoch1.keys() == step6.keys() and epoch1
    assert all(torch.equal(epoch1[name], step6[name]) for name in epoch1)
    # the training time counts the crashed call up to its last checkpoint, not only the resumed part
    assert 1000.0 < resumed.train_seconds <= 1000.0 + this_call
    assert json.loads((run / "metrics.json").read_text())["train_seconds"] == round(resumed.train_seconds, 2)


def test_resume_without_checkpoint_is_an_error(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    (tmp_path / "x" / "run").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(tmp_path, tok_dir, "x", tiny_tokenizer, resume=True)
