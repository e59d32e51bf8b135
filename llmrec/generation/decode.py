"""Trie-constrained beam search and exact catalog likelihoods for a causal LM.

Both share one decoding primitive, *tree attention over a shared prompt cache*: every user's prompt
is run once (left-padded batch), and the candidate tokens of all beams (or all trie nodes) of that
user are appended to the same KV-cache row. A custom 4D attention mask lets each new token see the
real prompt tokens, its own ancestors and itself, nothing else. The prompt's keys and values are
therefore never copied per beam, and re-ordering beams costs a gather of a boolean ancestry matrix
instead of a cache re-index.

* ``constrained_beam_search``: batched beam search whose beams walk the item trie; finished beams are
  items, returned as the top-K distinct items with their sequence log-probability (sum of token
  log-probs under the unconstrained softmax, so scores are true model likelihoods). Items to exclude
  are pruned inside the search: a trie child is allowed only while some non-excluded item lies below.
* ``catalog_log_likelihood``: the exact (B, N) matrix of completion log-likelihoods, every trie node
  scored once per user (the full-catalog ranking that a large enough beam reproduces).
* ``reference_log_likelihood``: the slow reference: plain teacher forcing of every (prompt, item) pair.

Launch: library code; see ``scripts/bench_grounding.py --llm`` for a timed run on ML-100K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmrec.data.schema import UserSequence
from llmrec.generation.trie import ItemTrie


@dataclass
class PromptBatch:
    """Left-padded prompt tokens: ``input_ids`` and ``attention_mask`` (B, L), ``lengths`` (B,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor


def encode_prompts(tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool = False) -> PromptBatch:
    """Tokenize prompts and left-pad them (the last prompt token of every row is at column L-1)."""
    ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    if any(len(row) == 0 for row in ids):
        raise ValueError("a prompt tokenized to nothing; prompts must end with the answer marker")
    pad = _pad_id(tokenizer)
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, width - len(tokens):] = 1
    return PromptBatch(input_ids, attention_mask, attention_mask.sum(1))


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


