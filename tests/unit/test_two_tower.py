"""Two-tower text recommender on a tiny BERT: loss, exclusion, cache invalidation, run directory."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from llmrec.config import ConfigError, LoraConfig, ModelConfig, TrainConfig, load_config
from llmrec.data.dataset import PreparedDataset, save_prepared
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.encoder.recommender import ItemEmbeddingCache, TwoTowerRecommender
from llmrec.encoder.train import (
    EncoderRunConfig,
    exclusion_mask,
    lora_for_layers,
    train_two_tower,
    training_pairs,
)
from llmrec.encoder.two_tower import EncoderConfig, TextSpec, TwoTowerModel, history_document, info_nce
from tests.tiny import FIXTURE_TITLES, tiny_bert

REPO = Path(__file__).resolve().parents[2]
GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi", "Thriller"]


def tiny_catalog() -> Catalog:
    """The fixture titles with a year attribute and one or two genres each."""
    items = []
    for i, text in enumerate(FIXTURE_TITLES):
        title, year = text.rsplit(" (", 1)
        genres = (GENRES[i % 6],) if i % 3 else (GENRES[i % 6], GENRES[(i + 2) % 6])
        items.append(Item(str(i + 1), title, genres, {"year": year.rstrip(")")}))
    return Catalog(items)


def make_tiny_dataset(root: Path, users: int = 12, length: int = 12) -> PreparedDataset:
    """A leave-one-out prepared dataset: ``users`` users with ``length`` distinct items each."""
    catalog = tiny_catalog()
    rows = []
    gen = torch.Generator().manual_seed(0)
    for u in range(users):
        items = torch.randperm(len(catalog), generator=gen)[:length].tolist()
        for t, index in enumerate(items):
            split = "test" if t == length - 1 else "valid" if t == length - 2 else "train"
            rows.append({"user_id": str(u + 1), "item_id": catalog[index].item_id, "timestamp": 1000 + t,
                         "action": "rate", "rating": float(1 + (u + t) % 5), "split": split, "item_index": index})
    path = save_prepared(root / "data", pd.DataFrame(rows), catalog, {"source": "test"}, overwrite=True)
    return PreparedDataset.load(path)


def save_tiny_encoder(root: Path, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A tiny BERT + the fixture tokenizer saved as a local model directory."""
    path = root / "tiny-bert"
    if not path.exists():
        tiny_bert(len(tokenizer)).save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    return path


def tiny_encoder_config(root: Path, model_dir: Path, **encoder: object) -> EncoderRunConfig:
    cfg = EncoderRunConfig(
        model=ModelConfig(name_or_path=str(model_dir), dtype="fp32", attn_implementation="eager"),
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
        train=TrainConfig(output_dir=str(root / "run"), batch_size=8, learning_rate=5e-3, max_steps=4,
                          mixed_precision="no", log_every_steps=1, warmup_ratio=0.0),
        encoder=EncoderConfig(max_user_tokens=64, max_item_tokens=16, **encoder),  # type: ignore[arg-type]
    )
    cfg.validate()
    return cfg


def test_info_nce_equals_cross_entropy_and_masks_excluded_columns() -> None:
    users = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    targets = torch.tensor([0, 2, 4])
    logits = users @ items.T / 0.1
    assert torch.allclose(info_nce(users, items, targets, 0.1), torch.nn.functional.cross_entropy(logits, targets))
    exclude = torch.zeros(3, 5, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 2] = True  # row 1's target column stays
    expected = torch.nn.functional.cross_entropy(logits.masked_fill(torch.tensor(
        [[False, True, False, False, False]] + [[False] * 5] * 2), float("-inf")), targets)
    assert torch.allclose(info_nce(users, items, targets, 0.1, exclude), expected)


def test_exclusion_mask_marks_history_items_and_duplicate_targets() -> None:
    def seq(items: tuple[int, ...]) -> UserSequence:
        return UserSequence("u", items, tuple(range(len(items))), ("rate",) * len(items), (None,) * len(items))

    histories = [seq((1, 2)), seq((3,))]
    targets = torch.tensor([5, 5])
    columns = torch.tensor([5, 5, 2])  # in-batch targets + one sampled negative (item 2)
    mask = exclusion_mask(histories, targets, columns)
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    full = exclusion_mask(histories, targets, torch.arange(6))
    assert full[0].nonzero().flatten().tolist() == [1, 2, 5]
    assert full[1].nonzero().flatten().tolist() == [3, 5]


