"""A catalog head for a decoder: the next item scored over the whole catalog in one forward pass.

Trie-constrained beam search ranks items by the likelihood of their title tokens, which costs a
search per user and trains on tokens, not items. The catalog head makes the *item* the unit of
both training and ranking (``train.format: catalog``):

* every catalog item gets a vector built from its title text: the mean of the decoder's own
  input embeddings of the title tokens (``Title (Year)`` as the prompts print it). For a model
  with tied embeddings this lives in the space the LM head compares hidden states with, so
  before any training ``hidden @ title_vector`` is the mean logit of the title's tokens.
  ``catalog_head.title_source: hidden`` instead averages the decoder's last hidden states over the
  title read alone (what the transformer makes of ``Heat (1995)``, not only its tokens), computed
  once with adapters disabled, rescaled to the embedding vectors' mean norm and saved with the head;
* a shared ``(d, d)`` projection, initialised to the identity, maps those vectors;
  ``catalog_head.title_mlp`` adds a shared two-layer MLP of the same title vector (a text
  adapter, zero at the start, as text-based recommenders put over frozen text features): still
  no per-item parameter, so still the pure-LLM row; with ``catalog_head.item_residuals`` a
  learned per-item vector (zero at the start) is added, which is collaborative information (an
  item embedding), so it is reported as its own row;
* the score of item ``i`` after a history is ``h @ item_i`` where ``h`` is the decoder's last
  hidden state at the end of the history text (the newline the next title would follow);
  ``catalog_head.history_pool: P`` adds to ``h`` a shared ``LayerNorm -> Linear`` map (zero at
  the start) of the mean item vector of the last ``P`` history items, centred on the catalog's
  mean item vector (the part all titles share carries no preference), a skip path from the latest titles to the
  user vector that does not go through the transformer (still no per-item parameter). During
  training the head is fed, for every target, the items of the earlier labelled lines of its
  window (:func:`target_histories`, :func:`feed_target_histories`); at inference, the last ``P``
  items of the history, whether or not a shortened prompt window (an inference override) still
  shows them all.

``catalog_head.mask_history`` (training only) takes the items of a target's earlier labelled
lines out of its softmax, as ranking takes a user's history out of the catalog: the loss then
never spends gradient pushing down items already watched, which ranking never shows anyway.
With ``catalog_head.mask_scope: user`` it takes out every item of the user's training sequence
before the target: the window's unlabelled first line and the items before the window too, which
the examples' ``prior_items`` column brings into the batch.

During training the head *replaces* the model's ``lm_head`` (:func:`attach_catalog_head`), so the
loop's loss runs unchanged through the outer (PEFT / DDP) model: the labels of a ``catalog``
example are catalog indices at the first token of each history line, and
``logits_to_keep`` asks for logits at the positions before them only. At inference the LM head
stays the language model's (explanations still generate text) and :class:`CatalogHeadScorer`
applies the head to the backbone's hidden state. The run directory stores the head's trained
state in ``catalog_head.pt`` (title vectors are recomputed from the base weights on load).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmrec.data.schema import Catalog, UserSequence
from llmrec.io import atomic_file

CATALOG_HEAD_FILE = "catalog_head.pt"  # trained head state in a run directory
TITLE_SOURCES = ("embeddings", "hidden")  # title vectors: mean input embedding | mean last hidden state


class CatalogHead(nn.Module):
    """Scores hidden states against every catalog item: ``(..., d) -> (..., N)``.

    Args:
        titles: ``(N, d)`` title vectors (:func:`title_vectors`), a buffer: never trained.
        item_ids: catalog ids of the rows, in item-index order.
        residuals: learn a per-item vector added to the projected title vector.
        mlp_hidden: width of the title MLP ``LayerNorm -> Linear -> GELU -> Linear`` whose output
            (zero at the start) is added to the projected title vector; 0 = none.
        history_pool: how many of the latest history items' vectors are averaged, centred on the
            mean item vector, mapped by a shared ``LayerNorm -> Linear(d, d)`` (the linear layer
            zero at the start) and added to the hidden state; 0 = none. The norm brings the small
            pooled vector to the hidden state's scale, as the title MLP's norm does for titles.
        title_source: how ``titles`` were made (:data:`TITLE_SOURCES`); ``hidden`` vectors depend on
            the transformer's weights, so they are saved with the head rather than recomputed.
    """

    def __init__(self, titles: torch.Tensor, item_ids: Sequence[str], residuals: bool = False, mlp_hidden: int = 0,
                 history_pool: int = 0, title_source: str = "embeddings"):
        super().__init__()
        num_items, dim = titles.shape
        if num_items != len(item_ids):
            raise ValueError(f"{num_items} title vectors for {len(item_ids)} item ids")
        if title_source not in TITLE_SOURCES:
            raise ValueError(f"title_source {title_source!r}: expected one of {', '.join(TITLE_SOURCES)}")
        self.item_ids = list(item_ids)
        self.title_source = title_source
        self.title_scale: float | None = None  # hidden titles: the factor they were rescaled by
        self.register_buffer("titles", titles.detach().float().clone(), persistent=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
        self.residuals = nn.Parameter(torch.zeros(num_items, dim)) if residuals else None
        self.mlp: nn.Sequential | None = None
        if mlp_hidden > 0:
            self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_hidden), nn.GELU(), _zero_linear(mlp_hidden, dim))
        if history_pool < 0:
            raise ValueError(f"history_pool must be >= 0, got {history_pool}")
        self.history_pool = history_pool
        self.pool: nn.Sequential | None = None
        if history_pool > 0:
            self.pool = nn.Sequential(nn.LayerNorm(dim), _zero_linear(dim, dim))
        self._fed: torch.Tensor | None = None  # (K, P) histories of the forward pass in flight (training)
        self._seen: torch.Tensor | None = None  # (K, S) items left out of each target's softmax (training)

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    def item_matrix(self) -> torch.Tensor:
        """``(N, d)`` what hidden states are scored against."""
        items = self.proj(self.titles)
        if self.mlp is not None:
            items = items + self.mlp(self.titles)
        return items if self.residuals is None else items + self.residuals

    def forward(self, hidden: torch.Tensor, items: torch.Tensor | None = None,
                history: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., N)`` scores of ``(..., d)`` hidden states.

        Args:
            items: a precomputed :meth:`item_matrix` (inference reuses one).
            history: with ``history_pool``, ``(K, P)`` item indices (-1 = none) of the latest
                history items of each of the K hidden states (``hidden`` must hold K vectors);
                None takes what :meth:`feeding` set (training, where the model calls the head).
        """
        items = self.item_matrix() if items is None else items
        hidden = hidden.to(items.dtype)
        if self.pool is not None:
            history = self._fed if history is None else history
            if history is None:
                raise RuntimeError("this catalog head pools the history (catalog_head.history_pool) but was given none")
            if history.shape[0] != hidden.shape[:-1].numel():
                raise ValueError(f"{history.shape[0]} histories for {hidden.shape[:-1].numel()} hidden states "
                                 "(the model must call the head on label positions only: logits_to_keep)")
            history = history.to(items.device)
            present = (history >= 0).any(dim=1, keepdim=True).to(hidden.dtype)  # (K, 1): no history, no term
            hidden = hidden + (self.pool(self.pooled(history, items)) * present).reshape(hidden.shape)
        scores = nn.functional.linear(hidden, items)
        if self._seen is not None:
            scores = masked_seen(scores, self._seen)
        return scores

    @staticmethod
    def pooled(history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(K, d)`` :func:`mean_item_vector` of each history minus the mean item vector of the catalog."""
        return mean_item_vector(history, items) - items.mean(dim=0)

    @contextlib.contextmanager
    def feeding(self, history: torch.Tensor | None, seen: torch.Tensor | None = None) -> Iterator[None]:
        """Within the block, calls without ``history`` use this one (the model calls the head itself),
        and with ``seen`` (``(K, S)`` item indices, -1 = none) each of the K scored rows gets
        ``-inf`` at its own seen items (:func:`masked_seen`)."""
        self._fed, self._seen = history, seen
        try:
            yield
        finally:
            self._fed, self._seen = None, None

    def head_state(self) -> dict[str, Any]:
        """What :func:`save_catalog_head` writes: the trained tensors and the row ids."""
        state: dict[str, Any] = {"proj": self.proj.weight.detach().float().cpu(), "item_ids": self.item_ids,
                                 "title_source": self.title_source}
        if self.title_source == "hidden":
            titles: torch.Tensor = self.get_buffer("titles")
            state["titles"] = titles.detach().float().cpu()
            if self.title_scale is not None:
                state["title_scale"] = self.title_scale
        if self.residuals is not None:
            state["residuals"] = self.residuals.detach().float().cpu()
        if self.mlp is not None:
            state["mlp"] = {name: tensor.detach().float().cpu() for name, tensor in self.mlp.state_dict().items()}
        if self.pool is not None:
            state["pool"] = {name: tensor.detach().float().cpu() for name, tensor in self.pool.state_dict().items()}
            state["history_pool"] = self.history_pool
        return state

    def recent(self, histories: Sequence[UserSequence]) -> torch.Tensor | None:
        """``(B, P)`` the last ``history_pool`` items of each history (-1 pads short ones); None without a pool."""
        if self.pool is None:
            return None
        return torch.tensor([latest(h.items, self.history_pool) for h in histories], dtype=torch.long)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free linear layer that outputs zero until trained (a branch that starts switched off)."""
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


def latest(items: Sequence[int], size: int) -> list[int]:
    """The last ``size`` (> 0) of ``items``, oldest first, padded with -1 on the left."""
    return ([-1] * size + list(items[-size:]))[-size:]


def mean_item_vector(history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``(K, d)`` mean of ``items[history]`` over each row's entries >= 0 (zero for a row of -1s)."""
    present = (history >= 0).unsqueeze(-1).to(items.dtype)  # (K, P, 1)
    summed = (items[history.clamp(min=0)] * present).sum(dim=1)  # (K, d)
    return summed / present.sum(dim=1).clamp(min=1.0)


Target = tuple[list[int], int, int, int]  # (earlier labelled items of its example, itself, batch row, example in the row)


def _earlier_targets(labels: torch.Tensor, position_ids: torch.Tensor | None) -> list[Target]:
    """For each target of a ``catalog`` batch (loss order), the items of the earlier labelled lines
    of its example, oldest first, the target itself, its row and its example's number in the row
    (0 for unpacked rows; see :func:`target_histories`)."""
    from llmrec.training.loss import IGNORE_INDEX

    out: list[Target] = []
    for row in range(labels.shape[0]):
        columns = (torch.nonzero(labels[row, 1:] != IGNORE_INDEX).flatten() + 1).tolist()
        values = labels[row].tolist()
        # packed rows: position_ids restart at 0 at each example, the first example is number 1 here
        starts = (position_ids[row] == 0).cumsum(0).tolist() if position_ids is not None else [1] * labels.shape[1]
        earlier: list[int] = []
        example = None
        for column in columns:
            if starts[column] != example:
                earlier, example = [], starts[column]
            out.append((list(earlier), int(values[column]), row, starts[column] - 1))
            earlier.append(int(values[column]))
    return out


def target_histories(labels: torch.Tensor, size: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(K, size)`` for each target of a ``catalog`` batch, the items of the earlier labelled lines of its example.

    Rows follow the order in which the loss gathers targets (row-major over label positions);
    the latest ``size`` earlier targets of the same example, -1 padded on the left. Packed rows
    (``position_ids`` restarting at 0) are split at their example boundaries. The window's first
    line carries no label, so it is not in any history.

    Args:
        labels: ``(B, T)`` catalog indices at the first token of each line, -100 elsewhere.
    """
    return _latest_rows(_earlier_targets(labels, position_ids), size)


def _latest_rows(pairs: Sequence[Target], size: int) -> torch.Tensor:
    rows = [latest(earlier, size) for earlier, *_ in pairs]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), size)


def target_seen_items(labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                      prior_items: torch.Tensor | None = None) -> torch.Tensor:
    """``(K, S)`` for each target of a ``catalog`` batch, the items to leave out of its softmax (-1 = none).

    They are the items of the earlier labelled lines of the same example (as
    :func:`target_histories`, all of them), less the target itself: a repeated item stays a
    reachable target. Without ``prior_items`` the window's unlabelled first line and the items
    before the window stay in the softmax (``catalog_head.mask_scope: window``); with it
    (``(B, M, P)``, the batch's ``prior_items``: each example's items before its first labelled
    line) they are left out too, again less the target (``mask_scope: user``).
    """
    return _seen_rows(_earlier_targets(labels, position_ids), prior_items)


def _seen_rows(pairs: Sequence[Target], prior_items: torch.Tensor | None = None) -> torch.Tensor:
    rows = [[item for item in earlier if item != target] for earlier, target, *_ in pairs]
    width = max((len(row) for row in rows), default=0)
    seen = torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long).reshape(len(rows), width)
    if prior_items is None:
        return seen
    where = torch.tensor([(row, member) for *_, row, member in pairs], dtype=torch.long).reshape(len(pairs), 2)
    targets = torch.tensor([target for _, target, *_ in pairs], dtype=torch.long)
    prior = prior_items.cpu()[where[:, 0], where[:, 1]]  # (K, P): each target's example's items before the window
    prior = prior.masked_fill(prior == targets[:, None], -1)
    return torch.cat([prior, seen], dim=1)


def masked_seen(scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """``scores`` ``(..., N)`` with ``-inf`` at each scored row's ``seen`` items (``(K, S)``, -1 = none; K rows)."""
    flat = scores.reshape(-1, scores.shape[-1])
    if seen.shape[0] != flat.shape[0]:
        raise ValueError(f"{seen.shape[0]} seen-item rows for {flat.shape[0]} scored rows "
                         "(the model must call the head on label positions only: logits_to_keep)")
    seen = seen.to(flat.device)
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    mask.scatter_(1, seen.clamp(min=0), seen >= 0)
    return flat.masked_fill(mask, float("-inf")).reshape(scores.shape)


LossFunction = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar


def feed_target_histories(loss_fn: LossFunction, mask_history: bool = False, mask_scope: str = "window") -> LossFunction:
    """``loss_fn`` that hands the attached head each target's history (:func:`target_histories`) first,
    and with ``mask_history`` each target's earlier items to leave out of its softmax
    (:func:`target_seen_items`, ``catalog_head.mask_history``); ``mask_scope="user"`` reads the
    batch's ``prior_items`` for the items before each window.

    A no-op wrapper for heads without ``history_pool`` when ``mask_history`` is off.

    Raises:
        ValueError: ``mask_scope="user"`` and a batch without ``prior_items`` (examples built
            without the column, or a collate that drops it).
    """

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        head = attached_head(model)
        if head is None or (head.pool is None and not mask_history):
            return loss_fn(model, batch)
        prior = None
        if mask_history and mask_scope == "user":
            prior = batch.get("prior_items")
            if prior is None:
                raise ValueError("catalog_head.mask_scope=user needs the examples' prior_items in every batch; "
                                 "this batch has none (build the catalog examples with the prior_items column)")
        pairs = _earlier_targets(batch["labels"], batch.get("position_ids"))  # one pass over the labels for both
        history = None if head.pool is None else _latest_rows(pairs, head.history_pool).to(head.device)
        seen = _seen_rows(pairs, prior).to(head.device) if mask_history else None
        with head.feeding(history, seen):
            return loss_fn(model, batch)

    return loss


def title_texts(catalog: Catalog, prompt_cfg: Any, template: Any) -> list[str]:
    """Each item's title exactly as a history line starts with it (the completion minus its newline)."""
    from llmrec.serialize import completion_text

    return [completion_text(item, prompt_cfg, template).rstrip("\n") for item in catalog]


@torch.no_grad()
def title_vectors(embeddings: torch.Tensor, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """``(N, d)`` mean input embedding of each text's tokens (fp32).

    Args:
        embeddings: ``(V, d)`` input embedding matrix of the decoder.
        tokenizer: its tokenizer (no special tokens are added).
        texts: one title per item.
    """
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = torch.zeros(len(texts), embeddings.shape[1])
    for row, tokens in enumerate(ids):
        if not tokens:
            raise ValueError(f"item {row}: title {texts[row]!r} has no tokens")
        out[row] = embeddings[torch.tensor(tokens, device=embeddings.device)].float().mean(dim=0).cpu()
    return out


@torch.no_grad()
def hidden_title_vectors(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """``(N, d)`` mean last hidden state of each text's tokens, each text read alone by the decoder (fp32).

    Where :func:`title_vectors` averages input embeddings (what the tokens are), this averages what
    the transformer makes of the whole title in context (what the model knows about ``Heat (1995)``).
    ``model`` is read as it is: call it before any adapter is trained (or with adapters disabled) so
    that training and loading compute the same vectors.
    """
    backbone = _backbone(model)
    device = next(backbone.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # real tokens at positions 0.. whatever the batch's padding
    try:
        out = torch.zeros(len(texts), backbone.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            mask = batch["attention_mask"].to(device)
            if bool((mask.sum(dim=1) == 0).any()):
                row = start + int((mask.sum(dim=1) == 0).nonzero()[0])
                raise ValueError(f"item {row}: title {texts[row]!r} has no tokens")
            states = backbone(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                              use_cache=False).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            out[start:start + len(chunk)] = ((states * weights).sum(dim=1) / weights.sum(dim=1)).cpu()
    finally:
        tokenizer.padding_side = padding_side
    return out


def build_catalog_head(model: Any, tokenizer: Any, catalog: Catalog, prompt_cfg: Any, residuals: bool,
                       mlp_hidden: int = 0, history_pool: int = 0, title_source: str = "embeddings",
                       saved_titles: dict[str, torch.Tensor] | None = None,
                       title_scale: float | None = None) -> CatalogHead:
    """A fresh head for ``catalog`` from ``model`` and the prompt's title format.

    ``title_source: hidden`` averages the decoder's last hidden state over each title read alone
    (:func:`hidden_title_vectors`, adapters disabled), rescaled to the mean norm of the
    ``embeddings`` vectors so that the first scores keep the scale of the LM head's logits.
    ``saved_titles`` (item id -> vector, from a saved head) takes precedence for the items it holds;
    ``title_scale`` (the saved head's) rescales the hidden vectors of the items it lacks as the
    whole catalog's were in training.
    """
    from llmrec.prompts import load_template

    template = load_template(prompt_cfg.template, prompt_cfg.prompts_dir)
    embeddings = model.get_input_embeddings().weight
    texts = title_texts(catalog, prompt_cfg, template)
    saved = saved_titles or {}
    missing = [row for row, item_id in enumerate(catalog.item_ids) if item_id not in saved]
    titles = torch.zeros(len(texts), embeddings.shape[1])
    if missing:
        wanted = [texts[row] for row in missing]
        if title_source == "hidden":
            with _adapters_disabled(model):
                vectors = hidden_title_vectors(model, tokenizer, wanted)
            if title_scale is None:
                reference = title_vectors(embeddings, tokenizer, wanted)
                title_scale = float(reference.norm(dim=1).mean() / vectors.norm(dim=1).mean())
            vectors = vectors * title_scale
        else:
            vectors = title_vectors(embeddings, tokenizer, wanted)
        titles[torch.tensor(missing)] = vectors
    for row, item_id in enumerate(catalog.item_ids):
        if item_id in saved:
            titles[row] = saved[item_id]
    head = CatalogHead(titles, catalog.item_ids, residuals, mlp_hidden, history_pool, title_source)
    head.title_scale = title_scale
    return head.to(embeddings.device)


@contextlib.contextmanager
def _adapters_disabled(model: Any) -> Iterator[None]:
    """Read ``model`` as its base weights (a PEFT model's ``disable_adapter``), in eval mode."""
    was_training = model.training
    model.eval()
    disable = getattr(model, "disable_adapter", None)
    try:
        with disable() if callable(disable) else contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)


def _language_model(model: nn.Module) -> Any:
    from llmrec.training.loss import unwrap

    inner = unwrap(model)
    if not hasattr(inner, "lm_head"):
        raise ValueError(f"{type(inner).__name__} has no lm_head: the catalog head needs a causal LM")
    return inner


def _backbone(model: nn.Module) -> Any:
    """The transformer of a causal LM without its LM head (``model.model`` for Llama)."""
    inner = _language_model(model)
    return getattr(inner, inner.base_model_prefix)


def attach_catalog_head(model: nn.Module, head: CatalogHead) -> nn.Module:
    """Put ``head`` in place of the model's ``lm_head``; returns the LM head it replaced.

    The head's parameters then belong to the model (optimizer, checkpoints and resume see them).
    """
    inner = _language_model(model)
    original: nn.Module = inner.lm_head
    inner.lm_head = head
    return original


def detach_catalog_head(model: nn.Module, original: nn.Module) -> None:
    """Put the language-model head back (after training)."""
    _language_model(model).lm_head = original


def attached_head(model: nn.Module) -> CatalogHead | None:
    """The catalog head attached to ``model`` (None for a language-model head or a model without one)."""
    from llmrec.training.loss import unwrap

    head = getattr(unwrap(model), "lm_head", None)
    return head if isinstance(head, CatalogHead) else None


def save_catalog_head(head: CatalogHead, path: Path) -> None:
    """Write the head's trained state (atomically)."""
    with atomic_file(path, mode="wb") as handle:
        torch.save(head.head_state(), handle)


def load_catalog_head(path: Path, model: Any, tokenizer: Any, catalog: Catalog, prompt_cfg: Any) -> CatalogHead:
    """Rebuild the head of a run for ``catalog``: title vectors from ``model``, trained state from ``path``.

    Residuals are matched by item id; an item the run never saw scores by its title alone. Title
    vectors of ``title_source: hidden`` come from the saved head by item id; those of new items are
    computed from ``model`` with its adapters disabled (from merged weights when the adapter is
    merged: close to, not exactly, what training would have computed).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is a catalog-head run but {path.name} is missing")
    state = torch.load(path, map_location="cpu", weights_only=True)
    mlp_state = state.get("mlp")
    mlp_hidden = mlp_state["1.weight"].shape[0] if mlp_state is not None else 0
    title_source = str(state.get("title_source", "embeddings"))
    saved = dict(zip(state["item_ids"], state["titles"], strict=True)) if "titles" in state else None
    head = build_catalog_head(model, tokenizer, catalog, prompt_cfg, residuals="residuals" in state,
                              mlp_hidden=mlp_hidden, history_pool=int(state.get("history_pool", 0)),
                              title_source=title_source, saved_titles=saved,
                              title_scale=float(state["title_scale"]) if "title_scale" in state else None)
    device = head.device
    with torch.no_grad():
        head.proj.weight.copy_(state["proj"])
        if head.mlp is not None:
            head.mlp.load_state_dict(mlp_state)
        if head.pool is not None:
            head.pool.load_state_dict(state["pool"])
        if head.residuals is not None:
            known = {item_id: row for row, item_id in enumerate(state["item_ids"])}
            rows = torch.tensor([known.get(item_id, -1) for item_id in catalog.item_ids])
            hit = rows >= 0
            head.residuals.zero_()
            head.residuals[hit.to(device)] = state["residuals"][rows[hit]].to(device)
    return head.eval()


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index of each row's last real token (left or right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(dims=[1]).long().argmax(dim=1)


class CatalogHeadScorer:
    """``CatalogScorer`` of a decoder with a catalog head: ``(B, N)`` scores, one forward pass per batch.

    Args:
        model: the decoder (PEFT-wrapped or merged), in eval mode.
        tokenizer: its tokenizer.
        head: the trained :class:`CatalogHead` for the catalog being ranked.
        render: ``history -> prompt text`` (the run's template; the prompt ends where a title would start),
            or several such functions, one per view of the history (``catalog_head.history_views``:
            the same prompt cut to fewer latest items). With more than one, an item's score is its
            mean log-softmax over the views (items rank as by the product of the views' distributions).
        batch_size: users per forward pass.
        add_special_tokens: tokenize prompts as training did.
    """

    def __init__(self, model: Any, tokenizer: Any, head: CatalogHead,
                 render: Callable[[UserSequence], str] | Sequence[Callable[[UserSequence], str]],
                 batch_size: int = 16, add_special_tokens: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.head = head
        self.renders = [render] if callable(render) else list(render)
        if not self.renders:
            raise ValueError("CatalogHeadScorer needs at least one render function")
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        self.backbone = _backbone(model)

    @torch.no_grad()
    def hidden(self, histories: Sequence[UserSequence], render: Callable[[UserSequence], str] | None = None) -> torch.Tensor:
        """``(B, d)`` last hidden state after each history's prompt (``render``: the first view's)."""
        device = self.head.device
        render = self.renders[0] if render is None else render
        batch = self.tokenizer([render(h) for h in histories], return_tensors="pt", padding=True,
                               add_special_tokens=self.add_special_tokens)
        mask = batch["attention_mask"].to(device)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
        out = self.backbone(input_ids=batch["input_ids"].to(device), attention_mask=mask, position_ids=positions,
                            use_cache=False)
        states = out.last_hidden_state  # (B, T, d)
        return states[torch.arange(len(histories), device=device), last_positions(mask)]

    @torch.no_grad()
    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        """``(len(histories), N)`` item scores (higher is better), fp32 on the CPU."""
        if not histories:
            return torch.zeros(0, len(self.head.item_ids))
        items = self.head.item_matrix()  # (N, d) once per call, not once per batch of users
        chunks = []
        for start in range(0, len(histories), self.batch_size):
            batch = histories[start:start + self.batch_size]
            recent = self.head.recent(batch)  # the pool reads the history, not the prompt: the same in every view
            if len(self.renders) == 1:
                chunks.append(self.head(self.hidden(batch), items, recent).float().cpu())
                continue
            views = [torch.log_softmax(self.head(self.hidden(batch, render), items, recent).float(), dim=-1)
                     for render in self.renders]
            chunks.append(torch.stack(views).mean(dim=0).cpu())
        return torch.cat(chunks)
