"""Validation ranking during fine-tuning: NDCG@10 of the constrained ranker on a seeded user subset.

The training loop calls ``eval_fn(model, tokenizer)`` after every epoch and stops early on its
``ndcg@10``. :func:`ranking_eval_fn` builds that hook: the *same* prompt rendering, item trie and
trie-constrained beam search (or exact full-catalog scorer) that a saved run uses at inference,
and the *same* :func:`llmrec.evaluation.evaluate.evaluate` that ranks every baseline, on the
validation cases (input = train history, target = the validation item) of a seeded user subset.

Launch (used by ``llmrec.llm_benchmark``; by hand)::

    eval_fn = ranking_eval_fn(dataset, run_cfg.prompt, num_users=200, num_beams=20)
    train(run_cfg, eval_fn=eval_fn)

Multi-process: the hook uses no collective operation unless ``accelerator`` is given. Without it
every process ranks the same users with the same weights and gets the same, deterministic result,
so it is safe to call on rank 0 only or on every rank; with ``accelerator`` the users are sharded
and the result gathered (then every process must call it, as the loop does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from llmrec.config import PromptConfig, RunConfig, history_view_prompts
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import Catalog, EvalCase, UserSequence

SCORINGS = ("beam", "full_catalog", "catalog_head")


def sample_cases(cases: Sequence[EvalCase], num_users: int | None, seed: int) -> list[EvalCase]:
    """A seeded subset of ``num_users`` cases in their stored order (all of them when None or larger)."""
    if num_users is None or num_users >= len(cases):
        return list(cases)
    if num_users <= 0:
        raise ValueError(f"num_users must be positive or None, got {num_users}")
    picked = np.sort(np.random.default_rng(seed).choice(len(cases), num_users, replace=False))
    return [cases[int(i)] for i in picked]


def prompt_function(catalog: Catalog, prompt_cfg: PromptConfig, tokenizer: Any) -> Callable[[UserSequence], str]:
    """``history -> prompt text`` with the config's template, as training serialized it."""
    from llmrec.prompts import load_template
    from llmrec.serialize import render_prompt

    template = load_template(prompt_cfg.template, prompt_cfg.prompts_dir)

    def render(history: UserSequence) -> str:
        return render_prompt(history, catalog, template, tokenizer, prompt_cfg)

    return render


def view_renders(catalog: Catalog, prompt_cfg: PromptConfig, tokenizer: Any, views: Sequence[int]) -> list[Callable[[UserSequence], str]]:
    """One ``history -> prompt text`` per view (``catalog_head.history_views``): the prompt with
    ``prompt.max_history_items`` set to the view's item count; no views: the prompt as configured."""
    return [prompt_function(catalog, cfg, tokenizer) for cfg in history_view_prompts(prompt_cfg, views)]


def catalog_trie(catalog: Catalog, prompt_cfg: PromptConfig, tokenizer: Any, vocab_size: int) -> Any:
    """Item trie of every catalog completion, tokenized after the last line prompts end with."""
    from llmrec.generation.trie import build_item_trie
    from llmrec.prompts import load_template
    from llmrec.serialize import completion_text

    template = load_template(prompt_cfg.template, prompt_cfg.prompts_dir)
    probe = prompt_function(catalog, prompt_cfg, tokenizer)(UserSequence("<probe>", (0,), (0,), ("rate",), (None,)))
    body = probe.rstrip("\n")
    context = probe[body.rfind("\n") + 1:]  # the last line and its newline: BPE never merges across it
    completions = [completion_text(item, prompt_cfg, template) for item in catalog]
    return build_item_trie(completions, tokenizer, context=context, vocab_size=vocab_size)


def build_ranker(
    model: Any,
    tokenizer: Any,
    catalog: Catalog,
    prompt_cfg: PromptConfig,
    scoring: str = "beam",
    num_beams: int = 20,
    batch_size: int = 8,
    history_views: Sequence[int] = (),
) -> Any:
    """The constrained ranker of a (possibly still training) decoder: a TopKRanker or CatalogScorer.

    Args:
        model: causal LM in eval mode (a PeftModel or a bare model).
        tokenizer: its tokenizer.
        catalog: the items to rank (trie over all of them).
        prompt_cfg: how histories are serialized (the run's ``prompt`` group).
        scoring: ``beam`` (trie-constrained beam search, a TopKRanker), ``full_catalog``
            (exact log-likelihood of every item, a CatalogScorer) or ``catalog_head`` (the
            catalog head a ``train.format: catalog`` model carries, a CatalogScorer).
        num_beams: beams of the search (raised to K by the ranker when K is larger).
        batch_size: users per model call.
        history_views: ``catalog_head`` only: rank by the mean log-softmax over these prompt
            windows (``catalog_head.history_views``; empty: the configured window alone).
    """
    from llmrec.generation.decode import ConstrainedBeamRanker, FullCatalogScorer
    from llmrec.serialize import prompt_adds_special_tokens

    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    render = prompt_function(catalog, prompt_cfg, tokenizer)
    special = prompt_adds_special_tokens(tokenizer, prompt_cfg)
    if scoring == "catalog_head":
        from llmrec.modeling.catalog_head import CatalogHeadScorer, attached_head

        head = attached_head(model)
        if head is None:
            raise ValueError("scoring=catalog_head needs a model trained with train.format: catalog (no catalog head attached)")
        renders = view_renders(catalog, prompt_cfg, tokenizer, history_views)
        return CatalogHeadScorer(model, tokenizer, head, renders, batch_size=batch_size, add_special_tokens=special)
    trie = catalog_trie(catalog, prompt_cfg, tokenizer, model.get_input_embeddings().weight.shape[0])
    if scoring == "full_catalog":
        return FullCatalogScorer(model, tokenizer, trie, render, batch_size=batch_size, add_special_tokens=special)
    return ConstrainedBeamRanker(model, tokenizer, trie, render, num_beams=num_beams, batch_size=batch_size,
                                 add_special_tokens=special)


