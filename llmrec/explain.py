"""Explanations of a recommendation that only cite what is true of the user's history.

``Explainer.explain(history, item)``:

1. With a decoder, render the run's ``explain`` template and generate (greedy first, then sampled
   with a new seed on each retry, at most ``max_tries``).
2. Check every generation with :func:`llmrec.faithfulness.check_faithfulness`: it may name only
   history items, the recommended item, and their categories. Rejected texts are kept, with the
   reason, in ``Explanation.rejected``.
3. If no generation passes (or the run has no decoder, e.g. an encoder run), build a *template*
   explanation from the real overlap: the categories the item shares with the history and the most
   similar history items. It is flagged in its text and by ``path="template_fallback"``.

Similarity of history items to the recommended item comes from item embeddings when the run has
them (the two-tower item tower, or mean-pooled decoder hidden states of the titles); otherwise from
category Jaccard. ``Evidence.similarity_method`` says which one was used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from llmrec.data.schema import Catalog, UserSequence
from llmrec.faithfulness import CategoryMatcher, TitleMatcher, check_faithfulness

TEMPLATE_FLAG = "[template explanation]"
# A generation with fewer words than this (e.g. punctuation only) is not an explanation.
MIN_WORDS = 3
_WORD = re.compile(r"[^\W\d_]{2,}")
# Items an explanation cites as evidence (the most similar history items).
EVIDENCE_ITEMS = 3
# (history item indices, recommended item index) -> cosine similarity of each history item.
Similarity = Callable[[Sequence[int], int], list[float]]
# (history, recommended item index, seed or None for greedy) -> generated text.
Generate = Callable[[UserSequence, int, int | None], str]


@dataclass
class Evidence:
    """The real overlap between a history and a recommended item."""

    history_items: list[str]  # item ids of the most similar history items, most similar first
    shared_categories: list[str]  # categories of the recommended item that the history also has
    similarities: list[dict[str, Any]]  # {"item_id", "title", "similarity"} for those items
    similarity_method: str  # embedding method name, or "category_jaccard"


@dataclass
class Explanation:
    """An explanation and how it was obtained."""

    text: str
    path: Literal["generated", "template_fallback"]
    tries: int  # generations attempted (0 when the run has no decoder)
    evidence: Evidence
    rejected: list[str] = field(default_factory=list)  # one line per rejected generation
    note: str | None = None  # why the template path was used, when it was

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def category_jaccard(catalog: Catalog) -> Similarity:
    """Similarity of two items as the Jaccard index of their category sets."""

    def similarity(history: Sequence[int], item: int) -> list[float]:
        target = set(catalog[item].categories)
        out = []
        for index in history:
            cats = set(catalog[index].categories)
            union = cats | target
            out.append(len(cats & target) / len(union) if union else 0.0)
        return out

    return similarity


def embedding_similarity(embed: Callable[[Sequence[int]], torch.Tensor]) -> Similarity:
    """Cosine similarity from ``embed(item_indices) -> (n, d)`` item embeddings."""

    def similarity(history: Sequence[int], item: int) -> list[float]:
        if not history:
            return []
        vectors = embed([*history, item]).float()  # (H + 1, d)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return (vectors[:-1] @ vectors[-1]).tolist()

    return similarity


def gather_evidence(
    history: Sequence[int], item: int, catalog: Catalog, similarity: Similarity, method: str
) -> Evidence:
    """Shared categories and the :data:`EVIDENCE_ITEMS` most similar distinct history items.

    Ties in similarity go to the more recent history item.
    """
    distinct = list(dict.fromkeys(i for i in history if i != item))
    values = similarity(distinct, item) if distinct else []
    recency = {index: pos for pos, index in enumerate(distinct)}
    ranked = sorted(zip(distinct, values, strict=True), key=lambda p: (-p[1], -recency[p[0]]))
    top = ranked[:EVIDENCE_ITEMS]
    history_counts = Counter(c for i in distinct for c in catalog[i].categories)
    shared = [c for c in catalog[item].categories if history_counts[c] > 0]
    shared.sort(key=lambda c: -history_counts[c])
    return Evidence(
        history_items=[catalog[i].item_id for i, _ in top],
        shared_categories=shared,
        similarities=[
            {"item_id": catalog[i].item_id, "title": catalog[i].display_title(), "similarity": round(float(s), 4)}
            for i, s in top
        ],
        similarity_method=method,
    )


def template_text(item: int, evidence: Evidence, catalog: Catalog) -> str:
    """A flagged explanation that states only the overlap in ``evidence``."""
    text = f"{TEMPLATE_FLAG} We recommend {catalog[item].display_title()}"
    reasons = []
    if evidence.shared_categories:
        reasons.append(f"like your history it is {_join(evidence.shared_categories[:3])}")
    # Only items with a positive similarity are "close"; a zero category overlap is no reason.
    similar = [catalog.get(s["item_id"]).display_title() for s in evidence.similarities if s["similarity"] > 0]
    if similar:
        reasons.append(f"it is closest to {_join(similar)}, which you watched")
    if not reasons:
        return text + ", although it shares no category with your history."
    return f"{text} because {' and '.join(reasons)}."


def _join(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


class Explainer:
    """Generates explanations, checks their faithfulness, and falls back to a template.

    Args:
        catalog: the catalog item indices refer to.
        generate: the decoder's text generator, or None when the run has no decoder.
        similarity: item similarity used for the evidence.
        similarity_method: name of ``similarity`` (reported in the evidence).
        max_tries: generations attempted before the template fallback.
        no_generator_note: why there is no generator (reported with every template explanation).
    """

    def __init__(
        self,
        catalog: Catalog,
        generate: Generate | None,
        similarity: Similarity | None = None,
        similarity_method: str = "category_jaccard",
        max_tries: int = 3,
        no_generator_note: str | None = None,
    ):
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.catalog = catalog
        self.generate = generate
        self.similarity = similarity or category_jaccard(catalog)
        self.similarity_method = similarity_method if similarity is not None else "category_jaccard"
        self.max_tries = max_tries
        self.no_generator_note = no_generator_note or "no decoder is loaded: template explanation from the real overlap"
        self.titles = TitleMatcher(catalog)
        self.categories = CategoryMatcher(catalog.categories())

    def explain(self, history: UserSequence, item: int) -> Explanation:
        """Explain recommending item index ``item`` to a user with ``history``."""
        if not 0 <= item < len(self.catalog):
            raise IndexError(f"item index {item} is outside the catalog ({len(self.catalog)} items)")
        evidence = gather_evidence(history.items, item, self.catalog, self.similarity, self.similarity_method)
        if self.generate is None:
            text = template_text(item, evidence, self.catalog)
            return Explanation(text, "template_fallback", 0, evidence, [], self.no_generator_note)
        rejected: list[str] = []
        for attempt in range(self.max_tries):
            seed = None if attempt == 0 else attempt  # greedy first, then sampled with a new seed
            text = self.generate(history, item, seed).strip()
            reasons = self.reasons(text, history.items, item)
            if not reasons:
                return Explanation(text, "generated", attempt + 1, evidence, rejected)
            rejected.append(f"try {attempt + 1}: " + "; ".join(reasons))
        note = f"no generation out of {self.max_tries} passed the faithfulness check"
        return Explanation(
            template_text(item, evidence, self.catalog), "template_fallback", self.max_tries, evidence, rejected, note
        )

    def reasons(self, text: str, history: Sequence[int], item: int) -> list[str]:
        """Why ``text`` is not an acceptable explanation (empty list when it is)."""
        words = _WORD.findall(text)
        if len(words) < MIN_WORDS:
            return [f"not an explanation: {len(words)} word(s) with letters, fewer than {MIN_WORDS}"]
        report = check_faithfulness(
            text, history, item, self.catalog, titles=self.titles, category_matcher=self.categories
        )
        return report.reasons


@torch.inference_mode()
def generate_text(
    model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, seed: int | None,
    temperature: float = 0.8, add_special_tokens: bool = False,
) -> str:
    """Continue ``prompt`` with a causal LM: greedy when ``seed`` is None, else seeded sampling."""
    device = next(model.parameters()).device
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(device)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if seed is None:
        kwargs["do_sample"] = False
    else:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
    output = model.generate(**encoded, **kwargs)  # (1, prompt + new)
    new_tokens = output[0, encoded["input_ids"].shape[1]:]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True))


def decoder_item_embedder(model: Any, tokenizer: Any, catalog: Catalog, batch_size: int = 32) -> Callable[[Sequence[int]], torch.Tensor]:
    """Item embeddings from the decoder itself: last hidden state mean-pooled over the title tokens.

    The vectors are :func:`~llmrec.modeling.catalog_head.hidden_title_vectors` of the display
    titles (the catalog head's ``title_source: hidden`` reads titles the same way), cached per item
    index, so repeated explanations of one user are cheap.
    """
    from llmrec.modeling.catalog_head import hidden_title_vectors

    cache: dict[int, torch.Tensor] = {}

    def embed(indices: Sequence[int]) -> torch.Tensor:
        missing = [i for i in dict.fromkeys(indices) if i not in cache]
        if missing:
            titles = [catalog[i].display_title() for i in missing]
            vectors = hidden_title_vectors(model, tokenizer, titles, batch_size=batch_size)
            cache.update(zip(missing, vectors, strict=True))
        return torch.stack([cache[i] for i in indices]) if indices else torch.zeros(0, 1)

    return embed

