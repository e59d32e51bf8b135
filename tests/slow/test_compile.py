"""``train.compile`` (Accelerate's inductor backend) trains and saves a loadable run (slow: compiles)."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.utils import set_seed
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llmrec.modeling.build import build_model
from llmrec.training.builders import TrainData
from llmrec.training.loop import train
from tests.unit.train_helpers import fixed_examples, pad_right, save_tokenizer, tiny_run_config

pytestmark = pytest.mark.slow


def test_compiled_training_saves_a_plain_adapter(tmp_path: Path, tiny_tokenizer) -> None:
    cfg = tiny_run_config(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), max_steps=3, compile=True)
    set_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    data = TrainData(train=fixed_examples(tokenizer, 4), collate=pad_right)
    result = train(cfg, "pytest", model=model, tokenizer=tokenizer, data=data, device="cpu")
    assert result.global_step == 3 and all(h["loss"] == h["loss"] for h in result.history)
    base = AutoModelForCausalLM.from_config(model.get_base_model().config)
    PeftModel.from_pretrained(base, result.run_dir / "adapter")  # keys without "_orig_mod." prefixes
