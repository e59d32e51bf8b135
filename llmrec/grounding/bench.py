"""Grounding and constrained-decoding latency on synthetic catalogs (10^3 .. 10^6 titles) and ML-100K.

Synthetic titles are 1-4 pseudo-words (seeded syllable strings) plus a year; queries are catalog
titles perturbed the way generations go wrong (a swapped-letter typo, case change, dropped year).
Each grounder is built once per size (build time) and asked one query at a time (median and p95
latency, and top-1 recall of the perturbed query's source item). The dense grounder here embeds
with the model-free ``hashing_embedder`` at MiniLM's dimension (384), so scan latency is the real
one for that dimension while build time is not MiniLM's (``minilm_query_ms`` reports the encoder's
own per-query cost separately when the model is cached).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from llmrec.config import ModelConfig, PromptConfig
from llmrec.data.schema import Catalog, Item
from llmrec.grounding.base import Grounder, build_grounder

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def word_list(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct pseudo-words of 2-4 syllables."""
    rng, words = random.Random(seed), set[str]()
    while len(words) < count:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def synthetic_catalog(size: int, seed: int = 0, vocabulary: int = 20000) -> Catalog:
    """``size`` items titled with 1-4 capitalized pseudo-words and a year (1920-2023)."""
    rng, words = random.Random(seed), word_list(vocabulary, seed)
    items = []
    for index in range(size):
        title = " ".join(rng.choice(words).capitalize() for _ in range(rng.randint(1, 4)))
        items.append(Item(f"s{index}", title, (), {"year": str(rng.randint(1920, 2023))}))
    return Catalog(items)


def perturb(item: Item, rng: random.Random) -> str:
    """A generation-like variant of the item's title: typo, case change or dropped year."""
    kind, title = rng.randrange(3), item.title
    if kind == 0 and len(title) > 3:
        i = rng.randrange(1, len(title) - 2)
        title = title[:i] + title[i + 1] + title[i] + title[i + 2:]
        return f"{title} ({item.year})"
    if kind == 1:
        return item.display_title().lower()
    return title


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth (read + write bytes per second) of a large float32 tensor, in GB/s."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - start) / 1e9


def time_queries(grounder: Grounder, queries: Sequence[str], targets: Sequence[int], cap_s: float) -> dict[str, Any]:
    """Per-query latency (ms) and top-1 recall; stops early past ``cap_s`` seconds."""
    grounder.ground(queries[:1], k=10)  # warm-up
    latencies, hits, start = [], 0, time.perf_counter()
    for query, target in zip(queries, targets, strict=True):
        began = time.perf_counter()
        matches = grounder.ground([query], k=10)[0]
        latencies.append((time.perf_counter() - began) * 1000)
        hits += bool(matches) and matches[0].item_index == target
        if time.perf_counter() - start > cap_s:
            return {"skipped": f"time cap {cap_s:.0f}s after {len(latencies)} queries",
                    "median_ms": statistics.median(latencies)}
    return {"median_ms": statistics.median(latencies), "p95_ms": _p95(latencies),
            "recall_at_1": hits / len(queries), "queries": len(queries)}


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def grounder_params(name: str) -> dict[str, Any]:
    if name == "dense":
        from llmrec.grounding.dense import hashing_embedder

        return {"embed_fn": hashing_embedder(384)}
    if name == "bm25-words":
        return {"ngram": 0}
    if name == "dense-ivf":
        from llmrec.grounding.dense import hashing_embedder

        return {"embed_fn": hashing_embedder(384), "index": "ivf"}
    return {}


