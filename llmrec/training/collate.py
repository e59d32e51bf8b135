"""Batch collation: padding, and packing several examples per row without cross-talk.

Padding (:func:`pad_collate`) gives the usual ``input_ids``/``attention_mask``/``labels``.

Packing (:func:`pack_examples` + :func:`packed_collate`) concatenates examples into rows of at most
``max_tokens`` and keeps them independent:

* ``position_ids`` restart at 0 at every example, so RoPE sees each example at its own positions;
* the label of each example's first token is -100 (transformers shifts labels left, so the last
  token of one example would otherwise be trained to predict the first token of the next);
* attention is block-diagonal causal. With ``mask="4d"`` the batch carries a ``(B, 1, T, T)`` mask
  that transformers passes to the attention kernel untouched (``masking_utils._preprocess_mask_arguments``
  returns a 4D mask as-is): additive (0 / dtype min) for a float ``mask_dtype``, which eager and
  sdpa both accept, or boolean (True = attend) for ``torch.bool``, which only sdpa/flex read
  correctly (eager *adds* the mask). Use the model's compute dtype for a float mask. With
  ``mask="position_ids"`` no mask is sent and transformers derives the same block-diagonal mask
  from the position resets (``find_packed_sequence_indices``; sdpa, eager and flash-attention, on
  CPU too); it costs no (B, T, T) tensor.

Padding rows of a packed batch form their own block, so no query row is fully masked (no NaN).

Examples with a ``prior_items`` column (``catalog`` examples for ``catalog_head.mask_scope: user``)
also give ``prior_items`` ``(B, M, P)``: row ``b``'s ``m``-th example's items, -1 padded (M = 1
when padding). Models never see it (:func:`llmrec.training.loss.model_inputs`); the catalog head's
loss wrapper reads it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100
MASK_MODES = ("4d", "position_ids")


def pad_collate(
    examples: Sequence[Mapping[str, Sequence[int]]],
    pad_token_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``labels`` of ``examples`` to one length.

    Returns:
        ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long (1 = token), ``labels`` (B, T)
        long with -100 on padding; ``prior_items`` (B, 1, P) when the examples carry them.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    if not examples:
        raise ValueError("pad_collate got an empty batch")
    width = _round_up(max(len(e["input_ids"]) for e in examples), pad_to_multiple_of)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        ids, row_labels = example["input_ids"], example.get("labels", example["input_ids"])
        if len(row_labels) != len(ids):
            raise ValueError(f"example {row}: {len(ids)} input_ids but {len(row_labels)} labels")
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        labels[row, span] = torch.as_tensor(row_labels, dtype=torch.long)
        attention_mask[row, span] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if "prior_items" in examples[0]:
        out["prior_items"] = prior_items_tensor([[e["prior_items"]] for e in examples])
    return out


def prior_items_tensor(rows: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """``(B, M, P)`` long from each row's examples' item lists, -1 padded on the right."""
    members = max((len(row) for row in rows), default=0)
    width = max((len(items) for row in rows for items in row), default=0)
    out = torch.full((len(rows), members, width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        for m, items in enumerate(row):
            out[b, m, :len(items)] = torch.as_tensor(list(items), dtype=torch.long)
    return out


def pack_plan(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_tokens`` tokens (best-fit decreasing).

    Examples are placed longest first (ties: lower index first), each into the open row with the
    least room that still fits it, else a new row. Deterministic; rows list indices in placement order.

    Raises:
        ValueError: an example is longer than ``max_tokens`` (naming it) or empty.
    """
    for index, length in enumerate(lengths):
        if length > max_tokens:
            raise ValueError(f"example {index} has {length} tokens, more than max_tokens={max_tokens}")
        if length <= 0:
            raise ValueError(f"example {index} is empty")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row id), sorted
    for index in order:
        slot = bisect.bisect_left(room, (lengths[index], -1))
        if slot < len(room):
            free, row = room.pop(slot)
        else:
            free, row = max_tokens, len(rows)
            rows.append([])
        rows[row].append(index)
        if free - lengths[index] > 0:
            bisect.insort(room, (free - lengths[index], row))
    return rows


class PackedDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Rows of packed examples, read lazily from the source dataset.

    Each row is ``{"input_ids", "labels", "seq_lens", "num_targets"}`` with the examples
    concatenated in plan order; ``seq_lens`` keeps their boundaries. A source with ``prior_items``
    adds them as one list per example, in the same order.
    """

    def __init__(self, source: Any, plan: list[list[int]], max_tokens: int):
        self.source, self.plan, self.max_tokens = source, plan, max_tokens

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, row: int) -> dict[str, Any]:
        members = [self.source[i] for i in self.plan[row]]
        input_ids: list[int] = []
        labels: list[int] = []
        for member in members:
            input_ids.extend(member["input_ids"])
            labels.extend(member.get("labels", member["input_ids"]))
        row_out: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": labels,
            "seq_lens": [len(m["input_ids"]) for m in members],
            "num_targets": sum(int(m.get("num_targets", 0)) for m in members),
        }
        if members and "prior_items" in members[0]:
            row_out["prior_items"] = [list(m["prior_items"]) for m in members]
        return row_out


def pack_examples(dataset: Any, max_tokens: int) -> PackedDataset:
    """Pack ``dataset`` (a ``datasets.Dataset`` or a list of example dicts) into rows of <= ``max_tokens``."""
    return PackedDataset(dataset, pack_plan(example_lengths(dataset), max_tokens), max_tokens)


def example_lengths(dataset: Any) -> list[int]:
    """Token count of every example; Arrow-side for a ``datasets.Dataset`` (no Python token lists)."""
    if hasattr(dataset, "with_format") and hasattr(dataset, "select_columns"):
        import pyarrow.compute as pc

        lengths: list[int] = []
        for batch in dataset.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=8192):
            lengths.extend(pc.list_value_length(batch["input_ids"]).to_pylist())
        return lengths
    return [len(example["input_ids"]) for example in dataset]


def packed_collate(
    rows: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    mask: str = "4d",
    mask_dtype: torch.dtype = torch.float32,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Collate packed rows into model inputs (see the module docstring for ``mask``).

    Returns:
        ``input_ids`` (B, T), ``labels`` (B, T), ``position_ids`` (B, T), and with ``mask="4d"``
        ``attention_mask`` (B, 1, T, T) of ``mask_dtype``; ``prior_items`` (B, M, P) when the rows
        carry them (M = the most examples in a row).
    """
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    if not rows:
        raise ValueError("packed_collate got an empty batch")
    width = _round_up(max(len(r["input_ids"]) for r in rows), pad_to_multiple_of)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((batch, width), dtype=torch.long)  # (B, T)
    segment_ids = torch.zeros((batch, width), dtype=torch.long)  # (B, T) example number within the row
    for row, packed in enumerate(rows):
        seq_lens = list(packed.get("seq_lens") or [len(packed["input_ids"])])
        used = sum(seq_lens)
        if used != len(packed["input_ids"]) or used != len(packed["labels"]):
            raise ValueError(f"row {row}: seq_lens sum to {used} but the row has {len(packed['input_ids'])} tokens")
        input_ids[row, :used] = torch.as_tensor(packed["input_ids"], dtype=torch.long)
        labels[row, :used] = torch.as_tensor(packed["labels"], dtype=torch.long)
        if width > used:
            seq_lens.append(width - used)  # padding is a block of its own
        start = 0
        for segment, length in enumerate(seq_lens):
            position_ids[row, start:start + length] = torch.arange(length)
            segment_ids[row, start:start + length] = segment
            labels[row, start] = IGNORE_INDEX  # never predicted from the previous example
            start += length
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if mask == "4d":
        out["attention_mask"] = block_causal_mask(segment_ids, mask_dtype)
    if "prior_items" in rows[0]:
        out["prior_items"] = prior_items_tensor([r["prior_items"] for r in rows])
    return out


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, T, T) mask letting a token see earlier tokens of its own segment only.

    Args:
        segment_ids: (B, T) segment number of each token.
        dtype: ``torch.bool`` (True = attend) or a float dtype (0 = attend, dtype min = masked).
    """
    length = segment_ids.shape[1]
    causal = torch.ones((length, length), dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    allowed = (same & causal)[:, None]  # (B, 1, T, T)
    if dtype == torch.bool:
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple
