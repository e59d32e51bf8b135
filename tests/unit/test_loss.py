"""The label-only causal-LM loss against transformers' full-logits loss (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from llmrec.training import loss as loss_module
from llmrec.training import varlen as varlen_module
from llmrec.training.collate import IGNORE_INDEX, pack_examples, packed_collate, pad_collate
from llmrec.training.loss import (
    causal_lm_loss_full,
    causal_lm_loss_on_labels,
    cross_entropy_fp32,
    label_positions,
    supports_logits_to_keep,
    unwrap,
)
from tests.tiny import tiny_gpt2, tiny_llama

VOCAB = 97
LENGTHS = [9, 14, 5, 21, 11, 7]


def examples(lengths: list[int] = LENGTHS, seed: int = 0) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        labels = [IGNORE_INDEX if i < n // 3 or i % 5 == 4 else t for i, t in enumerate(ids)]  # prefix + markers
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def lora_llama(seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    model = tiny_llama(VOCAB, seed=seed, attn_implementation=attn)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
    return get_peft_model(model, config)


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_label_positions_shift_by_one() -> None:
    labels = torch.tensor([[-100, 5, 6, -100], [7, -100, -100, 8]])
    keep, targets = label_positions(labels)
    assert keep.tolist() == [[True, True, False, False], [False, False, True, False]]
    assert targets.tolist() == [5, 6, 8]
    with pytest.raises(ValueError, match="batch, seq_len"):
        label_positions(torch.tensor([1, 2]))


def test_padded_batch_matches_transformers_loss_and_gradients() -> None:
    model = lora_llama()
    batch = pad_collate(examples(), pad_token_id=0)
    reference = causal_lm_loss_full(model, batch)
    reference.backward()
    expected = lora_grads(model)
    model.zero_grad(set_to_none=True)
    fast = causal_lm_loss_on_labels(model, batch)
    fast.backward()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    got = lora_grads(model)
    assert expected and got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mask", ["4d", "position_ids"])
def test_packed_batch_gives_the_unpacked_loss(mask: str) -> None:
    model = lora_llama(seed=1)
    unpacked = causal_lm_loss_full(model, pad_collate(examples(), pad_token_id=0))
    packed_rows = pack_examples(examples(), max_tokens=32)
    assert len(packed_rows) < len(LENGTHS)  # several examples share a row
    batch = packed_collate([packed_rows[i] for i in range(len(packed_rows))], 0, mask=mask)
    packed = causal_lm_loss_on_labels(model, batch)
    torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-6)


def test_fallback_without_logits_to_keep_gives_the_same_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    model = lora_llama(seed=2)
    batch = pad_collate(examples(), pad_token_id=0)
    fast = causal_lm_loss_on_labels(model, batch)
    monkeypatch.setattr(loss_module, "supports_logits_to_keep", lambda m: False)
    fallback = causal_lm_loss_on_labels(model, batch)
    torch.testing.assert_close(fallback, fast, rtol=1e-6, atol=1e-7)


def test_gpt2_and_untied_head() -> None:
    gpt2 = tiny_gpt2(VOCAB, seed=3).eval()  # eval: no dropout, so both calls see the same network
    batch = pad_collate(examples(), pad_token_id=0)
    torch.testing.assert_close(causal_lm_loss_on_labels(gpt2, batch), causal_lm_loss_full(gpt2, batch),
                               rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)
    untied = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    torch.testing.assert_close(causal_lm_loss_on_labels(untied, batch), causal_lm_loss_full(untied, batch),
                               rtol=1e-5, atol=1e-6)


def test_bf16_loss_agrees_with_fp32() -> None:
    model = lora_llama(seed=5)
    batch = packed_collate([pack_examples(examples(), 32)[0]], 0, mask="position_ids")
    fp32 = causal_lm_loss_on_labels(model, batch)
    bf16 = causal_lm_loss_on_labels(model.to(torch.bfloat16), batch)
    assert bf16.dtype == torch.float32  # cross-entropy runs in fp32 on bf16 logits
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=2e-2)


def test_unwrap_reaches_the_transformers_model_and_no_targets_gives_zero() -> None:
    model = lora_llama()
    assert type(unwrap(model)).__name__ == "LlamaForCausalLM"
    # the mask path exactly where transformers' Llama slices with the helper that takes a boolean mask
    import transformers.models.llama.modeling_llama as llama

    assert supports_logits_to_keep(model) == hasattr(llama, "slice_logits_to_keep")
    logits = torch.randn(0, VOCAB, requires_grad=True)
    zero = cross_entropy_fp32(logits, torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0.0 and zero.requires_grad


def test_varlen_packed_attention_matches_the_block_mask() -> None:
    model = lora_llama(seed=6)
    rows = pack_examples(examples(), max_tokens=32)
    rows = [rows[i] for i in range(len(rows))]
    masked = causal_lm_loss_on_labels(model, packed_collate(rows, 0, mask="4d"))
    masked.backward()
    expected = lora_grads(model)
    model.zero_grad(set_to_none=True)
    calls: list[int] = []
    original = varlen_module.varlen_sdpa_forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(varlen_module, "varlen_sdpa_forward", counting)
        varlen = causal_lm_loss_on_labels(model, packed_collate(rows, 0, mask="position_ids", pad_to_multiple_of=8))
    varlen.backward()
    assert len(calls) == 2  # one per layer: the per-example kernel really ran
    assert unwrap(model).config._attn_implementation == "sdpa"  # restored after the forward
    torch.testing.assert_close(varlen, masked, rtol=1e-5, atol=1e-6)
    for name, grad in lora_grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_segment_bounds() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert varlen_module.segment_bounds(positions) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_matches_torch_across_chunks(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_module, "CE_CHUNK_ELEMENTS", 3 * 50)  # 3 rows per chunk: 7 rows -> 3 chunks
    generator = torch.Generator().manual_seed(0)
    base = (torch.randn(7, 50, generator=generator) * 4).to(dtype)
    targets = torch.randint(0, 50, (7,), generator=generator)
    ours_in, ref_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = cross_entropy_fp32(ours_in, targets, normalizer=5.0)
    ref = torch.nn.functional.cross_entropy(ref_in.float(), targets, reduction="sum") / 5.0
    (ours * 3.0).backward()
    (ref * 3.0).backward()
    assert torch.equal(ours_in.detach(), base), "the logits were modified in place"
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert ours_in.grad is not None and ref_in.grad is not None
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), rtol=tolerance, atol=tolerance)


def test_adapters_follow_autocast_keeps_the_loss_and_fp32_adapters() -> None:
    model = lora_llama().to(torch.bfloat16)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()  # fp32 adapters over a bf16 base, as apply_lora leaves them
    batch = pad_collate(examples(), pad_token_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = causal_lm_loss_on_labels(model, batch)  # PEFT casts activations to the fp32 adapters
        inside = loss_module.adapters_follow_autocast(causal_lm_loss_on_labels)(model, batch)
    fast = loss_module.adapters_follow_autocast(causal_lm_loss_on_labels, autocast_device="cpu")(model, batch)
    torch.testing.assert_close(inside, fast)
    fast.backward()
    torch.testing.assert_close(fast, cast, rtol=2e-2, atol=2e-2)
    grads = lora_grads(model)
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules()), "casting not restored"