def run_ranking_eval_fn(
    run_cfg: RunConfig,
    dataset: PreparedDataset,
    num_users: int | None,
    num_beams: int = 20,
    accelerator: Any | None = None,
) -> Callable[[Any, Any], Mapping[str, float]]:
    """:func:`ranking_eval_fn` ranking as a run of ``run_cfg`` ranks, seeded by ``train.seed``.

    A ``train.format: catalog`` run is scored by its catalog head (``catalog_head.batch_size``
    users per call, over ``catalog_head.history_views``); any other decoder run by trie-constrained beam search
    (``generation.batch_size``). The benchmark's ``llm`` entries and ``train``'s own default for
    catalog runs both validate through here, so they keep the same epoch for the same users.
    """
    catalog = run_cfg.train.format == "catalog"
    return ranking_eval_fn(dataset, run_cfg.prompt, num_users=num_users, seed=run_cfg.train.seed,
                           scoring="catalog_head" if catalog else "beam", num_beams=num_beams,
                           batch_size=run_cfg.catalog_head.batch_size if catalog else run_cfg.generation.batch_size,
                           accelerator=accelerator,
                           history_views=run_cfg.catalog_head.history_views if catalog else ())


def ranking_eval_fn(
    dataset: PreparedDataset,
    prompt_cfg: PromptConfig,
    num_users: int | None = 200,
    seed: int = 0,
    scoring: str = "beam",
    num_beams: int = 20,
    ks: Sequence[int] = (10,),
    batch_size: int = 8,
    exclude_history: bool = True,
    accelerator: Any | None = None,
    history_views: Sequence[int] = (),
) -> Callable[[Any, Any], Mapping[str, float]]:
    """The loop's ``eval_fn``: validation ranking metrics of the model as it is now.

    Args:
        dataset: the prepared dataset; its ``valid`` cases are ranked.
        prompt_cfg: the run's prompt settings (same template and budget as training).
        num_users: seeded subset size (None = every validation user).
        seed: seeds the subset (fixed across epochs, so epochs are comparable).
        scoring: ``beam``, ``full_catalog`` or ``catalog_head`` (see :func:`build_ranker`).
        num_beams: beam width of the search.
        ks: cut-offs reported; 10 is always included (it drives early stopping).
        batch_size: users per model call.
        exclude_history: never rank items of the user's own history.
        accelerator: shard the users over processes and gather (every process must call the hook).
        history_views: ``catalog_head`` only: the prompt windows whose scores are averaged (see
            :func:`build_ranker`), so that validation ranks as the saved run will.

    Returns:
        ``eval_fn(model, tokenizer) -> {"ndcg@10", "ndcg@10_se", "hr@10", "mrr@10", ..., "valid_item_rate", "rank_seconds"}``
        (``ndcg@10_se``: the standard error of NDCG@10 over the sampled users).
    """
    from llmrec.evaluation.evaluate import evaluate
    from llmrec.evaluation.metrics import ndcg_standard_error

    cases = sample_cases(dataset.eval_cases("valid"), num_users, seed)
    if not cases:
        raise ValueError(f"{dataset.root}: the valid split has no evaluation cases")
    cutoffs = sorted(set(ks) | {10})
    catalog = dataset.catalog

    def eval_fn(model: Any, tokenizer: Any) -> Mapping[str, float]:
        ranker = build_ranker(model, tokenizer, catalog, prompt_cfg, scoring, max(num_beams, max(cutoffs)), batch_size,
                              history_views)
        started = time.perf_counter()
        result = evaluate(ranker, cases, len(catalog), ks=cutoffs, exclude_history=exclude_history,
                          batch_size=batch_size, accelerator=accelerator)
        out = {k: v for k, v in result.metrics.items() if k != "num_queries"}
        out["ndcg@10_se"] = ndcg_standard_error(result.ranks, 10)  # how far apart two epochs must be
        out["rank_seconds"] = time.perf_counter() - started
        out["valid_users"] = float(len(cases))
        return out

    return eval_fn
