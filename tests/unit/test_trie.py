"""The item trie: in-context tokenization, CSR children, vectorized masks, exclusion pruning."""

from __future__ import annotations

import pytest
import torch

from llmrec.generation.trie import _ranges, build_item_trie, build_trie, tokenize_completions
from tests.tiny import FIXTURE_TITLES

COMPLETIONS = [title + "\n" for title in FIXTURE_TITLES]


@pytest.fixture(scope="module")
def trie(tiny_tokenizer):
    return build_item_trie(COMPLETIONS, tiny_tokenizer)


@pytest.mark.parametrize(
    "prompt",
    ["Next movie:\n", "The user watched these movies in order.\nHeat (1995)\nAlien (1979)\nNext movie:\n", "x\n"],
)
def test_item_path_is_the_tail_of_the_tokenized_prompt_plus_completion(tiny_tokenizer, trie, prompt):
    prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for item, completion in enumerate(COMPLETIONS):
        full = tiny_tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        assert full[: len(prompt_ids)] == prompt_ids
        assert trie.item_tokens(item) == full[len(prompt_ids):], completion


def test_boundary_merge_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="merges with the prompt context"):
        tokenize_completions(["ie: Heat (1995)\n"], tiny_tokenizer, context="Next mov")


def test_every_item_ends_at_a_terminal_leaf_mapping_back_to_it(trie):
    assert trie.num_items == len(COMPLETIONS)
    for item in range(trie.num_items):
        node = int(trie.item_terminal[item])
        assert item in trie.items_at(node)
        assert int(trie.child_ptr[node + 1] - trie.child_ptr[node]) == 0
        assert int(trie.depth[node]) == len(trie.item_tokens(item))
    assert int(trie.subtree_items[0]) == trie.num_items


def test_allowed_mask_matches_a_python_walk(trie):
    # Brute force: the tokens that can follow each node's token prefix in some item path.
    prefixes: dict[tuple[int, ...], set[int]] = {}
    for item in range(trie.num_items):
        path = trie.item_tokens(item)
        for cut in range(len(path)):
            prefixes.setdefault(tuple(path[:cut]), set()).add(path[cut])
    nodes = torch.arange(trie.num_nodes)
    mask = trie.allowed_mask(torch.cat([nodes, torch.tensor([-1])]))
    assert not mask[-1].any()  # a dead beam allows nothing
    for node in range(trie.num_nodes):
        path, cur = [], node
        while cur > 0:
            path.append(int(trie.token[cur]))
            cur = int(trie.parent[cur])
        expected = prefixes.get(tuple(reversed(path)), set())
        assert set(torch.nonzero(mask[node]).flatten().tolist()) == expected
        for tok in expected:
            child = trie.step(torch.tensor([node]), torch.tensor([tok]))
            assert int(trie.parent[child]) == node


def test_exclusion_prunes_only_fully_excluded_subtrees(trie):
    sabrina = [i for i, t in enumerate(FIXTURE_TITLES) if t.startswith("Sabrina")]
    hamlet = [i for i, t in enumerate(FIXTURE_TITLES) if t.startswith("Hamlet")]
    excluded = trie.excluded_counts([set(sabrina), {hamlet[0]}])
    for row, items in ((0, sabrina), (1, hamlet)):
        # The node after the shared title prefix: the deepest common ancestor of the two items.
        a, b = trie.item_tokens(items[0]), trie.item_tokens(items[1])
        common = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
        parent = torch.tensor([0])
        for tok in a[: common - 1]:
            parent = trie.step(parent, torch.tensor([tok]))
        node = trie.step(parent, torch.tensor([a[common - 1]]))
        into = trie.allowed_mask(parent, torch.tensor([row]), excluded)[0, a[common - 1]]
        inner = trie.allowed_mask(node, torch.tensor([row]), excluded)[0]
        unconstrained = trie.allowed_mask(node)[0]
        assert unconstrained[a[common]] and unconstrained[b[common]]
        assert not inner[a[common]]  # items[0] is excluded in both rows
        assert bool(inner[b[common]]) is (row == 1)
        assert bool(into) is (row == 1)  # both Sabrinas gone: the shared prefix is pruned
    with pytest.raises(ValueError, match="outside"):
        trie.excluded_counts([{len(COMPLETIONS)}])


def test_identical_completions_share_a_leaf():
    trie = build_trie([[5, 6, 9], [5, 7, 9], [5, 6, 9]], vocab_size=10)
    assert trie.items_at(int(trie.item_terminal[0])) == [0, 2]
    assert int(trie.subtree_items[trie.item_terminal[0]]) == 2
    counts = trie.excluded_counts([{0}])
    leaf = trie.item_terminal[0]
    assert int(trie.subtree_items[leaf]) > int(counts[0, leaf])  # item 2 still reachable


def test_prefix_paths_and_bad_tokens_are_rejected():
    with pytest.raises(ValueError, match="prefix"):
        build_trie([[1, 2], [1, 2, 3]], vocab_size=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_trie([[1, 7]], vocab_size=5)
    with pytest.raises(ValueError, match="empty"):
        build_trie([[1], []], vocab_size=5)


def test_ranges_concatenates_aranges():
    starts, ends = torch.tensor([3, 0, 5, 9]), torch.tensor([6, 0, 7, 10])
    assert _ranges(starts, ends).tolist() == [3, 4, 5, 5, 6, 9]
    assert _ranges(torch.tensor([2]), torch.tensor([2])).numel() == 0
