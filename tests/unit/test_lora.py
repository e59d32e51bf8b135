"""LoRA target presets per architecture, target errors before compute, QLoRA on the CPU."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from llmrec.config import ConfigError, LoraConfig, ModelConfig
from llmrec.modeling.build import build_model
from llmrec.modeling.lora import TARGET_PRESETS, apply_lora, lora_targets, require_chat_template
from tests.tiny import tiny_bert, tiny_gpt2, tiny_llama


def _wrapped(model: torch.nn.Module) -> set[str]:
    """Short names of the modules that received a LoRA adapter."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A") and name}


@pytest.mark.parametrize(
    ("make", "task", "expected"),
    [(tiny_llama, "causal_lm", set(TARGET_PRESETS["llama"])),
     (tiny_gpt2, "causal_lm", {"c_attn", "c_proj", "c_fc"}),
     (tiny_bert, "feature_extraction", {"query", "key", "value", "dense"})],
)
def test_presets_wrap_the_expected_layers(make, task, expected) -> None:
    model = apply_lora(make(100), LoraConfig(r=4, alpha=8), task)
    assert _wrapped(model) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_all_linear_and_explicit_targets() -> None:
    assert lora_targets(tiny_llama(100), "all-linear") == "all-linear"
    model = apply_lora(tiny_llama(100), LoraConfig(r=2, target_modules="all-linear"))
    assert "lm_head" not in _wrapped(model) and "down_proj" in _wrapped(model)
    model = apply_lora(tiny_llama(100), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert _wrapped(model) == {"q_proj", "v_proj"}


def test_bad_targets_are_named_before_compute() -> None:
    with pytest.raises(ConfigError, match=r"\['qkv_proj', 'c_attn'\].*adaptable layers are") as err:
        apply_lora(tiny_llama(100), LoraConfig(target_modules=["q_proj", "qkv_proj", "c_attn"]))
    assert "q_proj" in str(err.value).split("adaptable layers are")[1]
    with pytest.raises(ConfigError, match="modules_to_save"):
        apply_lora(tiny_gpt2(100), LoraConfig(modules_to_save=["score"]))


def test_architecture_without_preset() -> None:
    model = tiny_llama(100)
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="no preset for model type 'mystery'"):
        lora_targets(model, "preset")


def test_require_chat_template(tiny_tokenizer) -> None:
    with pytest.raises(ConfigError, match="no chat template"):
        require_chat_template(tiny_tokenizer)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    require_chat_template(tokenizer)


def _qlora_step(tmp_path: Path, tiny_tokenizer, gradient_checkpointing: bool) -> tuple[torch.nn.Module, list[float]]:
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(tmp_path / "base")
    cfg = ModelConfig(name_or_path=str(tmp_path / "base"), dtype="fp32", load_in_4bit=True,
                      gradient_checkpointing=gradient_checkpointing)
    model, _ = build_model(cfg, LoraConfig(r=4, alpha=8, dropout=0.0))
    ids = torch.randint(10, len(tiny_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return model, losses


def test_qlora_trains_on_cpu(tmp_path: Path, tiny_tokenizer) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    model, losses = _qlora_step(tmp_path, tiny_tokenizer, gradient_checkpointing=True)
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]


def test_qlora_without_bitsandbytes_fails_before_compute(monkeypatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    cfg = ModelConfig(name_or_path=str(tmp_path / "never-read"), load_in_4bit=True)
    with pytest.raises(ConfigError, match="needs bitsandbytes"):
        build_model(cfg, LoraConfig())


def test_gradient_checkpointing_option(tmp_path: Path, tiny_tokenizer) -> None:
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}
    cfg = ModelConfig(name_or_path=str(tmp_path / "tok"), random_init_config=llama, dtype="fp32",
                      gradient_checkpointing=True)
    model, _ = build_model(cfg, LoraConfig(r=2))
    assert model.base_model.model.is_gradient_checkpointing
    model.train()
    ids = torch.randint(10, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
