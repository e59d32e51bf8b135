"""The benchmark: registry, config, report files (on a tiny synthetic dataset)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from llmrec.benchmark import (
    MODEL_REGISTRY,
    TAG_REGISTRY,
    BenchmarkConfig,
    BenchmarkModel,
    get_builder,
    merge_reports,
    register_model,
    register_tag_model,
    run_benchmark,
    seeded_subset,
    select_entries,
    summarize,
)
from llmrec.config import ConfigError, EvalConfig, load_config
from llmrec.data.dataset import PreparedDataset, save_prepared
from llmrec.data.schema import Catalog, Item
from llmrec.tags.baselines import CooccurrenceTags, MostFrequentTags, evaluate_tags
from llmrec.tags.benchmark import build_classifier, run_tag_one

NUM_ITEMS = 12
TAGS = ("Action", "Comedy", "Drama")


def item_tags(i: int) -> tuple[str, ...]:
    """One or two tags per item; the last item has none (its targets are skipped by the tag metrics)."""
    if i == NUM_ITEMS - 1:
        return ()
    return (TAGS[i % 3],) if i % 2 else (TAGS[i % 3], TAGS[(i + 1) % 3])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    rows = []
    for user in range(30):
        for t in range(8):
            item = (user + t) % NUM_ITEMS
            split = "test" if t == 7 else "valid" if t == 6 else "train"
            rows.append((f"u{user}", f"i{item}", t, "rate", None, split, item))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "action", "rating", "split", "item_index"])
    catalog = Catalog(Item(f"i{i}", f"Item {i}", item_tags(i)) for i in range(NUM_ITEMS))
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
    (tmp_path / "sasrec-base.yaml").write_text("hidden_size: 8\nnum_blocks: 1\ntrain: {max_len: 6}\n")
    (tmp_path / "sasrec.yaml").write_text("include: sasrec-base.yaml\ntrain: {max_epochs: 1}\n")
    done = runner.invoke(app, ["evaluate", "--model", "sasrec", "--params", str(tmp_path / "sasrec.yaml"),
                               "--dataset-dir", str(data_dir), "--out", str(tmp_path / "s")])
    assert done.exit_code == 0, done.output  # the included file's keys reach the builder with the file's own
    (tmp_path / "sasrec.yaml").write_text("hidden_size: [8\n")
    bad = runner.invoke(app, ["evaluate", "--model", "sasrec", "--params", str(tmp_path / "sasrec.yaml"),
                              "--dataset-dir", str(data_dir), "--out", str(tmp_path / "s2")])
    assert bad.exit_code != 0 and "sasrec.yaml" in bad.output and not (tmp_path / "s2").exists()
    bad = runner.invoke(app, ["benchmark", "--config", config, "--seeds", "a,b"])
    assert bad.exit_code != 0
    only = runner.invoke(app, ["benchmark", "--config", config, "--out", str(tmp_path / "o"), "--only", "pop"])
    assert only.exit_code == 0, only.output
    assert [r["label"] for r in json.loads((tmp_path / "o" / "results.json").read_text())["runs"]] == ["pop"]
    bad = runner.invoke(app, ["benchmark", "--config", config, "--only", "pop,nope"])
    assert bad.exit_code != 0 and "nope" in bad.output


def test_merge_reports_joins_seeds_of_separate_commands(tmp_path, data_dir):
    config = write_config(tmp_path, data_dir)
    for seed in (0, 1):
        cfg = load_config([config], [f"seeds=[{seed}]", "models=[{name: pop}, {name: sasrec, params: "
                                     "{hidden_size: 8, num_blocks: 1, train: {max_len: 6, max_epochs: 1}}}]"],
                          schema=BenchmarkConfig)
        run_benchmark(cfg, tmp_path / f"s{seed}", command=f"bench seed {seed}")
    both = load_config([config], ["seeds=[0,1]", "models=[{name: pop}, {name: sasrec, params: "
                                  "{hidden_size: 8, num_blocks: 1, train: {max_len: 6, max_epochs: 1}}}]"],
                       schema=BenchmarkConfig)
    together = run_benchmark(both, tmp_path / "together")
    merged = merge_reports([tmp_path / "s1", tmp_path / "s0"], tmp_path / "merged", command="merge")
    # the same rows, in the same order, with the same numbers as one command running both seeds
    assert [(r["label"], r["seed"]) for r in merged["runs"]] == [(r["label"], r["seed"]) for r in together["runs"]]
    for got, want in zip(merged["runs"], together["runs"], strict=True):
        assert got["metrics"] == pytest.approx(want["metrics"])
    sasrec = next(s for s in merged["summary"] if s["label"] == "sasrec")
    want = next(s for s in together["summary"] if s["label"] == "sasrec")
    assert sasrec["seeds"] == [0, 1] and sasrec["stats"]["ndcg@10"] == pytest.approx(want["stats"]["ndcg@10"])
    out = tmp_path / "merged"
    assert sorted(p.name for p in (out / "ranks").iterdir()) == sorted(p.name for p in (tmp_path / "together" / "ranks").iterdir())
    markdown = (out / "results.md").read_text()
    assert "| sasrec (mean ± std)" in markdown.replace("**", "") and "bench seed 0" in markdown and "bench seed 1" in markdown
    assert json.loads((out / "results.json").read_text())["command"] == "merge"


def test_merge_reports_refuses_different_setups(tmp_path, data_dir):
    config = write_config(tmp_path, data_dir)
    for name, extra in (("a", ["seeds=[0]"]), ("b", ["seeds=[1]"]), ("dup", ["seeds=[0]"]),
                        ("k", ["seeds=[1]", "eval.ks=[5]"])):
        cfg = load_config([config], [*extra, "models=[{name: pop}]"], schema=BenchmarkConfig)
        run_benchmark(cfg, tmp_path / name)
    with pytest.raises(ConfigError, match=r"pop.*seed 0.*also in"):
        merge_reports([tmp_path / "a", tmp_path / "dup"], tmp_path / "m")
    with pytest.raises(ConfigError, match=r"k/results.json: field 'eval' differs"):
        merge_reports([tmp_path / "a", tmp_path / "k"], tmp_path / "m")
    report = json.loads((tmp_path / "b" / "results.json").read_text())
    report["runs"][0]["params"] = {"other": 1}
    (tmp_path / "b" / "results.json").write_text(json.dumps(report))
    with pytest.raises(ConfigError, match=r"runs\[pop\].model/params"):
        merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    # an LLM row's recipe content (recipe_sha256) must agree too; a report without one (older) is not compared
    report["runs"][0]["params"] = {}
    edited = json.loads((tmp_path / "a" / "results.json").read_text())
    edited["runs"][0]["recipe_sha256"] = "1" * 64
    (tmp_path / "a" / "results.json").write_text(json.dumps(edited))
    (tmp_path / "b" / "results.json").write_text(json.dumps({**report, "runs": [
        {**report["runs"][0], "recipe_sha256": "2" * 64}]}))
    with pytest.raises(ConfigError, match=r"runs\[pop\].recipe_sha256' differs"):
        merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    (tmp_path / "b" / "results.json").write_text(json.dumps(report))  # no digest: merges with "a"
    assert len(merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m2")["runs"]) == 2
    # where a run lives (run_dir / output_dir) is not its setup when the recipe digests agree ...
    edited["runs"][0]["params"] = {"scoring": "catalog_head"}
    (tmp_path / "a" / "results.json").write_text(json.dumps(edited))
    reused = {**report["runs"][0], "recipe_sha256": "1" * 64,
              "params": {"scoring": "catalog_head", "run_dir": "runs/x-seed1"}}
    (tmp_path / "b" / "results.json").write_text(json.dumps({**report, "runs": [reused]}))
    assert len(merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m3")["runs"]) == 2
    # ... but without a digest to vouch for the recipe it is compared like any other param
    (tmp_path / "b" / "results.json").write_text(json.dumps({**report, "runs": [
        {key: value for key, value in reused.items() if key != "recipe_sha256"}]}))
    with pytest.raises(ConfigError, match=r"runs\[pop\].model/params"):
        merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    (tmp_path / "b" / "results.json").write_text(json.dumps({**report, "runs": [
        {**reused, "params": {"scoring": "beam", "run_dir": "runs/x-seed1"}}]}))  # a real difference still counts
    with pytest.raises(ConfigError, match=r"runs\[pop\].model/params"):
        merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    edited["runs"][0]["params"] = {}
    (tmp_path / "a" / "results.json").write_text(json.dumps(edited))
    (tmp_path / "b" / "results.json").write_text("{\n  oops")
    with pytest.raises(ConfigError, match=r"b/results.json: invalid JSON at line 2"):
        merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    (tmp_path / "b" / "results.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"b/results.json: top level must be an object"):
        merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    with pytest.raises(ConfigError, match="no such report"):
        merge_reports([tmp_path / "a", tmp_path / "missing"], tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing half-written
    from llmrec.cli import _register_all, app

    _register_all()
    bad = CliRunner().invoke(app, ["merge-reports", str(tmp_path / "a"), str(tmp_path / "dup"), "--out", str(tmp_path / "m")])
    assert bad.exit_code != 0 and "also in" in bad.output
    (tmp_path / "b").rename(tmp_path / "broken")
    run_benchmark(load_config([config], ["seeds=[1]", "models=[{name: pop}]"], schema=BenchmarkConfig), tmp_path / "b")
    done = CliRunner().invoke(app, ["merge-reports", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert done.exit_code == 0, done.output
    assert "pop (mean ± std)" in done.output.replace("**", "")


def test_select_entries_keeps_the_named_rows(tmp_path, data_dir):
    config = load_config([write_config(tmp_path, data_dir, "tags:\n  - {name: most_frequent}")], schema=BenchmarkConfig)
    picked = select_entries(config, ["sasrec", "most_frequent"])
    assert [m.name for m in picked.models] == ["sasrec"] and [t.name for t in picked.tags] == ["most_frequent"]
    assert [m.name for m in config.models] == ["pop", "sasrec"]  # the loaded config is left alone
    as_text = select_entries(config, " sasrec, most_frequent,")  # the --only text of both entry points
    assert [m.name for m in as_text.models] == ["sasrec"] and [t.name for t in as_text.tags] == ["most_frequent"]
    with pytest.raises(ConfigError, match="at least one model"):
        select_entries(config, ["most_frequent"])  # the ranking table needs a model
    with pytest.raises(ConfigError, match="no entry labelled"):
        select_entries(config, ["gru4rec"])


def write_tag_config(tmp_path, data_dir, tags: str) -> str:
    path = tmp_path / "bench-tags.yaml"
    path.write_text(f"data: {{prepared_dir: {data_dir}}}\nnum_threads: 1\nsave_ranks: false\n"
                    f"models: [{{name: pop}}]\ntags:\n{tags}", encoding="utf-8")
    return str(path)


def test_tag_table_scores_the_baselines_like_evaluate_tags(tmp_path, data_dir):
    tags = """  - {name: most_frequent}
  - {name: cooccurrence, params: {window: 3, decay: 0.5}}
  - {name: cooccurrence, label: cooc-subset, params: {window: 3, decay: 0.5, max_users: 5}}
