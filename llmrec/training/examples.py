"""Training examples for decoder fine-tuning, as a tokenized (and cached) ``datasets.Dataset``.

Columns: ``input_ids`` (list[int]), ``labels`` (list[int], -100 where there is no loss; labels are
*not* shifted, the model shifts them), ``user_id`` (str), ``num_targets`` (items with loss),
``prior_items`` (list[int], ``catalog`` only).

Four formats (``fmt``):

* ``prompt_completion``: one example per target position ``t`` of a user's training sequence
  (``t >= 1``; with ``prompt.max_examples_per_user = N > 0`` only the last N), the prompt is the
  serialized history before ``t`` (exactly :func:`llmrec.serialize.serialize_sequence`), the loss
  covers the completion only (title + end marker), so training matches inference token for token.
* ``item_span``: the history itself as one sequence, ``prefix + line_1 + ... + line_k``, with loss
  on every item line but the first (the markers, if the template has any, carry no loss). A causal
  LM predicts each line from the lines before it only. A long history is cut into **windows**,
  most recent first, each with the prefix and each at most ``max_history_items`` items and
  ``min(max_history_tokens, max_seq_len - prefix)`` tokens (the budget a prompt has at inference).
  Consecutive windows overlap by one item: window ``[a, b)`` is followed by ``[a', a + 1)``, so
  every event but the user's first gets a loss exactly once, always with at least one item of
  context. ``prompt.max_examples_per_user = N > 0`` keeps the N most recent windows.
  ``prompt.window_shifts = S > 1`` cuts each history S times, cut ``j`` starting with a most recent
  window shorter by ``j * max_history_items // S`` items, so the window boundaries (and which
  events open a window with no context) move between cuts: every event but the first gets a loss
  S times, each time in a different window (but a history short enough to fit whole in the first
  window of several cuts, which then repeats). The windows of all cuts form one set of examples
  (one epoch over it does the work of S epochs over one cut).
* ``catalog``: the windows of ``item_span``, but each line after the window's first carries one
  label, the item's **catalog index**, on its first token: the position before it (the previous
  line's newline) is trained to pick the item out of the whole catalog with the catalog head
  (:mod:`llmrec.modeling.catalog_head`), which replaces the vocabulary for this format. Column
  ``prior_items`` holds the catalog indices of the user's items before the window's first labelled
  line (the window's first line and everything before the window), for
  ``catalog_head.mask_scope: user``; it is empty in the other formats.
* ``interest_tags``: the ``interest_tags`` prompt before position ``t`` and the categories of item
  ``t`` as the answer (:mod:`llmrec.tags.finetune`), to fine-tune the decoder tag head.

Only the ``train`` split is read (``dataset.sequences(("train",))``); a check that the events used
are exactly the train rows guards against validation/test targets leaking into training.

Caching: ``cache_dir/<key>`` where the key hashes the dataset checksums, the template text, the
tokenizer (name + vocabulary), the prompt config, the format and ``max_seq_len``; written with
``save_to_disk`` into a temporary directory that is renamed into place, read back with
``load_from_disk``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from llmrec.config import PromptConfig, comparable
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import UserSequence
from llmrec.io import sha256_file, stable_hash, write_json
from llmrec.prompts import PromptError, PromptTemplate, load_template
from llmrec.serialize import (
    HistoryLines,
    assemble,
    chat_frame,
    special_prefix,
    target_item,
    token_ids,
    uses_chat,
)

if TYPE_CHECKING:
    from llmrec.tags.finetune import TagExampleBuilder

EXAMPLE_FORMATS = ("item_span", "catalog", "prompt_completion", "interest_tags")
IGNORE_INDEX = -100  # label of tokens without loss (the value transformers' loss ignores)
EXAMPLES_VERSION = 2  # bump when the example layout changes, so old caches are not reused
FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "user_id": datasets.Value("string"),
        "num_targets": datasets.Value("int32"),
        "prior_items": datasets.List(datasets.Value("int32")),
    }
)
_CHUNK = 4096  # examples per Arrow chunk while building


@dataclass
class Example:
    """One training sequence; ``text`` is kept only to check tokenization, never stored."""

    input_ids: list[int]
    labels: list[int]
    user_id: str
    num_targets: int
    text: str | None = None
    prior_items: list[int] = field(default_factory=list)  # catalog: the user's items before the first labelled line


def build_examples(
    dataset: PreparedDataset,
    tokenizer: Any,
    cfg: PromptConfig,
    fmt: str,
    max_seq_len: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> datasets.Dataset:
    """Tokenized training examples from the train split of ``dataset`` (see the module docstring).

    Raises:
        ValueError: unknown ``fmt``; PromptError: template, chat or length problems.
    """
    if fmt not in EXAMPLE_FORMATS:
        raise ValueError(f"fmt must be one of {EXAMPLE_FORMATS}, got {fmt!r}")
    template = load_template(cfg.template, cfg.prompts_dir)
    key = examples_cache_key(dataset, template, tokenizer, cfg, fmt, max_seq_len)
    target = Path(cache_dir) / key if cache_dir is not None else None
    if target is not None and (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    built = make_builder(dataset, template, tokenizer, cfg, max_seq_len, fmt).build(training_sequences(dataset))
    if target is None:
        return built
    meta = {"key": key, "format": fmt, "max_seq_len": max_seq_len, "template": template.name,
            "tokenizer": getattr(tokenizer, "name_or_path", ""), "dataset": str(dataset.root), "rows": len(built)}
    return save_atomically(built, target, meta)


def make_builder(dataset: PreparedDataset, template: PromptTemplate, tokenizer: Any, cfg: PromptConfig, max_seq_len: int,
                 fmt: str) -> ExampleBuilder | TagExampleBuilder:
    """The builder of ``fmt``: :class:`ExampleBuilder` for sequence formats, the tag builder for ``interest_tags``."""
    if fmt == "interest_tags":
        from llmrec.tags.finetune import TagExampleBuilder

        return TagExampleBuilder(dataset.catalog, template, tokenizer, cfg, max_seq_len)
    return ExampleBuilder(dataset, template, tokenizer, cfg, max_seq_len, fmt)


def training_sequences(dataset: PreparedDataset) -> list[UserSequence]:
    """The train-split sequences, checked to hold exactly the dataset's train rows."""
    sequences = dataset.sequences(("train",))
    train_rows = int((dataset.interactions["split"] == "train").sum())
    used = sum(len(s) for s in sequences)
    if used != train_rows:
        raise RuntimeError(f"training sequences hold {used} events but {dataset.root} has {train_rows} train rows")
    return sequences