def bench_catalog(size: int, names: Sequence[str], num_queries: int, seed: int, cap_s: float,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Build time and query latency of each grounder on one synthetic catalog."""
    catalog = synthetic_catalog(size, seed)
    rng = random.Random(seed + 1)
    targets = [rng.randrange(size) for _ in range(num_queries)]
    queries = [perturb(catalog[t], rng) for t in targets]
    out: dict[str, Any] = {}
    for name in names:
        began = time.perf_counter()
        grounder = build_grounder(name.split("-")[0], catalog, **grounder_params(name))
        build_s = time.perf_counter() - began
        result = {"build_s": build_s, **time_queries(grounder, queries, targets, cap_s)}
        out[name] = result
        log(f"  n={size:>8} {name:<10} build {build_s:7.2f}s  {_describe(result)}")
        del grounder
    return out


def _describe(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']}; median so far {result['median_ms']:.1f} ms)"
    return f"median {result['median_ms']:8.2f} ms  p95 {result['p95_ms']:8.2f} ms  recall@1 {result['recall_at_1']:.2f}"


def minilm_query_ms(repeats: int = 20) -> float | None:
    """Per-query encoding latency of all-MiniLM-L6-v2 when it is in the asset cache, else None."""
    from llmrec.assets import cache_root
    from llmrec.grounding.dense import load_encoder

    path = cache_root(None) / "all-minilm-l6-v2"
    if not (path / "config.json").is_file():
        return None
    embed = load_encoder(str(path))
    embed(["Warm Up Title (1995)"])
    times = []
    for i in range(repeats):
        began = time.perf_counter()
        embed([f"Star Wras Episode {i} (1977)"])
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def bench_constrained(dataset_dir: str, model_cfg: ModelConfig, prompt_cfg: PromptConfig, batch_sizes: Sequence[int],
                      users: int, top_k: int, num_beams: int, log: Callable[[str], None],
                      single_users: int = 4) -> dict[str, Any]:
    """Per-user latency of trie-constrained top-``top_k`` on a prepared dataset's test users.

    The model (dtype, attention) and the prompt (history length, fields) come from a recipe's
    ``model`` and ``prompt`` groups; the base weights stand in for a merged adapter, which costs
    the same. Batch size 1 runs the first ``single_users`` users one by one; a batch size ``b > 1``
    runs the first ``users`` users in batches of ``b``.
    """
    from llmrec.config import LoraConfig
    from llmrec.data.dataset import PreparedDataset
    from llmrec.generation.decode import constrained_beam_search
    from llmrec.generation.trie import build_item_trie
    from llmrec.modeling.build import build_model
    from llmrec.prompts import load_template
    from llmrec.serialize import completion_text, prompt_adds_special_tokens, render_prompt

    dataset = PreparedDataset.load(dataset_dir)
    catalog, cases = dataset.catalog, dataset.eval_cases("test")[:users]
    began = time.perf_counter()
    model, tokenizer = build_model(model_cfg, LoraConfig(enabled=False))
    model.eval()
    load_s = time.perf_counter() - began
    cfg = prompt_cfg
    template = load_template(cfg.template, cfg.prompts_dir)
    prompts = [render_prompt(case.history, catalog, template, tokenizer, cfg) for case in cases]
    body = prompts[0].rstrip("\n")
    context = prompts[0][body.rfind("\n") + 1:]  # the line the prompts end with
    began = time.perf_counter()
    trie = build_item_trie([completion_text(item, cfg, template) for item in catalog], tokenizer, context=context,
                           vocab_size=model.get_input_embeddings().weight.shape[0])
    trie_s = time.perf_counter() - began
    special = prompt_adds_special_tokens(tokenizer, cfg)
    exclude = [set(case.history.items) for case in cases]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=special)["input_ids"]) for p in prompts]
    out: dict[str, Any] = {"model_load_s": load_s, "trie_build_s": trie_s, "trie_nodes": trie.num_nodes,
                           "items": trie.num_items, "trie_depth": trie.max_depth, "top_k": top_k,
                           "num_beams": num_beams, "mean_prompt_tokens": statistics.mean(prompt_tokens),
                           "threads": torch.get_num_threads(), "dtype": str(next(model.parameters()).dtype),
                           "attn_implementation": model_cfg.attn_implementation,
                           "max_history_items": cfg.max_history_items}
    log(f"  model load {load_s:.1f}s, trie {trie.num_nodes} nodes / depth {trie.max_depth} in {trie_s:.2f}s, "
        f"mean prompt {out['mean_prompt_tokens']:.0f} tokens")
    for batch in batch_sizes:
        per_user, invalid = [], 0
        count = min(single_users, len(prompts)) if batch == 1 else len(prompts)
        for start in range(0, count, batch):
            began = time.perf_counter()
            items, _ = constrained_beam_search(model, tokenizer, prompts[start:start + batch], trie, top_k=top_k,
                                               num_beams=num_beams, exclude=exclude[start:start + batch],
                                               add_special_tokens=special)
            per_user.append((time.perf_counter() - began) / len(items))
            for row, got in enumerate(items.tolist()):
                ok = len(set(got)) == top_k and min(got) >= 0 and not set(got) & exclude[start + row]
                invalid += not ok
        out[f"batch_{batch}"] = {"median_s_per_user": statistics.median(per_user), "batches": len(per_user),
                                 "rows_not_k_valid_distinct_unseen": invalid}
        log(f"  batch {batch:>3}: {statistics.median(per_user):.3f} s/user over {len(per_user)} batch(es), "
            f"invalid rows {invalid}")
    return out
