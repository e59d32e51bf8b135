"""A trained run, loaded once, answering recommendation, explanation and tag queries.

Launch::

    rec = Recommender.load("runs/smollm2-lora")
    rec.recommend(user_id="42", k=10)
    rec.recommend(history=["Toy Story (1995)", "Heat (1995)"], k=5)
    rec.explain(user_id="42", item_id="50")

Queries name a user of the run's prepared dataset (their whole history is the input) or give a
history of catalog item ids or titles; titles are grounded with the run's grounding chain
(``grounding.fallback``, default exact -> fuzzy -> bm25). Nothing outside the catalog is ever
returned: the decoder's beams walk the item trie, the encoder scores catalog items only.

Policies (the same in the Python API, the CLI and the HTTP service):

* ``k`` larger than the number of rankable items (catalog minus excluded history) is *clamped*
  with a logged warning; the returned list is then shorter than ``k``. ``k < 1`` is an error.
* An unknown user or item id raises :class:`UnknownUserError` / :class:`UnknownItemError`; a title
  that grounds to nothing raises :class:`NoMatchError` with the closest candidates; an empty
  history raises :class:`RecommendError`. All are ``RecommendError`` (a ``ValueError``).
* A run whose catalog fingerprint differs from its prepared dataset's is refused at load time
  (:class:`CatalogChangedError`): its item indices would point at other items.

The loaded object implements the evaluator's protocols: a decoder run (beam search) is a
``TopKRanker``; an encoder run, a decoder run with a catalog head (``train.format: catalog``) or
one loaded with ``scoring="full_catalog"``, is a
``CatalogScorer`` (and a ``TopKRanker``), so ``evaluate(recommender, cases, N)`` works directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.explain import Explainer, Explanation
from llmrec.run_loading import LoadedRun, ScoreRanker, load_run

log = logging.getLogger(__name__)

SCORINGS = ("auto", "beam", "full_catalog", "catalog_head")
# Recommended items whose categories vote for the tags (rank-discounted).
TAG_POOL = 20
# Weight of the history's own category shares in the tag score (the co-occurrence prior).
TAG_HISTORY_WEIGHT = 0.5


class RecommendError(ValueError):
    """A query the recommender cannot answer; ``status`` is the matching HTTP status code."""

    status = 422

    def __init__(self, message: str, candidates: Sequence[dict[str, Any]] = ()):
        super().__init__(message)
        self.message = message
        self.candidates = list(candidates)  # closest catalog items, for a title that matched nothing


class UnknownUserError(RecommendError):
    status = 404


class UnknownItemError(RecommendError):
    status = 404


class NoMatchError(RecommendError):
    status = 422


@dataclass(frozen=True)
class Recommendation:
    """One recommended catalog item."""

    item_id: str
    title: str  # display title ("Heat (1995)")
    score: float  # model score: log-likelihood (decoder) or cosine similarity (encoder)
    method: str  # beam | full_catalog | two_tower
    item_index: int  # position in the catalog

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tag:
    """One interest tag (a catalog category) with its score."""

    name: str
    score: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Query:
    """One query of a batch: a user id or a history (ids or titles), not both."""

    user_id: str | None = None
    history: Sequence[str | int] | None = None


class _Ranker(Protocol):
    def rank(self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]: ...


class GroundingChain:
    """Resolves history entries to item indices: an item id, else the first confident grounder.

    Args:
        catalog: the catalog.
        grounders: grounders tried in order (``grounding.fallback``: exact, fuzzy, bm25), each
            with its own confidence threshold (``min_score``).
        candidates: closest items reported when a title matches nothing.
    """

    def __init__(self, catalog: Catalog, grounders: Sequence[Any], candidates: int = 5):
        self.catalog = catalog
        self.grounders = list(grounders)
        self.candidates = candidates

    def resolve(self, entries: Sequence[str]) -> list[int]:
        """Item index of every entry, in order; :class:`NoMatchError` names the first that fails."""
        from llmrec.grounding import NoMatch, ground_chain

        out = []
        for pos, raw in enumerate(entries):
            entry = raw.strip()
            if not entry:
                raise RecommendError(f"history entry {pos} is empty")
            if entry in self.catalog:
                out.append(self.catalog.index(entry))
                continue
            found = ground_chain(entry, self.grounders, k=self.candidates) if self.grounders else NoMatch(entry, ())
            if isinstance(found, NoMatch):
                raise NoMatchError(
                    f"history entry {pos} ({entry!r}) matches no catalog item id or title", self._describe(found.closest)
                )
            out.append(int(found.item_index))
        return out

    def _describe(self, near: Sequence[Any]) -> list[dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        for cand in near:  # grounder order: scores are on each grounder's own scale
            index = int(cand.item_index)
            if index not in seen and 0 <= index < len(self.catalog):
                item = self.catalog[index]
                seen[index] = {"item_id": item.item_id, "title": item.display_title(), "score": round(float(cand.score), 4)}
        return list(seen.values())[: self.candidates]


class Recommender:
    """Answers queries against one catalog with one model. Build it with :meth:`load`.

    Args:
        dataset: the prepared dataset the run was trained on (users' histories, catalog).
        ranker: the top-K ranker (beam search, or a :class:`ScoreRanker` over a scorer).
        method: name reported with every recommendation (beam | full_catalog | two_tower).
        explainer: the explanation generator with its faithfulness check.
        grounding: resolves history titles to catalog items.
        kind: decoder | encoder.
        run: the loaded run (None for a recommender assembled in code).
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        ranker: _Ranker,
        method: str,
        explainer: Explainer,
        grounding: GroundingChain,
        kind: str,
        run: LoadedRun | None = None,
    ):
        self.dataset = dataset
        self.catalog: Catalog = dataset.catalog
        self.ranker = ranker
        self.method = method
        self.explainer = explainer
        self.grounding = grounding
        self.kind = kind
        self.run = run
        self._num_users = int(dataset.interactions["user_id"].nunique())

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device | None = None, scoring: str = "auto",
             overrides: Sequence[str] = ()) -> Recommender:
        """Load a run directory (decoder or encoder) with its dataset, model and prompts.

        Args:
            run_dir: the run directory written by training.
            device: torch device (None: CUDA when available, else CPU).
            scoring: ``auto`` (decoder: beam search, or its catalog head for a ``train.format:
                catalog`` run; encoder: catalog scores), ``beam``, ``full_catalog`` (decoder: exact
                log-likelihood of every item, a ``CatalogScorer``) or ``catalog_head``.
            overrides: ``key.sub=value`` inference settings of the run to change for this load
                (e.g. ``prompt.max_history_items=40``; see ``run_loading.INFERENCE_OVERRIDES``).

        Raises:
            FileNotFoundError / ValueError: a missing or malformed run file, named.
            CatalogChangedError: the dataset's catalog changed since training.
        """
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        run = load_run(run_dir, device=device, scoring=scoring, overrides=overrides)
        recommender_cls = ScoringRecommender if isinstance(run.ranker, ScoreRanker) else RankingRecommender
        grounding = GroundingChain(run.dataset.catalog, [g for _, g in run.grounders])
        return recommender_cls(run.dataset, run.ranker, run.method, run.explainer, grounding, run.info.kind, run)

    # ---- queries -------------------------------------------------------------------------

    def item(self, item_id: str | int) -> Item:
        """The catalog item ``item_id``; :class:`UnknownItemError` when there is none."""
        return self.catalog[self._item_index(item_id)]

    def history_for(self, user_id: str | int | None = None, history: Sequence[str | int] | None = None) -> UserSequence:
        """The input sequence of a query: the user's whole history, or the given items in order."""
        if (user_id is None) == (history is None):
            raise RecommendError("give exactly one of user_id or history")
        if user_id is not None:
            try:
                return self.dataset.user_sequence(str(user_id))
            except KeyError:
                raise UnknownUserError(f"user id {str(user_id)!r} is not in the run's dataset") from None
        assert history is not None
        if isinstance(history, str | bytes):
            raise RecommendError("history must be a list of item ids or titles, not one string")
        if not history:
            raise RecommendError("history is empty: give at least one item id or title")
        indices = self.grounding.resolve([str(entry) for entry in history])
        n = len(indices)
        return UserSequence("<query>", tuple(indices), tuple(range(n)), ("rate",) * n, (None,) * n)

    def recommend(
        self,
        user_id: str | int | None = None,
        history: Sequence[str | int] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
    ) -> list[Recommendation]:
        """Top-``k`` catalog items for one user id or one history, best first."""
        return self.recommend_batch([Query(None if user_id is None else str(user_id), history)], k, exclude_seen)[0]

    def recommend_batch(self, queries: Sequence[Query], k: int = 10, exclude_seen: bool = True) -> list[list[Recommendation]]:
        """Top-``k`` lists for several queries in one model call (one list per query)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RecommendError(f"k must be a positive integer, got {k!r}")
        if not queries:
            return []
        sequences = [self.history_for(q.user_id, q.history) for q in queries]
        exclude = [set(s.items) if exclude_seen else set() for s in sequences]
        rankable = min(len(self.catalog) - len(e) for e in exclude)
        if rankable <= 0:
            raise RecommendError("every catalog item is in the history: nothing is left to recommend")
        k_used = min(k, rankable)
        if k_used < k:
            log.warning("k=%d is more than the %d rankable items; returning %d", k, rankable, k_used)
        with torch.inference_mode():
            items, scores = self.ranker.rank(sequences, k_used, exclude)
        return [self._to_recommendations(row_items, row_scores) for row_items, row_scores in zip(items.tolist(), scores.tolist(), strict=True)]

    def explain(
        self, user_id: str | int | None = None, history: Sequence[str | int] | None = None, *, item_id: str | int
    ) -> Explanation:
        """Why ``item_id`` suits this user, checked for faithfulness (see :mod:`llmrec.explain`)."""
        sequence = self.history_for(user_id, history)
        return self.explainer.explain(sequence, self._item_index(item_id))

    def tags(
        self, user_id: str | int | None = None, history: Sequence[str | int] | None = None, k: int = 10
    ) -> list[Tag]:
        """The user's top-``k`` interest tags (catalog categories).

        With no tag head in the run, a category's score is the rank-discounted (1/log2(rank+2))
        count of the top :data:`TAG_POOL` recommended items that have it, plus
        :data:`TAG_HISTORY_WEIGHT` times the share of history items that have it; both parts are
        scaled to [0, 1] first. Method name: ``category_of_recommended``.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RecommendError(f"k must be a positive integer, got {k!r}")
        sequence = self.history_for(user_id, history)
        recs = self.recommend_batch([Query(history=[self.catalog[i].item_id for i in sequence.items])], TAG_POOL)[0]
        from_recs: dict[str, float] = {}
        for rank, rec in enumerate(recs):
            for category in self.catalog[rec.item_index].categories:
                from_recs[category] = from_recs.get(category, 0.0) + 1.0 / math.log2(rank + 2)
        history_share: dict[str, float] = {}
        for index in sequence.items:
            for category in self.catalog[index].categories:
                history_share[category] = history_share.get(category, 0.0) + 1.0 / len(sequence)
        top_recs = max(from_recs.values(), default=1.0)
        top_hist = max(history_share.values(), default=1.0)
        scores = {
            c: from_recs.get(c, 0.0) / top_recs + TAG_HISTORY_WEIGHT * history_share.get(c, 0.0) / top_hist
            for c in set(from_recs) | set(history_share)
        }
        ranked = sorted(scores.items(), key=lambda p: (-p[1], p[0]))[:k]
        return [Tag(name, round(score, 6), "category_of_recommended") for name, score in ranked]

    def info(self) -> dict[str, Any]:
        """What is loaded (for ``/health`` and logs); no file system paths."""
        return {
            "kind": self.kind,
            "method": self.method,
            "run": self.run.info.path.name if self.run else None,
            "base_model": Path(self.run.info.base_model).name if self.run else None,
            "catalog_size": len(self.catalog),
            "users": self._num_users,
            "explain_path": "generated" if self.explainer.generate is not None else "template_fallback",
        }

    # ---- helpers -------------------------------------------------------------------------

    def _item_index(self, item_id: str | int) -> int:
        try:
            return self.catalog.index(str(item_id))
        except KeyError:
            raise UnknownItemError(f"item id {str(item_id)!r} is not in the catalog ({len(self.catalog)} items)") from None

    def _to_recommendations(self, items: list[int], scores: list[float]) -> list[Recommendation]:
        out = []
        for index, score in zip(items, scores, strict=True):
            if index < 0:  # padding: fewer reachable items than k
                continue
            if index >= len(self.catalog):
                raise RuntimeError(f"the model returned item index {index}, outside the catalog (N={len(self.catalog)})")
            item = self.catalog[index]
            out.append(Recommendation(item.item_id, item.display_title(), float(score), self.method, index))
        return out


class RankingRecommender(Recommender):
    """A recommender that only ranks its own top K (decoder beam search): a ``TopKRanker``."""

    def rank(self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``TopKRanker.rank``: (B, k) item indices and scores, padded with -1 / -inf."""
        return self.ranker.rank(histories, k, exclude)


class ScoringRecommender(RankingRecommender):
    """A recommender that scores the whole catalog: a ``CatalogScorer`` (and a ``TopKRanker``)."""

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        """``CatalogScorer.score``: (B, N) scores in item-index order."""
        assert isinstance(self.ranker, ScoreRanker)
        return self.ranker.scorer.score(histories)