class ExampleBuilder:
    """Turns training sequences into examples of one format (plain arguments, no I/O)."""

    def __init__(self, dataset: PreparedDataset, template: PromptTemplate, tokenizer: Any, cfg: PromptConfig, max_seq_len: int, fmt: str):
        if not template.is_sequence:
            raise PromptError(f"template {template.name} ({template.path}) cannot build training examples: it is not a sequence template")
        self.catalog = dataset.catalog
        self.template, self.tokenizer, self.cfg, self.fmt = template, tokenizer, cfg, fmt
        self.max_seq_len = max_seq_len
        chat = uses_chat(tokenizer, cfg)
        if chat and fmt in ("item_span", "catalog"):
            raise PromptError(f"{fmt} examples need plain prompts (prompt.chat_format: plain); use prompt_completion with chat")
        self.frame = chat_frame(tokenizer) if chat else None
        self.bos = [] if chat else list(special_prefix(tokenizer))
        head = (self.frame[0] if self.frame else "") + template.prefix()
        self.fixed = len(self.bos) + len(token_ids(tokenizer, [head])[0])
        tail = (self.frame[1] if self.frame else "") + template.marker(cfg.max_history_items + 1)
        self.tail_max = len(token_ids(tokenizer, [tail])[0]) if tail else 0
        if self.fixed + self.tail_max >= max_seq_len:
            raise PromptError(f"max_seq_len={max_seq_len} leaves no room for history: the prompt frame alone takes {self.fixed + self.tail_max} tokens")

    def build(self, sequences: Sequence[UserSequence]) -> datasets.Dataset:
        """All examples of ``sequences`` as a Dataset (tokenization checked once per user)."""
        chunks, rows, checks = [], [], []
        for sequence in sequences:
            examples = list(self.examples(sequence))
            if examples:
                checks.append(examples[-1] if self.fmt == "prompt_completion" else examples[0])
            rows.extend(examples)
            if len(rows) >= _CHUNK:
                chunks.append(to_dataset(rows))
                rows = []
            if len(checks) >= 256:
                self.check_tokenization(checks)
                checks = []
        self.check_tokenization(checks)
        if rows or not chunks:
            chunks.append(to_dataset(rows))
        return datasets.concatenate_datasets(chunks) if len(chunks) > 1 else chunks[0]

    def examples(self, sequence: UserSequence) -> Iterator[Example]:
        if self.fmt == "prompt_completion":
            return self.prompt_completion(sequence)
        return self.item_span(sequence)

    def prompt_completion(self, sequence: UserSequence) -> Iterator[Example]:
        """One example per target position: serialized history before it + its completion."""
        history = HistoryLines(sequence, self.catalog, self.template, self.tokenizer, self.cfg)
        n, last = len(sequence), self.cfg.max_examples_per_user
        for t in range(max(1, n - last) if last > 0 else 1, n):
            completion = self.template.completion(target_item(self.catalog[sequence.items[t]], self.cfg))
            completion_ids = list(token_ids(self.tokenizer, [completion])[0])
            budget = min(self.cfg.max_history_tokens, self.max_seq_len - self.fixed - self.tail_max - len(completion_ids))
            if budget < 0:
                raise PromptError(f"max_seq_len={self.max_seq_len} is too small for the completion {completion!r}")
            start, lines = history.window(t, self.cfg.max_history_items, budget)
            prompt = assemble(self.template, start, t, lines, 0, self.frame)
            prompt_ids = self.bos + _concat(token_ids(self.tokenizer, [s.text for s in prompt.segments]))
            input_ids = prompt_ids + completion_ids
            labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
            self._check_length(input_ids, sequence.user_id)
            yield Example(input_ids, labels, sequence.user_id, 1, prompt.text + completion)

    def item_span(self, sequence: UserSequence) -> Iterator[Example]:
        """Windows of the history, most recent first, for each of the ``window_shifts`` cuts."""
        history = HistoryLines(sequence, self.catalog, self.template, self.tokenizer, self.cfg)
        for shift in window_shift_sizes(self.cfg.max_history_items, self.cfg.window_shifts):
            yield from self.item_span_cut(sequence, history, shift)

    def item_span_cut(self, sequence: UserSequence, history: HistoryLines, shift: int) -> Iterator[Example]:
        """One cut into windows, the most recent ``shift`` items shorter; loss on each line but the
        window's first (its tokens, or for ``catalog`` its item index on its first token)."""
        budget = min(self.cfg.max_history_tokens, self.max_seq_len - self.fixed)
        end, emitted, most = len(sequence), 0, self.cfg.max_examples_per_user
        while end >= 2 and (most <= 0 or emitted < most):
            size = self.cfg.max_history_items - shift if emitted == 0 else self.cfg.max_history_items
            start, lines = history.window(end, size, budget)
            if end - start < 2:  # the latest item cannot share a window with any context: skip it
                end -= 1
                continue
            segments = assemble(self.template, start, end, lines, 0, None).segments[:-1]  # no answer marker
            pieces = token_ids(self.tokenizer, [s.text for s in segments])
            input_ids, labels = list(self.bos), [IGNORE_INDEX] * len(self.bos)
            for segment, ids in zip(segments, pieces, strict=True):
                input_ids.extend(ids)
                has_loss = segment.kind == "item" and segment.position > start
                if not has_loss:
                    labels.extend([IGNORE_INDEX] * len(ids))
                elif self.fmt == "catalog":  # the item itself, at the line's first token
                    labels.extend([sequence.items[segment.position]] + [IGNORE_INDEX] * (len(ids) - 1))
                else:
                    labels.extend(ids)
            self._check_length(input_ids, sequence.user_id)
            prior = list(sequence.items[:start + 1]) if self.fmt == "catalog" else []
            yield Example(input_ids, labels, sequence.user_id, end - start - 1, "".join(s.text for s in segments), prior)
            emitted += 1
            end = start + 1

    def check_tokenization(self, examples: Sequence[Example]) -> None:
        """Piecewise (cached) token ids must equal tokenizing the whole text at once.

        This holds when every piece boundary is a pre-tokenizer boundary (pieces end in a newline);
        a template whose pieces merge across boundaries is reported here instead of training on
        token sequences that inference would never produce.
        """
        if not examples:
            return
        texts = [e.text or "" for e in examples]
        joint = self.tokenizer(texts, add_special_tokens=self.frame is None)["input_ids"]
        for example, ids in zip(examples, joint, strict=True):
            if list(ids) != example.input_ids:
                at = next((i for i, (a, b) in enumerate(zip(ids, example.input_ids, strict=False)) if a != b), min(len(ids), len(example.input_ids)))
                context = self.tokenizer.decode(example.input_ids[max(0, at - 8):at + 8])
                raise PromptError(
                    f"template {self.template.name} ({self.template.path}): tokenizing the prompt piece by piece differs from "
                    f"tokenizing it whole at token {at} (near {context!r}, user {example.user_id}); end every piece "
                    "(prefix, marker, line) at a token boundary such as a single newline"
                )

    def _check_length(self, input_ids: list[int], user_id: str) -> None:
        if len(input_ids) > self.max_seq_len:
            raise RuntimeError(f"user {user_id}: example of {len(input_ids)} tokens exceeds max_seq_len={self.max_seq_len}")


