"""The benchmark: registry, config, report files (on a tiny synthetic dataset)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from llmrec.benchmark import (
    MODEL_REGISTRY,
    BenchmarkConfig,
    get_builder,
    register_model,
    run_benchmark,
    summarize,
)
from llmrec.config import ConfigError, load_config
from llmrec.data.dataset import save_prepared
from llmrec.data.schema import Catalog, Item

NUM_ITEMS = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    rows = []
    for user in range(30):
        for t in range(8):
            item = (user + t) % NUM_ITEMS
            split = "test" if t == 7 else "valid" if t == 6 else "train"
            rows.append((f"u{user}", f"i{item}", t, "rate", None, split, item))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "action", "rating", "split", "item_index"])
    catalog = Catalog(Item(f"i{i}", f"Item {i}") for i in range(NUM_ITEMS))
    return save_prepared(tmp_path_factory.mktemp("bench") / "data", frame, catalog, {"source": "synthetic"})


class NextItemRanker:
    """A TopKRanker that knows the rule: recommends last + 1, then the rest in index order."""

    def rank(self, histories, k, exclude):
        rows = []
        for history, banned in zip(histories, exclude, strict=True):
            first = (history.items[-1] + 1) % NUM_ITEMS
            ranked = [first] + [i for i in range(NUM_ITEMS) if i != first]
            ranked = [i for i in ranked if i not in banned][:k]
            rows.append(ranked + [-1] * (k - len(ranked)))
        return torch.tensor(rows), torch.zeros(len(rows), k)


def write_config(tmp_path, data_dir, extra: str = "") -> str:
    path = tmp_path / "bench.yaml"
    path.write_text(
        f"""
data: {{prepared_dir: {data_dir}}}
eval: {{ks: [1, 5, 10]}}
seeds: [0, 1]
num_threads: 1
models:
  - {{name: pop, seeds: [0]}}
  - name: sasrec
    params: {{hidden_size: 8, num_blocks: 1, train: {{max_len: 6, max_epochs: 2, eval_every: 1, batch_size: 16}}}}
{extra}""",
        encoding="utf-8",
    )
    return str(path)


def test_benchmark_writes_the_report(tmp_path, data_dir):
    register_model("oracle", lambda dataset, params, seed: NextItemRanker())
    try:
        config = load_config([write_config(tmp_path, data_dir, "  - {name: oracle, label: next-item, seeds: [3]}")],
                             schema=BenchmarkConfig)
        report = run_benchmark(config, tmp_path / "report", command="pytest")
    finally:
        MODEL_REGISTRY.pop("oracle")
    out = tmp_path / "report"
    saved = json.loads((out / "results.json").read_text())
    assert [(r["label"], r["seed"]) for r in saved["runs"]] == [("pop", 0), ("sasrec", 0), ("sasrec", 1), ("next-item", 3)]
    oracle = saved["runs"][-1]["metrics"]
    assert oracle["hr@1"] == 1.0
    # 12 items minus 7 history items leave 5 rankable items for 10 slots: half the slots are padding
    assert oracle["valid_item_rate"] == 0.5 and saved["runs"][-1]["warnings"]["short_lists"] == 30
    assert saved["hardware"]["torch"] == torch.__version__ and saved["hardware"]["cpu"]
    sasrec_summary = next(s for s in saved["summary"] if s["label"] == "sasrec")
    assert sasrec_summary["seeds"] == [0, 1] and "std" in sasrec_summary["stats"]["ndcg@10"]
    markdown = (out / "results.md").read_text()
    assert "| sasrec (mean ± std)" in markdown.replace("**", "") and "Hardware:" in markdown
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    ranks = pd.read_parquet(out / "ranks" / "next-item-seed3.parquet")
    assert (ranks["rank"] == 0).all() and len(ranks) == 30
    assert report["total_time_s"] >= 0


def test_summary_mean_and_sample_std():
    runs = [{"label": "m", "seed": s, "metrics": {"ndcg@10": v}, "train_time_s": 1.0, "inference_time_s": 2.0}
            for s, v in ((0, 0.1), (1, 0.3))]
    stats = summarize(runs)[0]["stats"]["ndcg@10"]
    assert stats["mean"] == pytest.approx(0.2) and stats["std"] == pytest.approx(0.1414213, rel=1e-5)


def test_config_errors_name_the_problem(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="unknown model"):
        load_config([write_config(tmp_path, data_dir, "  - {name: nope}")], schema=BenchmarkConfig)
    with pytest.raises(ConfigError, match="unique"):
        load_config([write_config(tmp_path, data_dir, "  - {name: pop}")], schema=BenchmarkConfig)
    with pytest.raises(KeyError, match="unknown model"):
        get_builder("nope")


def test_cli_benchmark_and_evaluate(tmp_path, data_dir):
    from llmrec.cli import _register_all, app

    _register_all()
    runner = CliRunner()
    config = write_config(tmp_path, data_dir)
    done = runner.invoke(app, ["benchmark", "--config", config, "--out", str(tmp_path / "r"), "--seeds", "4",
                               "models=[{name: pop}]"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "r" / "results.json").read_text())["runs"][0]["model"] == "pop"
    done = runner.invoke(app, ["evaluate", "--model", "pop", "--dataset-dir", str(data_dir), "--out", str(tmp_path / "e")])
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["split"] == "test" and 0.0 <= metrics["metrics"]["ndcg@10"] <= 1.0
    assert len(pd.read_parquet(tmp_path / "e" / "ranks.parquet")) == 30
    bad = runner.invoke(app, ["benchmark", "--config", config, "--seeds", "a,b"])
    assert bad.exit_code != 0