"""
    config = load_config([write_tag_config(tmp_path, data_dir, tags)], schema=BenchmarkConfig)
    run_benchmark(config, tmp_path / "report", command="pytest")
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    rows = {row["label"]: row for row in saved["tags"]}
    assert list(rows) == ["most_frequent", "cooccurrence", "cooc-subset"]
    # The same split, cases and fit sequences as scripts/train_tags.py: test targets, train + valid inputs.
    dataset = PreparedDataset.load(data_dir)
    cases = dataset.eval_cases("test")
    seen = dataset.sequences(("train", "valid"))
    expected = {
        "most_frequent": evaluate_tags(MostFrequentTags(dataset.catalog).fit(seen), cases, dataset.catalog),
        "cooccurrence": evaluate_tags(CooccurrenceTags(dataset.catalog, window=3, decay=0.5).fit(seen), cases,
                                      dataset.catalog),
        "cooc-subset": evaluate_tags(CooccurrenceTags(dataset.catalog, window=3, decay=0.5).fit(seen),
                                     seeded_subset(cases, 5, 0), dataset.catalog),
    }
    for label, metrics in expected.items():
        assert rows[label]["metrics"] == pytest.approx(metrics), label
    assert rows["most_frequent"]["users"] == 30 and rows["cooc-subset"]["users"] == 5
    assert rows["most_frequent"]["metrics"]["skipped"] > 0  # targets of the untagged item
    assert rows["cooc-subset"]["params"]["max_users"] == 5 and rows["cooccurrence"]["train_time_s"] >= 0
    markdown = (tmp_path / "report" / "results.md").read_text()
    table = markdown.split("## Interest-tag prediction", 1)[1]
    assert "| model | F1@3 | P@3 | R@3 | AUC micro | AUC macro | users | train s | infer s | seed |" in table
    assert f"| most_frequent | {expected['most_frequent']['f1@3']:.4f} |" in table
    assert markdown.index("| pop |") < markdown.index("## Interest-tag prediction")
    # The valid split: baselines learn from train only, and eval.max_users applies to tag rows too.
    spec = BenchmarkModel(name="most_frequent")
    row = run_tag_one(dataset, spec, 0, EvalConfig(split="valid", max_users=7, seed=3))
    valid_cases = seeded_subset(dataset.eval_cases("valid"), 7, 3)
    train_only = MostFrequentTags(dataset.catalog).fit(dataset.sequences(("train",)))
    assert row["users"] == 7
    assert row["metrics"] == pytest.approx(evaluate_tags(train_only, valid_cases, dataset.catalog))


def test_no_tags_no_tag_table(tmp_path, data_dir):
    config = load_config([write_config(tmp_path, data_dir)], ["models=[{name: pop}]"], schema=BenchmarkConfig)
    report = run_benchmark(config, tmp_path / "report")
    assert report["tags"] == [] and "Interest-tag" not in (tmp_path / "report" / "results.md").read_text()


def test_tag_config_errors_name_the_problem(tmp_path, data_dir):
    with pytest.raises(ConfigError, match=r"tags: unknown tag model\(s\) \['genre_oracle'\]; known: .*most_frequent"):
        load_config([write_tag_config(tmp_path, data_dir, "  - {name: genre_oracle}\n")], schema=BenchmarkConfig)
    with pytest.raises(ConfigError, match="tags: labels must be unique"):
        load_config([write_tag_config(tmp_path, data_dir, "  - {name: most_frequent}\n  - {name: most_frequent}\n")],
                    schema=BenchmarkConfig)
    with pytest.raises(ConfigError, match="max_users must be a positive integer"):
        load_config([write_tag_config(tmp_path, data_dir, "  - {name: most_frequent, params: {max_users: 0}}\n")],
                    schema=BenchmarkConfig)
    dataset = PreparedDataset.load(data_dir)
    with pytest.raises(ConfigError, match="exactly one of run_dir"):
        build_classifier(dataset, {}, 0, "test")
    with pytest.raises(ConfigError, match="exactly one of run_dir"):
        build_classifier(dataset, {"run_dir": "x", "config": ["y.yaml"]}, 0, "test")
    with pytest.raises(ConfigError, match="cooccurrence.params"):
        run_tag_one(dataset, BenchmarkModel(name="cooccurrence", params={"windw": 3}), 0, EvalConfig())


class LastItemTags:
    """A TagScorer: the tags of the user's last item, then the vocabulary order."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.tags = list(TAGS)

    def score_tags(self, histories):
        import numpy as np

        scores = np.zeros((len(histories), len(self.tags)))
        for b, history in enumerate(histories):
            for tag in self.catalog[history.items[-1]].categories:
                scores[b, self.tags.index(tag)] = 1.0
        return scores


