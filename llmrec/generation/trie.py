"""A token trie over catalog completions, stored as flat tensors for vectorized decoding.

Each catalog item contributes one token path: the tokens its completion text (title plus an end
marker such as ``"\\n"``) gets when it follows the prompt. The path ends in a *terminal* node that
maps back to item indices. Children are kept in CSR form (``child_ptr``, ``child_tokens``,
``child_nodes``), so the allowed-token mask of a whole batch of beams is built with one
``repeat_interleave`` and one scatter, with no Python loop per beam.

Completions are tokenized in context: ``tokenizer(context + completion)`` minus the tokens of
``context``. A context that ends with a newline (the answer marker of our prompts) keeps BPE from
merging across the prompt/completion boundary; the build checks the boundary and raises otherwise.

Two items whose completions are the same text share one terminal node (``terminal_items`` holds
both); the search then returns both, tied, in item-index order. Render titles with the year to keep
them apart. No completion may be a token-level prefix of another (the end marker ensures this when
titles do not contain it); the build names the offending items if one is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The default context completions are tokenized after: the tail of an answer marker.
DEFAULT_CONTEXT = "Next movie:\n"


def tokenize_completions(
    completions: Sequence[str], tokenizer: Any, context: str = DEFAULT_CONTEXT
) -> list[list[int]]:
    """Token ids of each completion exactly as they follow ``context``.

    Raises:
        ValueError: when BPE merges a token across the ``context``/completion boundary, or a
            completion tokenizes to nothing.
    """
    prefix = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer([context + text for text in completions], add_special_tokens=False)["input_ids"]
    out = []
    for index, (text, ids) in enumerate(zip(completions, full, strict=True)):
        if ids[: len(prefix)] != prefix:
            raise ValueError(
                f"completion {index} ({text!r}) merges with the prompt context {context!r} under this "
                "tokenizer; end the prompt with a newline or another separator"
            )
        tail = list(ids[len(prefix):])
        if not tail:
            raise ValueError(f"completion {index} ({text!r}) is empty after tokenization")
        out.append(tail)
    return out


@dataclass
class ItemTrie:
    """Flat-tensor trie. Node 0 is the root; ``num_nodes`` nodes, ``num_items`` catalog items.

    Attributes:
        child_ptr: (num_nodes + 1,) CSR offsets into the child arrays.
        child_tokens: (num_edges,) token id on each edge, sorted within a node.
        child_nodes: (num_edges,) node each edge leads to.
        parent: (num_nodes,) parent node (-1 for the root).
        token: (num_nodes,) token on the edge into the node (-1 for the root).
        depth: (num_nodes,) tokens from the root.
        terminal_ptr: (num_nodes + 1,) CSR offsets into ``terminal_items``.
        terminal_items: (num_items,) item indices grouped by terminal node, ascending within a node.
        item_terminal: (num_items,) terminal node of each item.
        subtree_items: (num_nodes,) number of items whose path passes through the node.
        path_ptr: (num_items + 1,) CSR offsets into ``path_nodes``.
        path_nodes: nodes on each item's path (root excluded, terminal included).
        vocab_size: size of the masks built by ``allowed_mask``.
    """

    child_ptr: torch.Tensor
    child_tokens: torch.Tensor
    child_nodes: torch.Tensor
    parent: torch.Tensor
    token: torch.Tensor
    depth: torch.Tensor
    terminal_ptr: torch.Tensor
    terminal_items: torch.Tensor
    item_terminal: torch.Tensor
    subtree_items: torch.Tensor
    path_ptr: torch.Tensor
    path_nodes: torch.Tensor
    vocab_size: int

    @property
    def num_nodes(self) -> int:
        return int(self.parent.numel())

    @property
    def num_items(self) -> int:
        return int(self.item_terminal.numel())

    @property
    def max_depth(self) -> int:
        return int(self.depth.max().item())

    @property
    def is_terminal(self) -> torch.Tensor:
        """(num_nodes,) bool: the node ends at least one item."""
        return self.terminal_ptr[1:] > self.terminal_ptr[:-1]

    def item_tokens(self, item: int) -> list[int]:
        """The token path of one item (root excluded)."""
        nodes = self.path_nodes[self.path_ptr[item]: self.path_ptr[item + 1]]
        return self.token[nodes].tolist()

    def items_at(self, node: int) -> list[int]:
        """Item indices ending at ``node`` (empty for an inner node)."""
        return self.terminal_items[self.terminal_ptr[node]: self.terminal_ptr[node + 1]].tolist()

    def excluded_counts(self, exclude: Sequence[set[int]] | Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, num_nodes) int32: per row, how many excluded items pass through each node."""
        counts = torch.zeros(len(exclude), self.num_nodes, dtype=torch.int32)
        for row, items in enumerate(exclude):
            if not items:
                continue
            idx = torch.as_tensor(sorted(items), dtype=torch.long)
            if int(idx.min()) < 0 or int(idx.max()) >= self.num_items:
                raise ValueError(f"exclude row {row} holds an item index outside 0..{self.num_items - 1}")
            starts, ends = self.path_ptr[idx], self.path_ptr[idx + 1]
            nodes = self.path_nodes[_ranges(starts, ends)]
            counts[row].index_add_(0, nodes, torch.ones_like(nodes, dtype=torch.int32))
        return counts

    def allowed_mask(
        self, nodes: torch.Tensor, rows: torch.Tensor | None = None, excluded: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Allowed next tokens of each beam, in one scatter.

        Args:
            nodes: (R,) current trie node of each beam (-1 = dead beam, nothing allowed).
            rows: (R,) user row of each beam, to index ``excluded``.
            excluded: (B, num_nodes) from ``excluded_counts``; a child whose items are all excluded
                is not allowed.

        Returns:
            (R, vocab_size) bool mask.
        """
        mask = torch.zeros(nodes.numel(), self.vocab_size, dtype=torch.bool)
        beam, edge = self.child_edges(nodes)
        if excluded is not None and rows is not None and edge.numel():
            child = self.child_nodes[edge]
            keep = self.subtree_items[child] > excluded[rows[beam], child]
            beam, edge = beam[keep], edge[keep]
        mask[beam, self.child_tokens[edge]] = True
        return mask

    def child_edges(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All (beam, edge) pairs: edge indices of the children of each beam's node."""
        safe = nodes.clamp(min=0)
        counts = torch.where(nodes >= 0, self.child_ptr[safe + 1] - self.child_ptr[safe], 0)
        beam = torch.repeat_interleave(torch.arange(nodes.numel()), counts)
        edge = _ranges(self.child_ptr[safe], self.child_ptr[safe] + counts)
        return beam, edge

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each ``nodes[i]`` along ``tokens[i]`` (-1 where there is no such edge)."""
        out = torch.full_like(nodes, -1)
        for i, (node, tok) in enumerate(zip(nodes.tolist(), tokens.tolist(), strict=True)):
            if node < 0:
                continue
            lo, hi = int(self.child_ptr[node]), int(self.child_ptr[node + 1])
            pos = lo + int(torch.searchsorted(self.child_tokens[lo:hi], tok))
            if pos < hi and int(self.child_tokens[pos]) == tok:
                out[i] = self.child_nodes[pos]
        return out


def _ranges(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``arange(s, e)`` for each pair, without a Python loop."""
    lengths = (ends - starts).clamp(min=0)
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    offsets = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    return torch.arange(total) + offsets


def build_trie(token_paths: Sequence[Sequence[int]], vocab_size: int) -> ItemTrie:
    """Build the trie from one token path per catalog item (item index = position).

    Raises:
        ValueError: on an empty path, a token outside the vocabulary, or a path that is a strict
            prefix of another (the search could not tell whether to stop).
    """
    children: list[dict[int, int]] = [{}]
    parent, token, depth = [-1], [-1], [0]
    item_terminal: list[int] = []
    for item, path in enumerate(token_paths):
        if not path:
            raise ValueError(f"item {item} has an empty token path")
        node = 0
        for tok in path:
            if not 0 <= tok < vocab_size:
                raise ValueError(f"item {item}: token {tok} is outside the vocabulary (size {vocab_size})")
            nxt = children[node].get(tok)
            if nxt is None:
                nxt = len(parent)
                children[node][tok] = nxt
                children.append({})
                parent.append(node)
                token.append(tok)
                depth.append(depth[node] + 1)
            node = nxt
        item_terminal.append(node)
    _check_prefix_free(children, item_terminal)
    return _to_tensors(children, parent, token, depth, item_terminal, vocab_size)


def _check_prefix_free(children: list[dict[int, int]], item_terminal: list[int]) -> None:
    for item, node in enumerate(item_terminal):
        if children[node]:
            longer = [i for i, n in enumerate(item_terminal) if n != node and _descends(children, node, n)]
            raise ValueError(
                f"item {item}'s token path is a prefix of item(s) {longer[:5]}'s; end every completion "
                "with an end marker that no title contains"
            )


def _descends(children: list[dict[int, int]], ancestor: int, node: int) -> bool:
    stack = list(children[ancestor].values())
    while stack:
        current = stack.pop()
        if current == node:
            return True
        stack.extend(children[current].values())
    return False


def _to_tensors(
    children: list[dict[int, int]],
    parent: list[int],
    token: list[int],
    depth: list[int],
    item_terminal: list[int],
    vocab_size: int,
) -> ItemTrie:
    num_nodes, num_items = len(parent), len(item_terminal)
    child_ptr, child_tokens, child_nodes = [0], [], []
    for kids in children:
        for tok in sorted(kids):
            child_tokens.append(tok)
            child_nodes.append(kids[tok])
        child_ptr.append(len(child_tokens))
    terminal = torch.tensor(item_terminal, dtype=torch.long)
    order = torch.argsort(terminal, stable=True)  # items grouped by node, ascending index within
    terminal_counts = torch.bincount(terminal, minlength=num_nodes)
    terminal_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(terminal_counts, 0)])
    paths: list[list[int]] = []
    for node in item_terminal:
        path = []
        while node > 0:
            path.append(node)
            node = parent[node]
        paths.append(path[::-1])
    path_nodes = torch.tensor([n for p in paths for n in p], dtype=torch.long)
    path_ptr = torch.tensor([0] + [len(p) for p in paths], dtype=torch.long).cumsum(0)
    subtree = torch.bincount(path_nodes, minlength=num_nodes)
    subtree[0] = num_items
    long = torch.long
    return ItemTrie(
        child_ptr=torch.tensor(child_ptr, dtype=long),
        child_tokens=torch.tensor(child_tokens, dtype=long),
        child_nodes=torch.tensor(child_nodes, dtype=long),
        parent=torch.tensor(parent, dtype=long),
        token=torch.tensor(token, dtype=long),
        depth=torch.tensor(depth, dtype=long),
        terminal_ptr=terminal_ptr,
        terminal_items=order,
        item_terminal=terminal,
        subtree_items=subtree.to(torch.int32),
        path_ptr=path_ptr,
        path_nodes=path_nodes,
        vocab_size=vocab_size,
    )


def build_item_trie(
    completions: Sequence[str], tokenizer: Any, context: str = DEFAULT_CONTEXT, vocab_size: int | None = None
) -> ItemTrie:
    """Trie of ``completions`` (one per catalog item index) as they follow ``context``.

    ``vocab_size`` defaults to ``len(tokenizer)``; pass the model's (possibly padded) embedding
    size so masks line up with its logits.
    """
    paths = tokenize_completions(completions, tokenizer, context)
    return build_trie(paths, vocab_size or len(tokenizer))
