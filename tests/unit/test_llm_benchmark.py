"""The LLM benchmark entries and the per-epoch validation ranking (tiny random-init Llama, offline).

The recipe config itself (``configs/ml100k/smollm2-lora.yaml``) is loaded and run end to end with
only the model swapped for a random-init tiny Llama and the run shortened to a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.benchmark import MODEL_REGISTRY, BenchmarkConfig, get_builder, run_benchmark
from llmrec.config import ConfigError, PromptConfig, load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.evaluation.evaluate import evaluate
from llmrec.evaluation.protocol import CatalogScorer, TopKRanker
from llmrec.llm_benchmark import (
    LLMRanker,
    MemoRanker,
    PopularityRescorer,
    build_and_train,
    parse_params,
    recipe_config,
    recipe_digest,
    select_pop_weight,
    train_counts,
)
from llmrec.training.ranking_eval import build_ranker, ranking_eval_fn, sample_cases
from llmrec.training.run_dir import is_finished_run_of
from tests.fixtures_run import _tokenizer, build_dataset
from tests.tiny import tiny_llama
from tests.unit.train_helpers import tiny_recipe_overrides

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "configs" / "ml100k" / "smollm2-lora.yaml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return build_dataset(tmp_path_factory.mktemp("llm-bench") / "data")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llm-tok") / "tokenizer"
    _tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, dataset: PreparedDataset, tokenizer_dir: Path) -> dict[str, Any]:
    """``llm`` built from the recipe: trains 3 steps, validation-ranks, loads the run as a ranker."""
    out = tmp_path_factory.mktemp("llm-run") / "run"
    params = {"config": [RECIPE], "overrides": tiny_recipe_overrides(tokenizer_dir), "output_dir": str(out),
              "valid_users": 5, "device": "cpu", "num_beams": 20}
    ranker = build_and_train(dataset, params, seed=0)
    return {"ranker": ranker, "params": params, "run_dir": out}


def test_a_run_written_before_a_schema_field_existed_is_the_same_recipe(trained: dict[str, Any], dataset: PreparedDataset,
                                                                         tmp_path: Path):
    """config.LATER_DEFAULTS: a config.yaml without prompt.window_shifts (written before it existed)
    still reloads as the recipe's finished run and keeps the recipe's digest; another value does not."""
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(trained["run_dir"], old)
    tree = yaml.safe_load((old / "config.yaml").read_text())
    assert tree["prompt"].pop("window_shifts") == 1
    (old / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    cfg = recipe_config(parse_params(trained["params"]), dataset, seed=0)
    assert is_finished_run_of(trained["run_dir"], cfg) and is_finished_run_of(old, cfg)
    assert recipe_digest(old) == recipe_digest(trained["run_dir"])
    tree["prompt"]["window_shifts"] = 3
    (old / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    assert not is_finished_run_of(old, cfg) and recipe_digest(old) != recipe_digest(trained["run_dir"])


def test_registry_has_the_llm_entries():
    assert get_builder("llm") is build_and_train
    assert "llm+pop" in MODEL_REGISTRY


def test_recipe_loads_and_takes_the_benchmark_dataset_and_seed(dataset: PreparedDataset, tmp_path: Path):
    recipe = load_config([RECIPE])
    assert recipe.train.format == "item_span" and recipe.model.name_or_path == "smollm2-135m-instruct"
    params = parse_params({"config": RECIPE, "overrides": ["lora.r=8"], "output_dir": str(tmp_path / "r")})
    cfg = recipe_config(params, dataset, seed=7)
    assert (cfg.data.prepared_dir, cfg.train.seed, cfg.train.output_dir, cfg.lora.r) == (
        str(dataset.root), 7, str(tmp_path / "r"), 8)
    assert recipe_config(parse_params({}), dataset, 3).train.output_dir == recipe.train.output_dir + "-seed3"


@pytest.mark.parametrize("params, message", [
    ({"nope": 1}, "unknown key"),
    ({"scoring": "greedy"}, "must be one of"),
    ({"num_beams": "many"}, "num_beams"),
])
def test_bad_params_are_named(params: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        parse_params(params)


def test_recipe_trains_end_to_end_and_validates_on_ranking(trained: dict[str, Any]):
    run_dir: Path = trained["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    (last,) = metrics["evals"]
    assert 0.0 <= last["ndcg@10"] <= 1.0 and last["valid_item_rate"] == 1.0 and last["valid_users"] == 5
    assert 0.0 <= last["ndcg@10_se"] <= 1.0
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    recorded = json.loads((run_dir / "benchmark_train.json").read_text())["train_time_s"]
    assert recorded > 0 and recorded == metrics["train_seconds"]  # train()'s own clock, summed over resumes
    ranker = trained["ranker"]
    assert isinstance(ranker, TopKRanker) and not isinstance(ranker, CatalogScorer)
    assert ranker.train_time_s is not None and ranker.best_valid == last


def test_a_rerun_reloads_the_finished_run_with_its_recorded_time(
    trained: dict[str, Any], dataset: PreparedDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """A benchmark stopped after training (e.g. while ranking) and run again does not train twice."""
    import llmrec.llm_benchmark as llm_benchmark

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained again")

    monkeypatch.setattr(llm_benchmark, "_TRAINED", {})  # a fresh process
    monkeypatch.setattr(llm_benchmark, "train_run", no_training)
    recorded = json.loads((trained["run_dir"] / "benchmark_train.json").read_text())["train_time_s"]
    again = build_and_train(dataset, trained["params"], seed=0)
    assert again.train_time_s == recorded and again.run_dir == trained["run_dir"]
    # another seed in the same directory is refused, not served the first seed's model
    with pytest.raises(ConfigError, match="already holds another run"):
        build_and_train(dataset, trained["params"], seed=1)
    # a run without a recorded training time, or of another config, is trained, not reused
    monkeypatch.setattr(llm_benchmark, "_TRAINED", {})
    with pytest.raises(AssertionError, match="trained again"):
        build_and_train(dataset, trained["params"], seed=1)
    time_file = trained["run_dir"] / "benchmark_train.json"
    record = json.loads(time_file.read_text())
    assert record["validation"] == {"users": 5, "num_beams": 20}
    for params in ({**trained["params"], "valid_users": 7}, {**trained["params"], "valid_num_beams": 5}):
        monkeypatch.setattr(llm_benchmark, "_TRAINED", {})  # validated otherwise: another kept epoch
        with pytest.raises(AssertionError, match="trained again"):
            build_and_train(dataset, params, seed=0)
    try:
        del record["validation"]  # a record written before the validation setup was kept ...
        time_file.write_text(json.dumps(record))
        monkeypatch.setattr(llm_benchmark, "_TRAINED", {})
        assert build_and_train(dataset, trained["params"], seed=0).train_time_s == recorded  # ... 5 users ranked
        monkeypatch.setattr(llm_benchmark, "_TRAINED", {})
        with pytest.raises(AssertionError, match="trained again"):
            build_and_train(dataset, {**trained["params"], "valid_users": None}, seed=0)
        time_file.rename(tmp_path / "aside.json")
        monkeypatch.setattr(llm_benchmark, "_TRAINED", {})
        with pytest.raises(AssertionError, match="trained again"):
            build_and_train(dataset, trained["params"], seed=0)
    finally:
        record["validation"] = {"users": 5, "num_beams": 20}
        time_file.write_text(json.dumps(record))
        (tmp_path / "aside.json").unlink(missing_ok=True)


def test_llm_row_comes_from_the_same_evaluator_as_the_baselines(
    trained: dict[str, Any], dataset: PreparedDataset, tmp_path: Path
):
    params = {**trained["params"], "run_dir": str(trained["run_dir"])}  # reuse: no second training
    hybrid = {**params, "pop_weights": [0.0, 1.0], "pool": 30, "num_beams": 30}
    config = load_config([], schema=BenchmarkConfig, overrides=[
        f"data.prepared_dir={dataset.root}", "eval.ks=[1,5,10,20]", "num_threads=1",
        f"models=[{{name: pop}}, {{name: llm, params: {json.dumps(params)}}}, "
        f"{{name: llm+pop, params: {json.dumps(hybrid)}}}]",
    ])
    report = run_benchmark(config, tmp_path / "report", command="pytest")
    rows = {run["label"]: run for run in report["runs"]}
    assert set(rows) == {"pop", "llm", "llm+pop"}
    direct = evaluate(trained["ranker"], dataset.eval_cases("test"), len(dataset.catalog), ks=[1, 5, 10, 20])
    assert rows["llm"]["metrics"] == direct.metrics
    assert rows["llm"]["metrics"]["valid_item_rate"] == 1.0 and rows["llm+pop"]["metrics"]["valid_item_rate"] == 1.0
    assert set(rows["pop"]["metrics"]) <= set(rows["llm"]["metrics"])
    recorded = json.loads((trained["run_dir"] / "benchmark_train.json").read_text())["train_time_s"]
    assert rows["llm"]["train_time_s"] == recorded and rows["llm"]["build_time_s"] > 0  # the run's, not the reload's
    chosen = rows["llm+pop"]["best_valid"]
    assert chosen["pop_weight"] in (0.0, 1.0) and set(chosen["valid_ndcg@10_by_weight"]) == {"0.0", "1.0"}
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| llm |" in table and "valid_item_rate" in table
    assert (tmp_path / "report" / "ranks" / "llm-seed0.parquet").is_file()
    digest = recipe_digest(trained["run_dir"])
    assert rows["llm"]["recipe_sha256"] == rows["llm+pop"]["recipe_sha256"] == digest and len(digest) == 64
    assert "recipe_sha256" not in rows["pop"]  # baselines are compared by their params alone


def test_recipe_digest_ignores_the_seed_and_paths_but_not_the_recipe(trained: dict[str, Any], tmp_path: Path):
    import yaml

    tree = yaml.safe_load((trained["run_dir"] / "config.yaml").read_text())
    def digest_of(name: str, **changes: tuple[str, Any]) -> str | None:
        edited = json.loads(json.dumps(tree))
        for section, (key, value) in changes.items():
            edited[section][key] = value
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(edited))
        return recipe_digest(tmp_path / name)

    same = digest_of("same")
    assert same == recipe_digest(trained["run_dir"]) and same is not None
    assert digest_of("seed", train=("seed", 1)) == same
    assert digest_of("out", train=("output_dir", "elsewhere")) == same
    assert digest_of("data", data=("prepared_dir", "/other/ml-100k")) == same
    assert digest_of("lr", train=("learning_rate", 1.0)) != same
    assert digest_of("depth", model=("num_layers", 3)) != same
    assert recipe_digest(tmp_path / "missing") is None


def test_reused_run_with_another_catalog_is_refused(trained: dict[str, Any], tmp_path: Path):
    other = build_dataset(tmp_path / "other")
    other.manifest["catalog_fingerprint"] = "0" * 64
    with pytest.raises(ValueError, match="catalog"):
        build_and_train(other, {**trained["params"], "run_dir": str(trained["run_dir"])}, seed=0)


def test_ranking_eval_is_deterministic_and_matches_the_evaluator(dataset: PreparedDataset):
    tokenizer = _tokenizer()
    model = tiny_llama(len(tokenizer), seed=3).eval()
    prompt = PromptConfig(max_history_items=20)
    eval_fn = ranking_eval_fn(dataset, prompt, num_users=6, seed=1, ks=(5, 10))
    first, second = eval_fn(model, tokenizer), eval_fn(model, tokenizer)
    assert {k: v for k, v in first.items() if k != "rank_seconds"} == {
        k: v for k, v in second.items() if k != "rank_seconds"}
    cases = sample_cases(dataset.eval_cases("valid"), 6, seed=1)
    ranker = build_ranker(model, tokenizer, dataset.catalog, prompt, num_beams=20)
    direct = evaluate(ranker, cases, len(dataset.catalog), ks=[5, 10], batch_size=8)
    assert first["ndcg@10"] == direct.metrics["ndcg@10"] and first["hr@5"] == direct.metrics["hr@5"]
    assert first["valid_item_rate"] == 1.0


def test_exhaustive_beam_ranks_like_the_full_catalog_scorer(dataset: PreparedDataset):
    tokenizer = _tokenizer()
    model = tiny_llama(len(tokenizer), seed=5).eval()
    prompt = PromptConfig(max_history_items=20)
    cases = sample_cases(dataset.eval_cases("valid"), 4, seed=0)
    beam = build_ranker(model, tokenizer, dataset.catalog, prompt, "beam", num_beams=len(dataset.catalog))
    full = build_ranker(model, tokenizer, dataset.catalog, prompt, "full_catalog")
    with torch.inference_mode():
        scores = full.score([c.history for c in cases])  # (B, N)
        items, _ = beam.rank([c.history for c in cases], 10, [set(c.history.items) for c in cases])
    for row, case in enumerate(cases):
        masked = scores[row].clone()
        masked[list(case.history.items)] = float("-inf")
        expected = torch.sort(masked, descending=True, stable=True).indices[:10]
        assert torch.allclose(masked[items[row]], masked[expected], atol=1e-4)


def test_ranking_eval_subset_is_seeded(dataset: PreparedDataset):
    cases = dataset.eval_cases("valid")
    assert [c.user_id for c in sample_cases(cases, 3, 0)] == [c.user_id for c in sample_cases(cases, 3, 0)]
    assert len(sample_cases(cases, None, 0)) == len(cases)
    with pytest.raises(ValueError, match="num_users"):
        sample_cases(cases, 0, 0)


class FixedRanker(LLMRanker):
    """An LLMRanker stand-in returning items 0..P-1 with falling log-likelihoods (no model)."""

    def __init__(self) -> None:
        super().__init__(None, 1.0, Path("."), None)

    def rank(self, histories, k, exclude):
        items = torch.arange(k).expand(len(histories), k).clone()
        return items, -torch.arange(k, dtype=torch.float).expand(len(histories), k).clone()


def test_popularity_rescorer_blends_within_the_llm_pool(dataset: PreparedDataset):
    counts = np.zeros(len(dataset.catalog), dtype=np.int64)
    counts[7] = 1000  # one very popular item inside the pool, one outside it
    counts[40] = 5000
    histories = [c.history for c in dataset.eval_cases("test")[:2]]
    plain = PopularityRescorer(FixedRanker(), counts, weight=0.0, pool=20).rank(histories, 5, [set(), set()])
    assert plain[0][0].tolist() == [0, 1, 2, 3, 4]
    boosted = PopularityRescorer(FixedRanker(), counts, weight=2.0, pool=20).rank(histories, 5, [set(), set()])
    assert boosted[0][0, 0].item() == 7 and 40 not in boosted[0].tolist()[0]
    assert train_counts(dataset).sum() == int((dataset.interactions["split"] == "train").sum())


def test_pop_weight_is_chosen_on_validation_with_one_llm_call_per_user(dataset: PreparedDataset):
    calls = []

    class CountingRanker(FixedRanker):
        def rank(self, histories, k, exclude):
            calls.append(len(histories))
            return super().rank(histories, k, exclude)

    valid = dataset.eval_cases("valid")
    counts = np.zeros(len(dataset.catalog), dtype=np.int64)
    counts[[c.target for c in valid]] = 100  # popularity points at the validation targets
    weight, found = select_pop_weight(CountingRanker(), dataset, counts, [2.0, 0.0], pool=50, num_users=None, seed=0)
    assert weight == 2.0 and found["2.0"] > found["0.0"]
    assert sum(calls) == len(valid)  # the second weight re-used the memoized lists
    memo = MemoRanker(FixedRanker())
    first = memo.rank([valid[0].history], 5, [set()])
    assert torch.equal(first[0], memo.rank([valid[0].history], 5, [set()])[0])
