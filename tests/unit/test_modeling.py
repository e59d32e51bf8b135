"""Model sources, dtypes and the model/tokenizer builder on tiny offline models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmrec.config import ConfigError, LoraConfig, ModelConfig
from llmrec.modeling.build import build_model, infer_kind, resolve_model_source
from llmrec.modeling.dtype import bf16_supported, resolve_dtype, resolve_mixed_precision
from tests.tiny import tiny_llama
from tests.unit.train_helpers import TINY_BERT, TINY_GPT2, TINY_LLAMA, save_tokenizer


def test_gguf_file_path_splits_into_dir_and_file(tmp_path: Path) -> None:
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    source = resolve_model_source(str(gguf))
    assert (source.path, source.gguf_file, source.origin) == (str(tmp_path), "m.Q4_1.gguf", "gguf")
    assert source.load_kwargs() == {"gguf_file": "m.Q4_1.gguf"}


def test_directory_with_one_gguf_picks_it(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert resolve_model_source(str(tmp_path)).gguf_file == "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="several GGUF"):
        resolve_model_source(str(tmp_path))
    assert resolve_model_source(str(tmp_path), "b.gguf").gguf_file == "b.gguf"


def test_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="not a model directory"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source("./no/such/dir")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="nope.gguf"):
        resolve_model_source(str(tmp_path), "nope.gguf")


def test_hub_id_and_local_dir(tmp_path: Path) -> None:
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct").origin == "hub"
    tiny_llama(50).save_pretrained(tmp_path / "m")
    source = resolve_model_source(str(tmp_path / "m"))
    assert (source.origin, source.gguf_file) == ("local", None)


def test_dtype_resolution() -> None:
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if bf16_supported("cpu") else torch.float32)
    assert resolve_mixed_precision("auto", "cpu") == "no"
    with pytest.raises(ConfigError, match="fp8"):
        resolve_dtype("fp8")
    with pytest.raises(ConfigError, match="mixed_precision"):
        resolve_mixed_precision("int8")


@pytest.mark.parametrize(("arch", "kind", "side"), [(TINY_LLAMA, "decoder", "left"), (TINY_GPT2, "decoder", "left"),
                                                     (TINY_BERT, "encoder", "right")])
def test_random_init_model_and_tokenizer(tmp_path: Path, tiny_tokenizer, arch, kind, side) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    task = "causal_lm" if kind == "decoder" else "feature_extraction"
    cfg = ModelConfig(name_or_path=str(tok_dir), random_init_config=dict(arch), dtype="bf16")
    model, tokenizer = build_model(cfg, LoraConfig(enabled=False), task=task)
    assert infer_kind(model.config) == kind
    assert tokenizer.padding_side == side
    assert tokenizer.pad_token_id is not None and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.dtype == torch.bfloat16
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_pad_token_falls_back_to_eos(tmp_path: Path, tiny_tokenizer) -> None:
    tokenizer = tiny_tokenizer.__class__.from_pretrained(str(save_tokenizer(tiny_tokenizer, tmp_path)))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "nopad")
    cfg = ModelConfig(name_or_path=str(tmp_path / "nopad"), random_init_config=dict(TINY_LLAMA), dtype="fp32")
    _, tok = build_model(cfg, LoraConfig(enabled=False))
    assert tok.pad_token == tok.eos_token


def test_local_dir_loads_safetensors_with_separate_tokenizer(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    base = tiny_llama(len(tiny_tokenizer), seed=3)
    base.save_pretrained(tmp_path / "base")
    cfg = ModelConfig(name_or_path=str(tmp_path / "base"), tokenizer=str(tok_dir), dtype="fp32")
    model, _ = build_model(cfg, LoraConfig(enabled=False), task="seq_cls", num_labels=3)
    assert model.config.num_labels == 3
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_unknown_task_and_missing_model_type(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    with pytest.raises(ConfigError, match="task"):
        build_model(ModelConfig(name_or_path=str(tok_dir), random_init_config=dict(TINY_LLAMA)),
                    LoraConfig(enabled=False), task="translate")
    with pytest.raises(ConfigError, match="model_type"):
        build_model(ModelConfig(name_or_path=str(tok_dir), random_init_config={"hidden_size": 8}, kind="decoder"),
                    LoraConfig(enabled=False))


def test_num_layers_keeps_the_first_blocks_of_a_pretrained_stack(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    base = tiny_llama(len(tiny_tokenizer), seed=5, num_hidden_layers=3)
    base.save_pretrained(tmp_path / "base")
    cfg = ModelConfig(name_or_path=str(tmp_path / "base"), tokenizer=str(tok_dir), dtype="fp32", num_layers=2)
    model, _ = build_model(cfg, LoraConfig(enabled=False))
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    kept = model.state_dict()
    full = base.state_dict()
    assert all(torch.equal(kept[name], full[name]) for name in kept)  # same weights, nothing re-initialised
    assert not any(name.startswith("model.layers.2.") for name in kept)
    ids = torch.tensor([[3, 4, 5, 6]])
    truncated = tiny_llama(len(tiny_tokenizer), seed=5, num_hidden_layers=3)
    truncated.model.layers = truncated.model.layers[:2]
    truncated.config.num_hidden_layers = 2
    assert torch.allclose(model(ids).logits, truncated(ids).logits, atol=1e-6)


@pytest.mark.parametrize("arch", [TINY_LLAMA, TINY_GPT2])
def test_num_layers_on_a_random_model_and_its_limits(tmp_path: Path, tiny_tokenizer, arch) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    cfg = ModelConfig(name_or_path=str(tok_dir), random_init_config=dict(arch), dtype="fp32", num_layers=1)
    model, _ = build_model(cfg, LoraConfig(enabled=False))
    assert model.config.num_hidden_layers == 1
    with pytest.raises(ConfigError, match="num_layers is 3 but .* has only 2 layers"):
        build_model(ModelConfig(name_or_path=str(tok_dir), random_init_config=dict(arch), num_layers=3),
                    LoraConfig(enabled=False))


def test_num_layers_more_than_the_checkpoint_has_is_refused(tmp_path: Path, tiny_tokenizer) -> None:
    tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(tmp_path / "base")
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path / "base"), tokenizer=str(tok_dir), num_layers=5)
    with pytest.raises(ConfigError, match="only 2 layers"):  # never random blocks on top of pretrained ones
        build_model(cfg, LoraConfig(enabled=False))


def test_the_source_config_is_read_once_for_kind_and_depth(tmp_path: Path, tiny_tokenizer) -> None:
    from llmrec.modeling import build

    tiny_llama(len(tiny_tokenizer), seed=2).save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(str(tmp_path / "base"))
    build._source_config.cache_clear()
    model, _ = build_model(ModelConfig(name_or_path=str(tmp_path / "base"), dtype="fp32", num_layers=1),
                           LoraConfig(enabled=False))  # kind: auto and num_layers both need the config
    assert len(model.model.layers) == 1
    info = build._source_config.cache_info()
    assert (info.misses, info.hits) == (1, 1)
