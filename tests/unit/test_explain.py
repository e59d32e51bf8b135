"""Faithfulness checker, evidence, template fallback and the regenerate-then-fallback loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.explain import (
    TEMPLATE_FLAG,
    Explainer,
    category_jaccard,
    decoder_item_embedder,
    embedding_similarity,
    gather_evidence,
    generate_text,
)
from llmrec.faithfulness import CategoryMatcher, TitleMatcher, check_faithfulness, title_forms
from tests.fixtures_run import fixture_catalog
from tests.tiny import make_tokenizer, tiny_llama


def movie(item_id: str, title: str, year: str, *cats: str) -> Item:
    return Item(item_id, title, tuple(cats), {"year": year})


CATALOG = Catalog([
    movie("1", "Toy Story", "1995", "Animation", "Children's", "Comedy"),
    movie("2", "Toy Story 2", "1999", "Animation", "Children's", "Comedy"),
    movie("3", "Heat", "1995", "Action", "Crime", "Thriller"),
    movie("4", "Godfather, The", "1972", "Crime", "Drama"),
    movie("5", "Hamlet", "1996", "Drama"),
    movie("6", "Hamlet", "1948", "Drama"),
    movie("7", "Seven (Se7en)", "1995", "Crime", "Thriller"),
    movie("8", "Horror Express", "1972", "Horror"),
    movie("9", "Obscure Film", "1990", "unknown"),
])


def seq(*indices: int) -> UserSequence:
    n = len(indices)
    return UserSequence("u", tuple(indices), tuple(range(n)), ("rate",) * n, (None,) * n)


def test_title_forms_move_articles_and_strip_alternate_titles():
    with_year, without = title_forms(CATALOG[3])
    assert {"Godfather, The (1972)", "The Godfather (1972)"} <= with_year
    assert {"Godfather, The", "The Godfather"} <= without
    _, seven = title_forms(CATALOG[6])
    assert "Seven" in seven and "Seven (Se7en)" in seven


def test_matcher_prefers_the_longest_title_and_ignores_case_only_with_a_year():
    titles = TitleMatcher(CATALOG)
    found = titles.find("You loved toy story 2 (1999) and Toy Story.")
    assert [(n.span, n.candidates) for n in found] == [("toy story 2 (1999)", (1,)), ("Toy Story", (0,))]
    assert titles.find("the toy story of my life") == []  # bare titles need their capitals


def test_matcher_skips_sentence_initial_single_words_unless_quoted():
    titles = TitleMatcher(CATALOG)
    assert titles.find("Heat is what this thriller brings.") == []
    assert [n.candidates for n in titles.find('As in "Heat", the chase is tense.')] == [(2,)]
    assert [n.candidates for n in titles.find("It has the pace of Heat and more.")] == [(2,)]
    assert [n.candidates for n in titles.find("A fan of The Godfather will like it.")] == [(3,)]


def test_ambiguous_bare_title_keeps_every_candidate():
    (mention,) = TitleMatcher(CATALOG).find("like Hamlet, a drama")
    assert mention.candidates == (4, 5)


def test_faithful_text_citing_history_recommendation_and_their_categories():
    text = "Because you enjoyed Heat (1995) and The Godfather, this Crime drama Seven should appeal to you."
    report = check_faithfulness(text, [2, 3], 6, CATALOG)
    assert report.faithful, report.reasons
    assert sorted(c for n in report.named_items for c in n.candidates) == [2, 3, 6]
    assert set(report.named_categories) == {"Crime", "Drama"}


def test_item_outside_history_is_unfaithful():
    report = check_faithfulness("You liked Toy Story 2 (1999), so try Heat.", [0], 2, CATALOG)
    assert not report.faithful
    assert any("Toy Story 2 (1999)" in r and "neither in the history" in r for r in report.reasons)


def test_invented_item_with_a_year_is_unfaithful():
    report = check_faithfulness("Since you watched Toy Story (1995) and Space Toys Forever (2003), try this.", [0], 1, CATALOG)
    assert not report.faithful
    assert any("Space Toys Forever (2003)" in r and "not an item in the catalog" in r for r in report.reasons)


def test_category_not_shared_is_unfaithful_but_category_words_inside_titles_are_not_claims():
    assert not check_faithfulness("A great Thriller for you.", [0], 1, CATALOG).faithful
    # "Horror" inside the title "Horror Express (1972)" is part of a title, not a category claim.
    report = check_faithfulness("Like Horror Express (1972), it is a comedy.", [7], 0, CATALOG)
    assert report.named_categories == ["Comedy"] and report.faithful


def test_plural_categories_and_placeholder_categories():
    matcher = CategoryMatcher(CATALOG.categories())
    assert matcher.find("two comedies and some thrillers; unknown origin") == ["Comedy", "Thriller"]


def test_ambiguous_title_is_allowed_when_one_reading_is_in_history():
    assert check_faithfulness("As with Hamlet, a Drama again.", [5], 4, CATALOG).faithful


def test_category_jaccard_and_evidence_order():
    sim = category_jaccard(CATALOG)
    assert sim([0, 2], 1) == [1.0, 0.0]
    evidence = gather_evidence([2, 0, 1, 0], 1, CATALOG, sim, "category_jaccard")
    assert evidence.history_items == ["1", "3"]  # the recommended item itself is never evidence
    assert evidence.shared_categories == ["Animation", "Children's", "Comedy"]
    assert evidence.similarities[0] == {"item_id": "1", "title": "Toy Story (1995)", "similarity": 1.0}


def test_embedding_similarity_is_cosine():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    sim = embedding_similarity(lambda idx: vectors[list(idx)])
    assert sim([0, 1], 2) == pytest.approx([1.0, 0.0])


class Scripted:
    """A generator that returns fixed texts and records the seeds it was called with."""

    def __init__(self, texts: list[str]):
        self.texts, self.seeds = list(texts), []

    def __call__(self, history: UserSequence, item: int, seed: int | None) -> str:
        self.seeds.append(seed)
        return self.texts.pop(0)


def test_regenerates_until_faithful():
    gen = Scripted(["You loved Toy Story 2 (1999).", ":::", "Like Heat (1995), it is a Crime story."])
    result = Explainer(CATALOG, gen).explain(seq(2, 0), 6)
    assert result.path == "generated" and result.tries == 3
    assert gen.seeds == [None, 1, 2]  # greedy, then sampled with new seeds
    assert len(result.rejected) == 2 and "Toy Story 2 (1999)" in result.rejected[0]
    assert "not an explanation" in result.rejected[1]


def test_falls_back_to_a_flagged_faithful_template():
    gen = Scripted(["Try Toy Story 2 (1999)."] * 3)
    explainer = Explainer(CATALOG, gen)
    result = explainer.explain(seq(2, 3, 0), 6)
    assert result.path == "template_fallback" and result.tries == 3 and len(result.rejected) == 3
    assert result.text.startswith(TEMPLATE_FLAG)
    assert "Seven (Se7en) (1995)" in result.text and "Crime" in result.text
    assert explainer.reasons(result.text, [2, 3, 0], 6) == []


def test_no_generator_uses_template_and_says_why():
    result = Explainer(CATALOG, None, no_generator_note="encoder run").explain(seq(0), 2)
    assert (result.path, result.tries, result.note) == ("template_fallback", 0, "encoder run")
    assert "shares no category" in result.text


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(st.integers(0, 49), min_size=1, max_size=12),
    item=st.integers(0, 49),
)
def test_template_explanations_are_always_faithful(history: list[int], item: int):
    catalog = fixture_catalog()
    explainer = EXPLAINERS.setdefault("fixture", Explainer(catalog, None))
    result = explainer.explain(seq(*history), item)
    assert explainer.reasons(result.text, history, item) == []


EXPLAINERS: dict[str, Explainer] = {}


def test_generate_text_greedy_is_deterministic_and_sampling_is_seeded(tiny_tokenizer):
    tokenizer = make_tokenizer(["Heat (1995) is a thriller"])
    model = tiny_llama(len(tokenizer)).eval()
    greedy = [generate_text(model, tokenizer, "Heat (1995)\n", 6, None) for _ in range(2)]
    sampled = [generate_text(model, tokenizer, "Heat (1995)\n", 6, 7) for _ in range(2)]
    assert greedy[0] == greedy[1] and sampled[0] == sampled[1]
    assert isinstance(greedy[0], str)


def test_decoder_item_embeddings_are_the_catalog_heads_hidden_title_vectors_whatever_the_batch():
    from llmrec.modeling.catalog_head import hidden_title_vectors

    catalog = fixture_catalog()
    tokenizer = make_tokenizer([item.display_title() for item in catalog])
    tokenizer.padding_side = "left"  # as generation sets it
    model = tiny_llama(len(tokenizer)).eval()
    embed = decoder_item_embedder(model, tokenizer, catalog, batch_size=3)
    together = embed([0, 1, 2, 3])
    expected = hidden_title_vectors(model, tokenizer, [catalog[i].display_title() for i in range(4)], batch_size=1)
    torch.testing.assert_close(together, expected, rtol=1e-4, atol=1e-5)
    fresh = decoder_item_embedder(model, tokenizer, catalog, batch_size=3)
    torch.testing.assert_close(fresh([3]), expected[3:], rtol=1e-4, atol=1e-5)  # alone = in a padded batch
