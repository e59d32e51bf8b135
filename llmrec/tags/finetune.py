"""Training examples that teach a decoder to answer the ``interest_tags`` prompt (``train.format: interest_tags``).

One example per target position ``t`` of a user's training sequence (with
``prompt.max_examples_per_user = N > 0`` only the last N): the prompt is exactly what
:class:`llmrec.tags.generate.DecoderTagScorer` renders for the history before ``t`` (the
``interest_tags`` template, the most recent ``prompt.max_history_items`` items, the catalog's tag
vocabulary), and the completion lists the categories of item ``t`` the way the scorer reads them:
``" Drama, Thriller,"`` (each tag as :func:`llmrec.tags.generate.tag_token_ids` tokenizes it). The
loss covers the completion only. The order of the tags is shuffled per example with a seed derived
from (user, position), so each true tag is the first answer equally often: the scorer ranks tags by
their likelihood as the first answer. Targets without categories give no example.

Launch (recipe ``configs/ml100k/smollm2-tags.yaml``)::

    llmrec train --config configs/ml100k/smollm2-tags.yaml
    llmrec tags --run runs/ml100k-smollm2-tags --user 42
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import datasets

from llmrec.config import PromptConfig
from llmrec.data.schema import Catalog, UserSequence
from llmrec.io import stable_hash
from llmrec.prompts import PromptTemplate
from llmrec.serialize import prompt_adds_special_tokens
from llmrec.tags.generate import TAG_PROMPT_NUM_TAGS, tag_prompt, tag_token_ids

IGNORE_INDEX = -100  # label of tokens without loss


def answer_order(tags: Sequence[str], user_id: str, position: int) -> list[str]:
    """``tags`` in an order seeded by (user, position): stable across runs and processes."""
    order = list(tags)
    random.Random(stable_hash(f"{user_id}:{position}")).shuffle(order)
    return order


class TagExampleBuilder:
    """``interest_tags`` examples of sequences: ``(input_ids, labels, user_id, num_targets)`` rows.

    Args:
        catalog: item table (the vocabulary is ``catalog.categories()``).
        template: the ``interest_tags`` template.
        tokenizer: the decoder's tokenizer.
        cfg: prompt settings (``max_history_items``, ``max_examples_per_user``, chat format).
        max_seq_len: longest example in tokens; a longer one is an error naming the user.
    """

    def __init__(self, catalog: Catalog, template: PromptTemplate, tokenizer: Any, cfg: PromptConfig, max_seq_len: int):
        self.catalog, self.template, self.tokenizer, self.cfg = catalog, template, tokenizer, cfg
        self.max_seq_len = max_seq_len
        self.tags = catalog.categories()
        if not self.tags:
            raise ValueError("the catalog has no categories: there is no tag vocabulary to train on")
        self.index = {tag: j for j, tag in enumerate(self.tags)}
        self.add_special = prompt_adds_special_tokens(tokenizer, cfg)
        self._tag_ids: list[list[int]] | None = None  # tokenized once the prompt's last character is known

    def prompt(self, history: UserSequence) -> str:
        """The scorer's prompt for ``history``."""
        return tag_prompt(history, self.catalog, self.template, self.tokenizer, self.cfg, self.tags,
                          TAG_PROMPT_NUM_TAGS, self.cfg.max_history_items)

    def build(self, sequences: Sequence[UserSequence]) -> datasets.Dataset:
        """Every example of ``sequences`` as a Dataset with the training columns."""
        from llmrec.training.examples import Example, to_dataset

        return to_dataset([Example(ids, labels, user, n) for s in sequences for ids, labels, user, n, _ in self.examples(s)])

    def examples(self, sequence: UserSequence) -> Iterator[tuple[list[int], list[int], str, int, str]]:
        """``(input_ids, labels, user_id, 1, text)`` per target position, oldest first."""
        n, last = len(sequence), self.cfg.max_examples_per_user
        for t in range(max(1, n - last) if last > 0 else 1, n):
            categories = [c for c in self.catalog[sequence.items[t]].categories if c in self.index]
            if not categories:
                continue
            prompt = self.prompt(sequence.prefix(t))
            if self._tag_ids is None:
                self._tag_ids = tag_token_ids(self.tokenizer, self.tags, prompt.endswith((" ", "\n")))
            prompt_ids = list(self.tokenizer(prompt, add_special_tokens=self.add_special)["input_ids"])
            answer = [token for tag in answer_order(categories, sequence.user_id, t) for token in self._tag_ids[self.index[tag]]]
            input_ids = prompt_ids + answer
            if len(input_ids) > self.max_seq_len:
                raise RuntimeError(f"user {sequence.user_id}: tag example of {len(input_ids)} tokens exceeds "
                                   f"max_seq_len={self.max_seq_len}; lower prompt.max_history_items or raise train.max_seq_len")
            yield input_ids, [IGNORE_INDEX] * len(prompt_ids) + answer, sequence.user_id, 1, prompt

