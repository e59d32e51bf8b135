"""How much does the item side of a catalog head matter? A cheap probe, minutes on 2 CPU cores.

Launch::

    python scripts/probe_item_side.py --config configs/ml100k/smollm2-catalog.yaml \\
        --prepared data/ml-100k --out reports/probe-item-side.json

Item vectors start from the recipe's title vectors (mean SmolLM2 input embedding of each
``Title (Year)``, centred and scaled; ``--title-source hidden``: the mean last hidden state of the
title read alone, as ``catalog_head.title_source: hidden``) and go through one of three item sides:

* ``linear``: a shared projection (the catalog head of ``smollm2-catalog.yaml``);
* ``mlp``: the projection plus a shared title MLP (``catalog_head.title_mlp``), no per-item parameter;
* ``ids``: the projection plus a free vector per item (``catalog_head.item_residuals``).

The user side is deliberately simple and identical for all three (a shared linear map of the mean
of the last five train items' vectors), trained by full-catalog softmax on every train transition;
the score is the validation split (``--split test`` for the test split, once a recipe is chosen)
through the shared evaluator (full catalog, history excluded). Prints a table and writes it as JSON.
The ``mlp`` side stands in for the history-pool path of ``catalog_head.history_pool`` alone (the
mean of the last five items over the title-MLP item side, no transformer); it differs in centring
the title vectors rather than the pooled mean, and in an identity-initialised map without a norm.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from llmrec.config import PromptConfig, RunConfig, load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import Catalog, UserSequence
from llmrec.evaluation.evaluate import evaluate
from llmrec.io import write_json
from llmrec.modeling.build import build_model
from llmrec.modeling.catalog_head import (
    CatalogHead,
    hidden_title_vectors,
    latest,
    mean_item_vector,
    title_texts,
    title_vectors,
)
from llmrec.prompts import PromptTemplate, load_template
from llmrec.serialize import target_item

LAST = 5  # history items the probe's user reads (--last)
WEEK = 7 * 24 * 3600  # seconds (--time-context)
SIDES = ("linear", "mlp", "ids")
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "ml100k" / "smollm2-catalog.yaml"


class MeanOfLastItems(nn.Module):
    """User = linear map of the mean of the last ``size`` item vectors; ``score(histories) -> (B, N)``.

    With ``weeks`` (a :class:`WeekOf`), a learned vector for the week of the history's latest event
    is added to the user: when the user is, from their own log, not which items they are.
    """

    def __init__(self, head: CatalogHead, dim: int, size: int = LAST, weeks: WeekOf | None = None):
        super().__init__()
        self.head = head
        self.size = size
        self.user = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(self.user.weight)
        self.weeks = weeks
        self.when = nn.Embedding(weeks.count, dim) if weeks is not None else None
        if self.when is not None:
            nn.init.zeros_(self.when.weight)

    def forward(self, last: torch.Tensor, week: torch.Tensor | None = None) -> torch.Tensor:  # (B, size) indices, -1 = none
        items = self.head.item_matrix()  # (N, d)
        user = self.user(mean_item_vector(last, items))
        if self.when is not None and week is not None:
            user = user + self.when(week)
        return user @ items.T  # (B, N)

    @torch.no_grad()
    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        week = self.weeks.of([h.timestamps[-1] if h.timestamps else None for h in histories]) if self.weeks else None
        return self(last_items([list(h.items) for h in histories], self.size), week)


class WeekOf:
    """Week index of a timestamp (seconds) since the train split's first event, clipped to the train span."""

    def __init__(self, train_timestamps: Sequence[int]):
        self.start = min(train_timestamps)
        self.count = (max(train_timestamps) - self.start) // WEEK + 2  # the last slot takes later weeks and "no history"

    def of(self, timestamps: Sequence[int | None]) -> torch.Tensor:
        return torch.tensor([self.count - 1 if t is None else min(max(0, (t - self.start) // WEEK), self.count - 1)
                             for t in timestamps])


def last_items(sequences: list[list[int]], size: int) -> torch.Tensor:
    return torch.tensor([latest(s, size) for s in sequences])


def probe_texts(catalog: Catalog, prompt_cfg: PromptConfig, template: PromptTemplate, categories: bool) -> list[str]:
    """The recipe's title texts; with ``categories``, each item's history line with its categories
    and no interaction field, whatever ``prompt.include_categories`` says (the prompt is not probed)."""
    if not categories:
        return title_texts(catalog, prompt_cfg, template)
    with_categories = dataclasses.replace(prompt_cfg, include_categories=True)
    return [template.item_line(target_item(item, with_categories)).rstrip("\n") for item in catalog]


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=RECIPE, help="the recipe whose title format and model are probed")
    parser.add_argument("--prepared", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--split", choices=("valid", "test"), default="valid", help="the split scored")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="item sides to probe")
    parser.add_argument("--title-source", choices=("embeddings", "hidden"), default="embeddings",
                        help="title vectors: mean input embedding, or mean last hidden state of the title read alone")
    parser.add_argument("--title-categories", action="store_true",
                        help="title texts carry the item's categories (Heat (1995) | Action, Crime, Thriller)")
    parser.add_argument("--mlp-width", type=int, default=0, help="title MLP width of the mlp side (0 = twice the model width)")
    parser.add_argument("--last", type=int, default=LAST, help="history items the probe's user averages")
    parser.add_argument("--time-context", action="store_true",
                        help="add a learned vector for the week of the history's latest event to the user")
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides (e.g. a tiny model in tests)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg: RunConfig = load_config([args.config], [*args.overrides, "model.dtype=fp32", "lora.enabled=false"])
    data = PreparedDataset.load(args.prepared)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    texts = probe_texts(data.catalog, cfg.prompt, load_template(cfg.prompt.template, cfg.prompt.prompts_dir),
                        args.title_categories)
    if args.title_source == "hidden":
        titles = hidden_title_vectors(model.eval(), tokenizer, texts)
    else:
        titles = title_vectors(model.get_input_embeddings().weight, tokenizer, texts)
    titles = titles - titles.mean(0)
    titles = titles / titles.norm(dim=1, keepdim=True) * 3  # centred, unit length x 3
    prefixes, targets, whens = [], [], []
    train = data.sequences(("train",))
    for sequence in train:
        for j in range(1, len(sequence.items)):
            prefixes.append(list(sequence.items[max(0, j - args.last):j]))
            targets.append(sequence.items[j])
            whens.append(sequence.timestamps[j - 1])
    inputs, labels = last_items(prefixes, args.last), torch.tensor(targets)
    weeks = WeekOf([t for s in train for t in s.timestamps]) if args.time_context else None
    week = weeks.of(whens) if weeks is not None else None
    rows: list[dict[str, float | str]] = []
    for side in args.sides:
        torch.manual_seed(0)
        width = (args.mlp_width or 2 * titles.shape[1]) if side == "mlp" else 0
        head = CatalogHead(titles, data.catalog.item_ids, residuals=side == "ids", mlp_hidden=width)
        probe = MeanOfLastItems(head, titles.shape[1], args.last, weeks)
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
        start = time.perf_counter()
        for _ in range(args.epochs):
            for batch in torch.randperm(len(labels)).split(512):
                loss = nn.functional.cross_entropy(probe(inputs[batch], week[batch] if week is not None else None), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        result = evaluate(probe.eval(), data.eval_cases(args.split), len(data.catalog), ks=[10])
        rows.append({"item_side": side, "train_loss": loss.item(), f"{args.split}_ndcg@10": result.metrics["ndcg@10"],
                     f"{args.split}_hr@10": result.metrics["hr@10"], "seconds": time.perf_counter() - start})
        print(f"{side:<7} loss {loss.item():.3f}  {args.split} NDCG@10 {result.metrics['ndcg@10']:.4f}  "
              f"HR@10 {result.metrics['hr@10']:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.out:
        write_json(args.out, {"config": str(args.config), "epochs": args.epochs, "seed": 0, "split": args.split,
                              "title_source": args.title_source,
                              "title_categories": args.title_categories, "last": args.last, "time_context": args.time_context,
                              "mlp_width": args.mlp_width, "overrides": args.overrides, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