def test_a_tag_model_registered_at_run_time(tmp_path, data_dir):
    calls = []

    def build(dataset, params, seed, split):
        calls.append((params, seed, split))
        return LastItemTags(dataset.catalog)

    register_tag_model("last_item", build)
    try:
        tags = "  - {name: last_item, params: {max_users: 12, note: x}, seeds: [4, 5]}\n"
        config = load_config([write_tag_config(tmp_path, data_dir, tags)], schema=BenchmarkConfig)
        report = run_benchmark(config, tmp_path / "report")
    finally:
        TAG_REGISTRY.pop("last_item")
    assert calls == [({"note": "x"}, 4, "test"), ({"note": "x"}, 5, "test")]  # max_users is the benchmark's
    dataset = PreparedDataset.load(data_dir)
    expected = evaluate_tags(LastItemTags(dataset.catalog), seeded_subset(dataset.eval_cases("test"), 12, 0),
                             dataset.catalog)
    assert [row["seed"] for row in report["tags"]] == [4, 5]
    assert all(row["metrics"] == pytest.approx(expected) and row["users"] == 12 for row in report["tags"])
    assert report["tags_summary"][0]["seeds"] == [4, 5]
    assert "| **last_item (mean ± std)** |" in (tmp_path / "report" / "results.md").read_text()
    register_tag_model("not_a_scorer", lambda dataset, params, seed, split: object())
    try:
        with pytest.raises(TypeError, match="not a TagScorer"):
            run_tag_one(dataset, BenchmarkModel(name="not_a_scorer"), 0, EvalConfig())
    finally:
        TAG_REGISTRY.pop("not_a_scorer")


