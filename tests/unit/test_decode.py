"""Trie-constrained beam search and the exact catalog scorer against the slow teacher-forcing reference."""

from __future__ import annotations

import pytest
import torch

from llmrec.data.schema import UserSequence
from llmrec.evaluation.protocol import CatalogScorer, TopKRanker
from llmrec.generation.decode import (
    ConstrainedBeamRanker,
    FullCatalogScorer,
    catalog_log_likelihood,
    constrained_beam_search,
    reference_log_likelihood,
)
from llmrec.generation.trie import build_item_trie, build_trie, tokenize_completions
from tests.tiny import FIXTURE_TITLES, tiny_gpt2, tiny_llama

COMPLETIONS = [title + "\n" for title in FIXTURE_TITLES]
PROMPTS = [
    "The user watched these movies in order.\nHeat (1995)\nCasablanca (1942)\nNext movie:\n",
    "Toy Story (1995)\nNext movie:\n",
    "Alien (1979)\nAliens (1986)\nFargo (1996)\nScream (1996)\nJaws (1975)\nRocky (1976)\nNext movie:\n",
]
EXCLUDE = [{FIXTURE_TITLES.index("Heat (1995)"), FIXTURE_TITLES.index("Casablanca (1942)")},
           {FIXTURE_TITLES.index("Toy Story (1995)")}, {0, 1, 2, 3, 4, 17, 18}]


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    trie = build_item_trie(COMPLETIONS, tiny_tokenizer)
    model = tiny_llama(len(tiny_tokenizer), seed=3).eval()
    paths = tokenize_completions(COMPLETIONS, tiny_tokenizer)
    reference = reference_log_likelihood(model, tiny_tokenizer, PROMPTS, paths)
    return tiny_tokenizer, trie, model, reference


def _reference_top_k(reference: torch.Tensor, exclude, k: int, lengths=None):
    scores = reference.clone() if lengths is None else reference / lengths
    for row, items in enumerate(exclude):
        scores[row, list(items)] = float("-inf")
    # best first, ties by item index (stable sort of a descending key)
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return order, scores.gather(1, order)


def test_catalog_log_likelihood_equals_teacher_forcing(setup):
    tokenizer, trie, model, reference = setup
    exact = catalog_log_likelihood(model, tokenizer, PROMPTS, trie, chunk_nodes=64)
    assert exact.shape == (len(PROMPTS), len(COMPLETIONS))
    torch.testing.assert_close(exact, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 10])
def test_exhaustive_beam_search_equals_full_ranking(setup, k):
    tokenizer, trie, model, reference = setup
    items, scores = constrained_beam_search(
        model, tokenizer, PROMPTS, trie, top_k=k, num_beams=trie.num_items, exclude=EXCLUDE
    )
    want_items, want_scores = _reference_top_k(reference, EXCLUDE, k)
    assert torch.equal(items, want_items)
    torch.testing.assert_close(scores, want_scores, atol=1e-4, rtol=1e-4)
    for row, excluded in enumerate(EXCLUDE):
        assert not set(items[row].tolist()) & excluded


def test_length_normalized_exhaustive_search_matches_normalized_reference(setup):
    tokenizer, trie, model, reference = setup
    lengths = trie.depth[trie.item_terminal].float()
    items, _ = constrained_beam_search(
        model, tokenizer, PROMPTS, trie, top_k=5, num_beams=trie.num_items, length_normalize=True
    )
    want_items, _ = _reference_top_k(reference, [set()] * len(PROMPTS), 5, lengths)
    assert torch.equal(items, want_items)


@pytest.mark.parametrize("num_beams", [1, 3, 10])
def test_narrow_beams_return_valid_distinct_unexcluded_items(setup, num_beams):
    tokenizer, trie, model, reference = setup
    k = min(num_beams, 5)
    items, scores = constrained_beam_search(
        model, tokenizer, PROMPTS, trie, top_k=k, num_beams=num_beams, exclude=EXCLUDE
    )
    assert items.shape == (len(PROMPTS), k)
    for row in range(len(PROMPTS)):
        got = items[row].tolist()
        assert all(0 <= i < len(COMPLETIONS) for i in got)
        assert len(set(got)) == k
        assert not set(got) & EXCLUDE[row]
        # each returned score is that item's true likelihood, and the list is sorted
        torch.testing.assert_close(scores[row], reference[row, got], atol=1e-4, rtol=1e-4)
        assert torch.all(scores[row][:-1] >= scores[row][1:])


