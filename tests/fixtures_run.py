"""Tiny but real run directories for tests: a prepared dataset, a base model, a PEFT adapter.

``build_decoder_run(tmp)`` writes a decoder run (tiny Llama + LoRA adapter, the repository's
prompts copied verbatim); ``build_encoder_run(tmp)`` an encoder (two-tower, tiny BERT) run. Both
follow the run-directory contract of ``HELPERS.md`` and load with ``Recommender.load``. Models are
random: tests check plumbing and invariants (valid catalog items, exclusions, errors), not quality.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from llmrec.config import RunConfig, dump_yaml
from llmrec.data.dataset import PreparedDataset, catalog_fingerprint, save_prepared
from llmrec.data.schema import Catalog, Item
from llmrec.io import write_json
from tests.tiny import FIXTURE_TITLES, make_tokenizer, tiny_bert, tiny_llama

REPO = Path(__file__).resolve().parents[1]
GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi", "Children's", "Horror"]
NUM_USERS = 8


def fixture_catalog() -> Catalog:
    """The 50 fixture titles as items: id = position + 1, year in the attributes, two genres each."""
    items = []
    for index, display in enumerate(FIXTURE_TITLES):
        title, year = display[:-7], display[-5:-1]
        genres = (GENRES[index % len(GENRES)], GENRES[(index * 3 + 1) % len(GENRES)])
        items.append(Item(str(index + 1), title, tuple(dict.fromkeys(genres)), {"year": year}))
    return Catalog(items)


def fixture_interactions(catalog: Catalog, num_users: int = NUM_USERS, seed: int = 0) -> pd.DataFrame:
    """Each user rates 6-11 distinct items; leave-one-out split labels (last = test, before = valid)."""
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for user in range(1, num_users + 1):
        length = 6 + user % 6
        picks = torch.randperm(len(catalog), generator=generator)[:length].tolist()
        for pos, index in enumerate(picks):
            split = "test" if pos == length - 1 else "valid" if pos == length - 2 else "train"
            rows.append({"user_id": str(user), "item_id": catalog[index].item_id, "timestamp": 1000 * user + pos,
                         "action": "rate", "rating": float(1 + (index + pos) % 5), "split": split, "item_index": index})
    return pd.DataFrame(rows)


def build_dataset(root: Path) -> PreparedDataset:
    catalog = fixture_catalog()
    save_prepared(root, fixture_interactions(catalog), catalog, {"source": "tests.fixtures_run"}, overwrite=True)
    return PreparedDataset.load(root)


def _tokenizer() -> Any:
    return make_tokenizer(FIXTURE_TITLES + [" | ".join(GENRES), "Explanation: because you watched"])


def _run_json(kind: str, base: Path, dataset: PreparedDataset, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind, "base_model": str(base), "dataset_dir": str(dataset.root),
        "catalog_fingerprint": catalog_fingerprint(dataset.catalog), "seed": 0,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(), "llmrec_version": "test", **extra,
    }


def build_decoder_run(root: Path, seed: int = 0, with_explain: bool = True) -> Path:
    """A decoder run under ``root/run`` (dataset in ``root/data``, base model in ``root/base``)."""
    from peft import LoraConfig, get_peft_model

    from llmrec.prompts import save_templates

    dataset = build_dataset(root / "data")
    tokenizer = _tokenizer()
    base_dir, run = root / "base", root / "run"
    model = tiny_llama(len(tokenizer), seed=seed)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(seed)
    # init_lora_weights=False: random B, so the adapter really changes the outputs.
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "tokenizer")
    names = ["next_item", "explain"] if with_explain else ["next_item"]
    save_templates(run / "prompts", names, prompts_dir=str(REPO / "prompts"))
    config = RunConfig()
    config.model.name_or_path = str(base_dir)
    config.model.dtype = "fp32"
    config.data.prepared_dir = str(dataset.root)
    config.prompt.include_categories = True
    config.generation.num_beams = 10
    config.generation.max_new_tokens = 12
    config.train.output_dir = str(run)
    (run / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    (run / "command.txt").write_text("tests/fixtures_run.py build_decoder_run\n", encoding="utf-8")
    write_json(run / "run.json", _run_json("decoder", base_dir, dataset))
    return run


def build_encoder_run(root: Path, seed: int = 0) -> Path:
    """An encoder (two-tower) run under ``root/run`` with a tiny BERT base in ``root/base``."""
    from peft import LoraConfig, get_peft_model

    dataset = build_dataset(root / "data")
    tokenizer = _tokenizer()
    base_dir, run = root / "base", root / "run"
    model = tiny_bert(len(tokenizer), seed=seed)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "tokenizer")
    config = RunConfig()
    config.model.name_or_path = str(base_dir)
    config.model.kind = "encoder"
    config.data.prepared_dir = str(dataset.root)
    config.train.output_dir = str(run)
    (run / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    two_tower = {"item_tower": "frozen", "text": {"max_history_items": 30, "include_year": True},
                 "max_user_tokens": 128, "max_item_tokens": 32}
    write_json(run / "run.json", _run_json("encoder", base_dir, dataset, two_tower=two_tower))
    return run


def rewrite_run_json(run: Path, **changes: Any) -> None:
    """Edit fields of ``run/run.json`` (tests of load-time errors)."""
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    info.update(changes)
    write_json(run / "run.json", info)