def test_tag_heads_train_load_and_score_as_entries(tmp_path, data_dir, tiny_tokenizer):
    from tests.tiny import tiny_llama
    from tests.unit.test_two_tower import save_tiny_encoder

    encoder = save_tiny_encoder(tmp_path, tiny_tokenizer)
    decoder = tmp_path / "tiny-llama"
    tiny_llama(len(tiny_tokenizer), seed=3).save_pretrained(str(decoder))
    tiny_tokenizer.save_pretrained(str(decoder))
    recipe = tmp_path / "tags.yaml"
    recipe.write_text(f"""# schema: llmrec.tags.classifier.TagsRunConfig
model: {{name_or_path: {encoder}, dtype: fp32, attn_implementation: eager}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
train: {{output_dir: {tmp_path / 'ignored'}, batch_size: 8, max_steps: 2, mixed_precision: "no", log_every_steps: 1}}
tags: {{max_user_tokens: 32, pairs_per_user: 2}}
""", encoding="utf-8")
    tags = f"""  - name: tag_classifier
    params: {{config: [{recipe}], overrides: [train.learning_rate=0.01], output_dir: {tmp_path / 'tag-run'}}}
  - {{name: decoder_tags, params: {{model: {decoder}, history_items: 3, max_users: 4}}}}
"""
    config = load_config([write_tag_config(tmp_path, data_dir, tags)], schema=BenchmarkConfig)
    report = run_benchmark(config, tmp_path / "report")
    trained, decoded = report["tags"]
    assert (tmp_path / "tag-run" / "run.json").is_file() and not (tmp_path / "ignored").exists()
    assert trained["users"] == 30 and 0.0 <= trained["metrics"]["auc_micro"] <= 1.0
    assert decoded["users"] == 4 and decoded["train_time_s"] == 0.0 and decoded["metrics"]["f1@3"] >= 0.0
    # Loading the run the benchmark trained scores the same users the same way.
    dataset = PreparedDataset.load(data_dir)
    loaded = run_tag_one(dataset, BenchmarkModel(name="tag_classifier", params={"run_dir": str(tmp_path / "tag-run")}),
                         0, EvalConfig())
    assert loaded["metrics"] == pytest.approx(trained["metrics"])


def test_script_benchmark_runs_only_the_named_rows(tmp_path, data_dir, capsys):
    """scripts/benchmark.py (what scripts/device_run.py calls on a GPU machine without the CLI's packages)
    takes --only and --seeds like ``llmrec benchmark``."""
    from scripts.benchmark import main

    main(["--config", write_config(tmp_path, data_dir), "--seeds", "1", "--only", "sasrec", "--out", str(tmp_path / "r")])
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [(r["label"], r["seed"]) for r in saved["runs"]] == [("sasrec", 1)]
    assert "sasrec" in capsys.readouterr().out