def test_batched_left_padded_prompts_equal_each_alone(setup):
    tokenizer, trie, model, _ = setup
    together = constrained_beam_search(model, tokenizer, PROMPTS, trie, top_k=5, num_beams=8, exclude=EXCLUDE)
    for row, prompt in enumerate(PROMPTS):
        alone = constrained_beam_search(model, tokenizer, [prompt], trie, top_k=5, num_beams=8, exclude=[EXCLUDE[row]])
        assert torch.equal(together[0][row], alone[0][0])
        torch.testing.assert_close(together[1][row], alone[1][0], atol=1e-4, rtol=1e-4)


def test_duplicate_titles_are_both_returned_tied_in_index_order(tiny_tokenizer):
    completions = ["Hamlet (1996)\n", "Heat (1995)\n", "Hamlet (1996)\n", "Fargo (1996)\n"]
    trie = build_item_trie(completions, tiny_tokenizer)
    model = tiny_llama(len(tiny_tokenizer), seed=1).eval()
    items, scores = constrained_beam_search(model, tiny_tokenizer, PROMPTS[:1], trie, top_k=4, num_beams=4)
    got = items[0].tolist()
    assert sorted(got) == [0, 1, 2, 3]
    assert got.index(0) == got.index(2) - 1 and scores[0, got.index(0)] == scores[0, got.index(2)]
    items, _ = constrained_beam_search(model, tiny_tokenizer, PROMPTS[:1], trie, top_k=4, num_beams=4, exclude=[{0}])
    assert items[0].tolist().count(-1) == 1 and 0 not in items[0].tolist() and 2 in items[0].tolist()


def test_rows_with_too_few_items_pad_with_minus_one(tiny_tokenizer):
    trie = build_trie([[10, 11, 12], [10, 13, 12], [20, 12]], vocab_size=len(tiny_tokenizer))
    model = tiny_gpt2(len(tiny_tokenizer)).eval()
    items, scores = constrained_beam_search(model, tiny_tokenizer, PROMPTS[:2], trie, top_k=3, num_beams=3,
                                            exclude=[{0, 2}, set()])
    assert items[0].tolist() == [1, -1, -1] and torch.isinf(scores[0, 1:]).all()
    assert sorted(items[1].tolist()) == [0, 1, 2]


def test_gpt2_exhaustive_search_equals_reference(tiny_tokenizer):
    trie = build_item_trie(COMPLETIONS, tiny_tokenizer)
    model = tiny_gpt2(len(tiny_tokenizer), seed=2).eval()
    paths = tokenize_completions(COMPLETIONS, tiny_tokenizer)
    reference = reference_log_likelihood(model, tiny_tokenizer, PROMPTS[:2], paths)
    items, _ = constrained_beam_search(model, tiny_tokenizer, PROMPTS[:2], trie, top_k=5, num_beams=trie.num_items)
    assert torch.equal(items, _reference_top_k(reference, [set(), set()], 5)[0])


def test_ranker_and_scorer_follow_the_evaluation_protocols(setup):
    tokenizer, trie, model, reference = setup
    histories = [UserSequence(str(i), (i,), (0,), ("rate",), (None,)) for i in range(len(PROMPTS))]
    prompt_fn = {h.user_id: p for h, p in zip(histories, PROMPTS, strict=True)}
    ranker = ConstrainedBeamRanker(model, tokenizer, trie, lambda h: prompt_fn[h.user_id], num_beams=50, batch_size=2)
    scorer = FullCatalogScorer(model, tokenizer, trie, lambda h: prompt_fn[h.user_id], batch_size=2)
    assert isinstance(ranker, TopKRanker) and isinstance(scorer, CatalogScorer)
    items, _ = ranker.rank(histories, 3, EXCLUDE)
    assert torch.equal(items, _reference_top_k(reference, EXCLUDE, 3)[0])
    torch.testing.assert_close(scorer.score(histories), reference, atol=1e-4, rtol=1e-4)