def test_training_pairs_use_only_the_given_sequences_and_last_positions() -> None:
    seqs = [UserSequence("a", (1, 2, 3, 4), (0, 1, 2, 3), ("rate",) * 4, (None,) * 4)]
    assert training_pairs(seqs) == [(0, 1), (0, 2), (0, 3)]
    assert training_pairs(seqs, pairs_per_user=2) == [(0, 2), (0, 3)]
    assert training_pairs(seqs, min_history=3) == [(0, 3)]


def test_history_document_is_newest_first_and_capped() -> None:
    catalog = tiny_catalog()
    seq = UserSequence("u", (0, 1, 2), (0, 1, 2), ("rate",) * 3, (5.0, 4.0, 3.0))
    text = history_document(seq, catalog, TextSpec(max_history_items=2, include_categories=False, include_rating=True))
    assert text == "Star Trek: First Contact (1996) 3/5 ; Star Trek: Generations (1994) 4/5"


def test_contrastive_loss_decreases(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from llmrec.modeling.build import build_model

    dataset = make_tiny_dataset(tmp_path)
    cfg = tiny_encoder_config(tmp_path, save_tiny_encoder(tmp_path, tiny_tokenizer), item_tower="shared", negatives="in_batch")
    torch.manual_seed(0)
    lora = dataclasses.replace(cfg.lora, r=16, alpha=32)
    encoder, tokenizer = build_model(cfg.model, lora, task="feature_extraction")
    model = TwoTowerModel(encoder, "shared")
    spec = TextSpec(max_history_items=3)
    seqs = dataset.sequences(("train",))
    histories = [s.prefix(len(s) - 1) for s in seqs[:8]]
    targets = [s.items[-1] for s in seqs[:8]]
    users = tokenizer([history_document(h, dataset.catalog, spec) for h in histories], padding=True, return_tensors="pt")
    items = tokenizer([dataset.catalog[i].title for i in targets], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = info_nce(model.embed_users(dict(users)), model.embed_items(dict(items)), torch.arange(8), 0.05)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    # Below log(8) means the towers tell the 8 pairs apart, not just that the scores flattened.
    assert losses[-1] < losses[0] and max(losses[-3:]) < math.log(8) - 0.2, losses


def test_frozen_item_tower_has_no_gradient_and_ignores_adapter(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from llmrec.modeling.build import build_model

    cfg = tiny_encoder_config(tmp_path, save_tiny_encoder(tmp_path, tiny_tokenizer))
    encoder, tokenizer = build_model(cfg.model, cfg.lora, task="feature_extraction")
    model = TwoTowerModel(encoder, "frozen")
    for name, param in encoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # make the adapter change the output
    batch = dict(tokenizer(["Heat (1995)", "Alien (1979)"], padding=True, return_tensors="pt"))
    items = model.embed_items(batch)
    assert not items.requires_grad
    with encoder.disable_adapter():
        plain = model.embed_users(batch)
    assert torch.allclose(items, plain, atol=1e-6)
    assert not torch.allclose(model.embed_users(batch), plain, atol=1e-3)


def test_item_embeddings_cached_and_invalidated_when_catalog_changes(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from llmrec.modeling.build import build_model

    cfg = tiny_encoder_config(tmp_path, save_tiny_encoder(tmp_path, tiny_tokenizer))
    encoder, tokenizer = build_model(cfg.model, cfg.lora, task="feature_extraction")
    model = TwoTowerModel(encoder, "shared")
    catalog = tiny_catalog()
    cache = ItemEmbeddingCache(tmp_path / "cache")
    rec = TwoTowerRecommender(model, tokenizer, catalog, TextSpec(), "tiny", cache=cache)
    first = rec.embed_items()
    assert first.shape == (len(catalog), 64)
    assert torch.equal(rec.embed_items(), first) and cache.misses == 1
    changed = Catalog([dataclasses.replace(catalog[0], title="Star Wars: A New Hope"), *catalog.items[1:]])
    rec.catalog = changed
    second = rec.embed_items()
    assert cache.misses == 2
    assert not torch.allclose(second[0], first[0]) and torch.allclose(second[1:], first[1:], atol=1e-6)
    # A fresh cache over the same directory reuses both matrices from disk.
    disk = ItemEmbeddingCache(tmp_path / "cache")
    rec2 = TwoTowerRecommender(model, tokenizer, catalog, TextSpec(), "tiny", cache=disk)
    assert torch.equal(rec2.embed_items(), first) and disk.misses == 0
    # A shared tower whose adapter changed gets a new key.
    key = rec2.cache_key()
    for name, param in encoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    assert rec2.cache_key() != key


def test_train_save_and_reload_scores_match(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    dataset = make_tiny_dataset(tmp_path)
    cfg = tiny_encoder_config(tmp_path, save_tiny_encoder(tmp_path, tiny_tokenizer))
    run = train_two_tower(cfg, dataset, tmp_path / "run", command="pytest")
    for name in ("run.json", "config.yaml", "command.txt", "versions.json", "metrics.json", "train_curve.png",
                 "adapter/adapter_config.json", "tokenizer/tokenizer_config.json"):
        assert (run / name).exists(), name
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "encoder" and info["catalog_fingerprint"] == dataset.fingerprint
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 4 and "valid_ndcg@10" in metrics
    cases = dataset.eval_cases("test")
    rec = TwoTowerRecommender.load(run, catalog=dataset.catalog)
    scores = rec.score([c.history for c in cases])
    assert scores.shape == (len(cases), len(dataset.catalog))
    assert rec.cache.misses == 0  # the item matrix was saved with the run
    again = TwoTowerRecommender.load(run).score([c.history for c in cases])
    assert torch.allclose(scores, again, atol=1e-5)
    # Plain peft loads the adapter on the base model.
    from peft import PeftModel
    from transformers import AutoModel

    PeftModel.from_pretrained(AutoModel.from_pretrained(cfg.model.name_or_path), run / "adapter")


@pytest.mark.parametrize("negatives", ["catalog", "in_batch"])
def test_item_residuals_train_save_reload_and_cold_start(tmp_path: Path, tiny_tokenizer, negatives: str) -> None:  # type: ignore[no-untyped-def]
    dataset = make_tiny_dataset(tmp_path)
    tower = "frozen" if negatives == "catalog" else "shared"
    cfg = tiny_encoder_config(tmp_path, save_tiny_encoder(tmp_path, tiny_tokenizer), item_tower=tower,
                              negatives=negatives, item_ids=True, item_id_learning_rate=0.05)
    cfg.train = dataclasses.replace(cfg.train, max_steps=0, epochs=1)  # one pass over every train pair
    run = train_two_tower(cfg, dataset, tmp_path / "run", command="pytest")
    rec = TwoTowerRecommender.load(run, catalog=dataset.catalog)
    residuals = rec.model.residuals_for(dataset.catalog)
    assert residuals is not None and residuals.shape == (len(dataset.catalog), 64)
    trained = set(i for s in dataset.sequences(("train",)) for i in s.items[1:])  # items that were targets
    moved = {i for i in range(len(dataset.catalog)) if residuals[i].abs().sum() > 0}
    assert trained <= moved  # every target item's residual was updated
    cases = dataset.eval_cases("test")
    histories = [c.history for c in cases]
    scores = rec.score(histories)
    text_only = rec.embed_users(histories) @ rec.embed_items().T
    # A loaded run keeps its scored matrix: no catalog hashing or cache look-up per request...
    rec.cache = ItemEmbeddingCache()
    assert torch.equal(rec.score(histories), scores) and rec.cache.misses == 0
    # ...until the catalog changes.
    rec.catalog = Catalog(list(dataset.catalog.items))
    assert torch.allclose(rec.score(histories), scores, atol=1e-5) and rec.cache.misses == 1
    assert not torch.allclose(scores, text_only, atol=1e-4)  # the residuals change the ranking scores
    # A catalog with an unseen item: that item is scored by its text embedding alone.
    new = Item("new-1", "Brand New Film", ("Drama",), {"year": "2026"})
    grown = Catalog([*dataset.catalog.items, new])
    rec_grown = TwoTowerRecommender.load(run, catalog=grown)
    assert rec_grown.model.residuals_for(grown)[-1].abs().sum() == 0  # type: ignore[index]
    grown_scores = rec_grown.score(histories)
    assert torch.allclose(grown_scores[:, :-1], scores, atol=1e-5)
    users = rec_grown.embed_users(histories)
    assert torch.allclose(grown_scores[:, -1], users @ rec_grown.embed_items()[-1], atol=1e-5)


def test_lora_for_layers_names_block_linears() -> None:
    lora = lora_for_layers(LoraConfig(), [1])
    assert "layer.1.attention.self.query" in lora.target_modules and len(lora.target_modules) == 6
    assert lora_for_layers(LoraConfig(), []).target_modules == "preset"


def test_config_file_loads_and_contradiction_is_rejected() -> None:
    cfg = load_config([REPO / "configs/ml100k/minilm-two-tower.yaml"], schema=EncoderRunConfig)
    assert cfg.encoder.item_tower == "frozen" and cfg.model.name_or_path == "all-minilm-l6-v2"
    with pytest.raises(ConfigError, match="item_tower=frozen"):
        load_config([REPO / "configs/ml100k/minilm-two-tower.yaml"], ["encoder.item_tower=shared"], schema=EncoderRunConfig)
