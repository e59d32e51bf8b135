"""Collation: padding, packing plan, and packed batches equal to unpacked ones on a tiny Llama."""

from __future__ import annotations

import pytest
import torch

from llmrec.training.collate import (
    IGNORE_INDEX,
    block_causal_mask,
    pack_examples,
    pack_plan,
    packed_collate,
    pad_collate,
)
from llmrec.training.loss import model_inputs
from tests.tiny import tiny_llama

LENGTHS = [7, 13, 5, 20, 9, 3, 16]


def random_examples(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(10, vocab, (n,), generator=generator).tolist()
        labels = [IGNORE_INDEX if i < n // 3 else token for i, token in enumerate(ids)]  # a prompt without loss
        examples.append({"input_ids": ids, "labels": labels, "num_targets": 1})
    return examples


def test_pad_collate_right_and_left():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    right = pad_collate(examples, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = pad_collate(examples, pad_token_id=0, padding_side="left", pad_to_multiple_of=4)
    assert left["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert left["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 8]]
    with pytest.raises(ValueError, match="padding_side"):
        pad_collate(examples, 0, padding_side="middle")


def test_prior_items_travel_beside_the_batch_and_never_reach_the_model():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prior_items": [3, 1]},
                {"input_ids": [8, 9], "labels": [-100, 9], "prior_items": [4]},
                {"input_ids": [2, 3], "labels": [-100, 3], "prior_items": []}]
    padded = pad_collate(examples, pad_token_id=0)
    assert padded["prior_items"].tolist() == [[[3, 1]], [[4, -1]], [[-1, -1]]]  # (B, 1, P), -1 padded
    assert "prior_items" not in model_inputs(padded) and "input_ids" in model_inputs(padded)
    assert "prior_items" not in pad_collate([{k: e[k] for k in ("input_ids", "labels")} for e in examples], 0)
    packed = pack_examples(examples, 5)
    rows = [packed[i] for i in range(len(packed))]
    assert [len(row["prior_items"]) for row in rows] == [len(row["seq_lens"]) for row in rows]  # one list per example
    batch = packed_collate(rows, pad_token_id=0)
    members = max(len(row["seq_lens"]) for row in rows)
    assert batch["prior_items"].shape == (len(rows), members, 2)
    for b, row in enumerate(rows):
        for m, prior in enumerate(row["prior_items"]):
            assert batch["prior_items"][b, m].tolist() == prior + [-1] * (2 - len(prior))
        assert (batch["prior_items"][b, len(row["prior_items"]):] == -1).all()  # absent members: all -1
    assert "prior_items" not in model_inputs(batch)


def test_pack_plan_fits_every_example_once_and_is_deterministic():
    plan = pack_plan(LENGTHS, 24)
    assert sorted(i for row in plan for i in row) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in row) <= 24 for row in plan)
    assert len(plan) == 4  # 73 tokens need at least 4 rows of 24
    assert plan == pack_plan(LENGTHS, 24)
    with pytest.raises(ValueError, match="example 3 has 20 tokens"):
        pack_plan(LENGTHS, 16)


def test_packed_collate_positions_labels_and_mask():
    rows = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "seq_lens": [2, 3]},
        {"input_ids": [6, 7], "labels": [6, 7], "seq_lens": [2]},
    ]
    batch = packed_collate(rows, pad_token_id=0, mask="4d", mask_dtype=torch.bool)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 2, -100, 4, 5], [-100, 7, -100, -100, -100]]
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, True, True, True],
    ]
    assert mask[1, 0, 2:, 2:].tolist() == [[True, False, False], [True, True, False], [True, True, True]]  # padding: own block
    additive = block_causal_mask(torch.tensor([[0, 0, 1]]), torch.float16)
    assert additive[0, 0, 2].tolist() == [torch.finfo(torch.float16).min, torch.finfo(torch.float16).min, 0.0]
    assert "attention_mask" not in packed_collate(rows, 0, mask="position_ids")


@pytest.mark.parametrize(
    ("attn", "mask", "dtype"),
    [("sdpa", "4d", torch.float32), ("eager", "4d", torch.float32), ("sdpa", "4d", torch.bool), ("sdpa", "position_ids", None), ("eager", "position_ids", None)],
)
def test_packed_batch_equals_unpacked_batch_on_tiny_llama(attn, mask, dtype):
    vocab = 97
    model = tiny_llama(vocab, attn_implementation=attn).eval()
    examples = random_examples(vocab)
    packed = pack_examples(examples, 24)
    assert len(packed) < len(examples)
    rows = [packed[i] for i in range(len(packed))]
    kwargs = {"mask_dtype": dtype} if dtype is not None else {}
    with torch.no_grad():
        # use_cache=False: with a cache transformers skips packed-sequence detection from position_ids
        reference = model(**pad_collate(examples, pad_token_id=0), use_cache=False)
        result = model(**packed_collate(rows, pad_token_id=0, mask=mask, **kwargs), use_cache=False)
    assert abs(result.loss.item() - reference.loss.item()) < 1e-5
    for row, members in enumerate(packed.plan):
        start = 0
        for index in members:
            n = len(examples[index]["input_ids"])
            torch.testing.assert_close(result.logits[row, start:start + n], reference.logits[index, :n], atol=1e-5, rtol=1e-5)
            start += n


def test_packing_a_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    examples = random_examples(50, lengths=[4, 6, 3])
    table = datasets.Dataset.from_list(examples)
    packed = pack_examples(table, 10)
    assert packed.plan == pack_plan([4, 6, 3], 10)
    row = packed[0]
    assert row["seq_lens"] == [len(examples[i]["input_ids"]) for i in packed.plan[0]]
    assert row["input_ids"] == [t for i in packed.plan[0] for t in examples[i]["input_ids"]]