def window_shift_sizes(max_items: int, shifts: int) -> list[int]:
    """How much shorter the most recent window of each cut is: ``j * max_items // shifts``, j < shifts.

    Raises:
        ValueError: ``shifts`` cuts that would not all differ, or leave a first window under two
            items (``max_items < shifts + 1``; :meth:`llmrec.config.RunConfig.validate` says so first).
    """
    if shifts <= 1:
        return [0]
    if max_items < shifts + 1:
        raise ValueError(f"window_shifts={shifts} needs max_history_items >= {shifts + 1}, got {max_items}")
    return [j * max_items // shifts for j in range(shifts)]


def _concat(pieces: Sequence[Sequence[int]]) -> list[int]:
    out: list[int] = []
    for ids in pieces:
        out.extend(ids)
    return out


def to_dataset(rows: Sequence[Example]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "input_ids": [r.input_ids for r in rows],
            "labels": [r.labels for r in rows],
            "user_id": [r.user_id for r in rows],
            "num_targets": [r.num_targets for r in rows],
            "prior_items": [r.prior_items for r in rows],
        },
        features=FEATURES,
    )


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, str]:
    """Name, class and a hash of the vocabulary, special tokens and chat template of ``tokenizer``."""
    vocab = sorted(tokenizer.get_vocab().items())
    record = [vocab, list(special_prefix(tokenizer)), str(getattr(tokenizer, "chat_template", None) or "")]
    digest = hashlib.sha256(json.dumps(record, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"name": str(getattr(tokenizer, "name_or_path", "")), "class": type(tokenizer).__name__, "vocab_sha256": digest}


def dataset_checksums(dataset: PreparedDataset) -> dict[str, str]:
    """The manifest's file checksums, or fresh ones when the manifest has none."""
    sums = dataset.manifest.get("checksums")
    if sums:
        return dict(sums)
    return {name: sha256_file(dataset.root / name) for name in ("interactions.parquet", "catalog.parquet") if (dataset.root / name).is_file()}


def examples_cache_key(dataset: PreparedDataset, template: PromptTemplate, tokenizer: Any, cfg: PromptConfig, fmt: str, max_seq_len: int) -> str:
    """Stable hash of everything that determines the examples."""
    # fields added later are left out at their default, so caches built before them stay valid
    settings = comparable({"prompt": dataclasses.asdict(cfg)})["prompt"]
    settings.pop("prompts_dir", None)  # the template text is hashed instead of where it lives
    return stable_hash(
        {
            "version": EXAMPLES_VERSION,
            "data": dataset_checksums(dataset),
            "catalog": dataset.fingerprint,
            "template": template.source,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "prompt": settings,
            "format": fmt,
            "max_seq_len": max_seq_len,
        },
        length=20,
    )


def save_atomically(built: datasets.Dataset, target: Path, meta: dict[str, Any]) -> datasets.Dataset:
    """``save_to_disk`` into a temporary directory beside ``target``, then rename it into place.

    When another process renamed its copy first, ours is discarded and theirs is loaded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        built.save_to_disk(str(tmp))
        write_json(tmp / "llmrec_examples.json", meta)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "dataset_info.json").is_file():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return datasets.load_from_disk(str(target))