class TreeDecoder:
    """A KV cache holding one prompt per row plus a growing set of tree tokens per row."""

    def __init__(self, model: Any, batch: PromptBatch):
        self.model = model
        self.batch = batch
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        mask = batch.attention_mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: first real token at position 0
        out = model(  # logits_to_keep=1: only the last position's logits are needed (saves the LM head on L-1 rows)
            input_ids=batch.input_ids.to(self.device), attention_mask=mask, position_ids=positions, use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        self.last_logits = out.logits[:, -1, :].float()  # (B, V) next-token logits after each prompt
        self.prompt_visible = mask.bool()  # (B, L)
        self.tree_slots = 0  # tree tokens appended so far (per row)

    def extend(self, tokens: torch.Tensor, depth: torch.Tensor, ancestry: torch.Tensor) -> torch.Tensor:
        """Append ``Q`` tree tokens per row and return their next-token logits.

        Args:
            tokens: (B, Q) token ids.
            depth: (B, Q) or (Q,) depth of each token in the tree (1 = first completion token).
            ancestry: (B, Q, S) or (Q, S) bool, S = tree tokens already in the cache: the earlier
                tree tokens each new token may attend to (its ancestors).

        Returns:
            (B, Q, V) float32 logits.
        """
        b, q = tokens.shape
        ancestry = ancestry.to(self.device).expand(b, q, self.tree_slots)
        visible = torch.cat(
            [
                self.prompt_visible[:, None, :].expand(b, q, -1),  # (B, Q, L)
                ancestry,  # (B, Q, S)
                torch.eye(q, dtype=torch.bool, device=self.device).expand(b, q, q),  # each token sees itself
            ],
            dim=2,
        )
        additive = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        additive.masked_fill_(~visible, torch.finfo(self.dtype).min)
        positions = self.batch.lengths.to(self.device)[:, None] + depth.to(self.device).expand(b, q) - 1
        out = self.model(
            input_ids=tokens.to(self.device),
            attention_mask=additive[:, None, :, :],  # (B, 1, Q, L + S + Q)
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.tree_slots += q
        return out.logits.float()


@torch.inference_mode()
def constrained_beam_search(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    trie: ItemTrie,
    top_k: int = 10,
    num_beams: int = 20,
    exclude: Sequence[set[int]] | None = None,
    length_normalize: bool = False,
    add_special_tokens: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``top_k`` distinct catalog items per prompt by trie-constrained beam search.

    Args:
        model: a causal LM (eval mode) whose logits line up with ``trie.vocab_size``.
        prompts: one prompt per user, each ending with the answer marker the trie was built after.
        trie: the item trie.
        top_k: distinct items returned per prompt.
        num_beams: partial sequences kept per prompt; ``num_beams >= trie.num_items`` is exhaustive.
        exclude: per prompt, item indices that must never be returned (pruned inside the search).
        length_normalize: rank by mean token log-prob instead of the sum (the sum is the exact
            full-catalog likelihood ranking and allows early stopping).

    Returns:
        ``(items, scores)``, each (B, top_k), best first, ties by item index; rows with fewer than
        ``top_k`` reachable items pad with -1 and -inf.
    """
    if num_beams < 1 or top_k < 1:
        raise ValueError("num_beams and top_k must be >= 1")
    b, w = len(prompts), num_beams
    exclude = exclude or [set() for _ in range(b)]
    if len(exclude) != b:
        raise ValueError(f"exclude has {len(exclude)} rows for {b} prompts")
    excluded = trie.excluded_counts(exclude)  # (B, num_nodes)
    decoder = TreeDecoder(model, encode_prompts(tokenizer, prompts, add_special_tokens))
    state = _BeamState.start(b, w, top_k)
    logprobs = torch.log_softmax(decoder.last_logits, -1)[:, None, :].expand(b, w, -1).cpu()  # (B, W, V)
    for depth in range(1, trie.max_depth + 1):
        alive = state.advance(trie, excluded, logprobs, depth, length_normalize)
        if not alive:
            break
        logits = decoder.extend(state.tokens, torch.tensor(depth), state.ancestry)
        state.ancestry = torch.cat([state.ancestry, torch.eye(w, dtype=torch.bool).expand(b, w, w)], dim=2)
        logprobs = torch.log_softmax(logits, -1).cpu()
    return _collect(trie, state, exclude, top_k)


@dataclass
class _BeamState:
    """Per-user beams (B, W) and the pool of finished trie leaves (B, K)."""

    nodes: torch.Tensor  # (B, W) trie node of each beam, -1 = dead
    scores: torch.Tensor  # (B, W) summed log-prob
    tokens: torch.Tensor  # (B, W) last token of each beam (fed to the model next)
    ancestry: torch.Tensor  # (B, W, S) tree slots each beam descends from
    done_nodes: torch.Tensor  # (B, K) finished leaves, -1 = empty
    done_scores: torch.Tensor  # (B, K) their summed log-prob
    done_rank: torch.Tensor  # (B, K) ranking key (= score, or score / length)

    @classmethod
    def start(cls, b: int, w: int, k: int) -> _BeamState:
        nodes = torch.full((b, w), -1, dtype=torch.long)
        nodes[:, 0] = 0
        scores = torch.full((b, w), float("-inf"))
        scores[:, 0] = 0.0
        empty = torch.full((b, k), float("-inf"))
        return cls(nodes, scores, torch.zeros((b, w), dtype=torch.long), torch.zeros((b, w, 0), dtype=torch.bool),
                   torch.full((b, k), -1, dtype=torch.long), empty, empty.clone())

    def advance(
        self, trie: ItemTrie, excluded: torch.Tensor, logprobs: torch.Tensor, depth: int, normalize: bool
    ) -> bool:
        """Expand every beam along its allowed trie edges; returns whether any beam lives on."""
        b, w = self.nodes.shape
        beam, edge = trie.child_edges(self.nodes.flatten())  # all (beam, edge) pairs, beams ascending
        child, token = trie.child_nodes[edge], trie.child_tokens[edge]
        row = beam // w
        keep = trie.subtree_items[child] > excluded[row, child]  # prune fully excluded subtrees
        beam, child, token, row = beam[keep], child[keep], token[keep], row[keep]
        score = self.scores.flatten()[beam] + logprobs[row, beam % w, token]  # indexes expanded views, no copy
        cand = _pad_rows(row, b, score=score, beam=beam % w, child=child, token=token)
        terminal = trie.is_terminal[cand["child"].clamp(min=0)] & (cand["child"] >= 0)
        rank = cand["score"] / depth if normalize else cand["score"]
        self._finish(torch.where(terminal, rank, float("-inf")), cand["score"], cand["child"])
        cont = torch.where(terminal | (cand["child"] < 0), float("-inf"), cand["score"])
        if not normalize:  # scores only fall as tokens are added: a beam below the K-th leaf is hopeless
            cont = torch.where(cont < self.done_rank[:, -1:], float("-inf"), cont)
        top, pos = cont.topk(min(w, cont.shape[1]), dim=1)
        pad = w - top.shape[1]
        top = torch.nn.functional.pad(top, (0, pad), value=float("-inf"))
        pos = torch.nn.functional.pad(pos, (0, pad), value=0)
        live = torch.isfinite(top)
        parent = cand["beam"].gather(1, pos).clamp(min=0)
        self.nodes = torch.where(live, cand["child"].gather(1, pos), -1)
        self.scores = top
        self.tokens = torch.where(live, cand["token"].gather(1, pos), 0)
        self.ancestry = self.ancestry.gather(1, parent[:, :, None].expand(-1, -1, self.ancestry.shape[2]))
        self.ancestry &= live[:, :, None]
        return bool(live.any())

    def _finish(self, rank: torch.Tensor, score: torch.Tensor, child: torch.Tensor) -> None:
        k = self.done_rank.shape[1]
        all_rank = torch.cat([self.done_rank, rank], 1)
        top, pos = all_rank.topk(k, dim=1)
        self.done_rank = top
        self.done_scores = torch.cat([self.done_scores, score], 1).gather(1, pos)
        self.done_nodes = torch.where(torch.isfinite(top), torch.cat([self.done_nodes, child], 1).gather(1, pos), -1)


def _pad_rows(row: torch.Tensor, b: int, **values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scatter flat candidates (grouped by ascending ``row``) into (B, C) tensors, padding -inf / -1."""
    counts = torch.bincount(row, minlength=b)
    width = max(int(counts.max()) if row.numel() else 0, 1)
    col = torch.arange(row.numel()) - (torch.cumsum(counts, 0) - counts)[row]
    out = {}
    for name, value in values.items():
        fill = float("-inf") if value.is_floating_point() else -1
        padded = torch.full((b, width), fill, dtype=value.dtype)
        padded[row, col] = value
        out[name] = padded
    return out


def _collect(
    trie: ItemTrie, state: _BeamState, exclude: Sequence[set[int]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand finished leaves into items (a leaf may hold several), drop excluded, keep the top k."""
    b = state.done_nodes.shape[0]
    items = torch.full((b, k), -1, dtype=torch.long)
    scores = torch.full((b, k), float("-inf"))
    for row in range(b):
        found = []
        for node, rank, score in zip(state.done_nodes[row].tolist(), state.done_rank[row].tolist(),
                                     state.done_scores[row].tolist(), strict=True):
            if node >= 0:
                found += [(-rank, item, score) for item in trie.items_at(node) if item not in exclude[row]]
        found.sort()
        for col, (neg_rank, item, _score) in enumerate(found[:k]):
            items[row, col], scores[row, col] = item, -neg_rank
    return items, scores


@torch.inference_mode()
def catalog_log_likelihood(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    trie: ItemTrie,
    chunk_nodes: int = 512,
    length_normalize: bool = False,
    add_special_tokens: bool = False,
) -> torch.Tensor:
    """Exact (B, N) log-likelihood of every catalog item's completion given each prompt.

    Every inner trie node is fed once per prompt (level by level, ``chunk_nodes`` at a time) on top of
    the shared prompt cache; an item's score is the sum of its tokens' log-probs along its path.
    """
    decoder = TreeDecoder(model, encode_prompts(tokenizer, prompts, add_special_tokens))
    b, n = len(prompts), trie.num_nodes
    node_logp = torch.zeros(b, n)  # (B, num_nodes) log-prob of the edge into each node
    root_logp = torch.log_softmax(decoder.last_logits, -1).cpu()
    _score_children(trie, torch.tensor([0]), root_logp[:, None, :], node_logp)
    slot = torch.full((n,), -1, dtype=torch.long)  # tree slot of each fed node
    has_children = trie.child_ptr[1:] > trie.child_ptr[:-1]
    for depth in range(1, trie.max_depth):
        level = torch.nonzero((trie.depth == depth) & has_children).flatten()
        for chunk in level.split(chunk_nodes):
            ancestry = _ancestry(trie, chunk, slot, decoder.tree_slots)  # (Q, S)
            logits = decoder.extend(trie.token[chunk].expand(b, -1), trie.depth[chunk], ancestry)
            slot[chunk] = torch.arange(decoder.tree_slots - chunk.numel(), decoder.tree_slots)
            _score_children(trie, chunk, torch.log_softmax(logits, -1).cpu(), node_logp)
    total = _path_sums(trie, node_logp)[:, trie.item_terminal]  # (B, N)
    if length_normalize:
        total = total / trie.depth[trie.item_terminal].to(total.dtype)
    return total


def _ancestry(trie: ItemTrie, nodes: torch.Tensor, slot: torch.Tensor, width: int) -> torch.Tensor:
    """(Q, width) bool: the tree slots of each node's ancestors (root excluded, the node itself not yet fed)."""
    out = torch.zeros(nodes.numel(), width, dtype=torch.bool)
    cur = trie.parent[nodes]
    rows = torch.arange(nodes.numel())
    while bool((cur > 0).any()):
        on = cur > 0
        out[rows[on], slot[cur[on]]] = True
        cur = torch.where(on, trie.parent[cur.clamp(min=0)], 0)
    return out


def _score_children(trie: ItemTrie, nodes: torch.Tensor, logprobs: torch.Tensor, node_logp: torch.Tensor) -> None:
    """Write log p(child token | node) for every child of ``nodes``; ``logprobs`` is (B, Q, V)."""
    beam, edge = trie.child_edges(nodes)
    node_logp[:, trie.child_nodes[edge]] = logprobs[:, beam, trie.child_tokens[edge]]


def _path_sums(trie: ItemTrie, node_logp: torch.Tensor) -> torch.Tensor:
    """(B, num_nodes) summed edge log-probs from the root to each node (parents before children)."""
    total = node_logp.clone()
    order = torch.argsort(trie.depth, stable=True)
    for depth in range(2, trie.max_depth + 1):
        level = order[trie.depth[order] == depth]
        total[:, level] += total[:, trie.parent[level]]
    return total


@torch.inference_mode()
def reference_log_likelihood(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    token_paths: Sequence[Sequence[int]],
    batch_size: int = 64,
    add_special_tokens: bool = False,
) -> torch.Tensor:
    """Slow exact reference: teacher-force each (prompt, item) pair separately, no cache sharing.

    Returns:
        (B, N) summed log-probs of each item's tokens after each prompt.
    """
    device = next(model.parameters()).device
    out = torch.zeros(len(prompts), len(token_paths))
    for row, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
        for start in range(0, len(token_paths), batch_size):
            paths = token_paths[start:start + batch_size]
            seqs = [list(prompt_ids) + list(p) for p in paths]
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for i, seq in enumerate(seqs):  # right padding: positions need no adjustment
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
            for i, path in enumerate(paths):
                pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(path))
                out[row, start + i] = logp[i, pos, torch.tensor(path)].sum().cpu()
    return out


PromptFn = Callable[[UserSequence], str]


class ConstrainedBeamRanker:
    """``TopKRanker`` over a causal LM: prompt each history, beam-search the item trie."""

    def __init__(self, model: Any, tokenizer: Any, trie: ItemTrie, prompt_fn: PromptFn,
                 num_beams: int = 20, batch_size: int = 8, length_normalize: bool = False,
                 add_special_tokens: bool = False):
        self.model, self.tokenizer, self.trie, self.prompt_fn = model, tokenizer, trie, prompt_fn
        self.num_beams, self.batch_size, self.length_normalize = num_beams, batch_size, length_normalize
        self.add_special_tokens = add_special_tokens  # how prompt text is tokenized (as in training)

    def rank(
        self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        items, scores = [], []
        for start in range(0, len(histories), self.batch_size):
            chunk = histories[start:start + self.batch_size]
            got = constrained_beam_search(
                self.model, self.tokenizer, [self.prompt_fn(h) for h in chunk], self.trie, top_k=k,
                num_beams=max(self.num_beams, k), exclude=exclude[start:start + self.batch_size],
                length_normalize=self.length_normalize, add_special_tokens=self.add_special_tokens,
            )
            items.append(got[0])
            scores.append(got[1])
        return torch.cat(items), torch.cat(scores)


class FullCatalogScorer:
    """``CatalogScorer`` giving the exact completion log-likelihood of every catalog item."""

    def __init__(self, model: Any, tokenizer: Any, trie: ItemTrie, prompt_fn: PromptFn,
                 batch_size: int = 4, chunk_nodes: int = 512, length_normalize: bool = False,
                 add_special_tokens: bool = False):
        self.model, self.tokenizer, self.trie, self.prompt_fn = model, tokenizer, trie, prompt_fn
        self.batch_size, self.chunk_nodes, self.length_normalize = batch_size, chunk_nodes, length_normalize
        self.add_special_tokens = add_special_tokens

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        rows = []
        for start in range(0, len(histories), self.batch_size):
            prompts = [self.prompt_fn(h) for h in histories[start:start + self.batch_size]]
            rows.append(catalog_log_likelihood(self.model, self.tokenizer, prompts, self.trie,
                                               self.chunk_nodes, self.length_normalize, self.add_special_tokens))
        return torch.cat(rows) if rows else torch.zeros(0, self.trie.num_items)
