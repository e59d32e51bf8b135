"""FLOP accounting, matmul ceiling, thread settings and peak memory."""

from __future__ import annotations

import pytest
import torch

from llmrec.training.speed import (
    configure_threads,
    flop_params,
    measure_matmul_peak,
    model_shape,
    peak_memory_bytes,
    reset_peak_memory,
    train_flops_per_token,
)
from tests.tiny import tiny_gpt2, tiny_llama


def test_flops_per_token_lora_and_full() -> None:
    # 4N + 2 N_lora + 12 L d T for LoRA; 6N + 12 L d T for full fine-tuning
    assert train_flops_per_token(1000, 2, 8, 10, lora=True, n_trainable=50) == 4000 + 100 + 12 * 2 * 8 * 10
    assert train_flops_per_token(1000, 2, 8, 10, lora=False) == 6000 + 12 * 2 * 8 * 10
    with pytest.raises(ValueError, match="positive"):
        train_flops_per_token(0, 2, 8, 10, lora=True)


def test_smollm2_shape_is_about_4n() -> None:
    n = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) + 576 + 49152 * 576
    per_token = train_flops_per_token(n, 30, 576, 490, lora=True)
    assert 134e6 < n < 135e6
    assert per_token == pytest.approx(4 * n * 1.19, rel=0.01)  # attention adds ~19% at 490-token context


def test_flop_params_counts_a_tied_matrix_once_and_skips_lookups() -> None:
    tied = tiny_llama(97)
    everything = sum(p.numel() for p in tied.parameters())  # parameters() already dedupes tied weights
    assert flop_params(tied) == everything
    gpt2 = tiny_gpt2(97)  # tied wte/lm_head; wpe (position lookup) costs no FLOPs
    assert flop_params(gpt2) == sum(p.numel() for p in gpt2.parameters()) - gpt2.transformer.wpe.weight.numel()
    assert model_shape(tied) == (2, 64) and model_shape(gpt2) == (2, 64)


def test_matmul_peak_is_positive_and_checks_arguments() -> None:
    assert measure_matmul_peak(torch.float32, n=128, repeats=2) > 1e6
    with pytest.raises(ValueError, match="n and repeats"):
        measure_matmul_peak(torch.float32, n=0)


def test_threads_and_memory() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)
    reset_peak_memory("cpu")
    assert peak_memory_bytes("cpu") > 10 * 2**20
