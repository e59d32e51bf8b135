"""Recommender.load on tiny decoder and encoder runs: queries, policies, errors, protocols, CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from llmrec.data.dataset import PreparedDataset, save_prepared
from llmrec.data.schema import Catalog, Item
from llmrec.evaluation.evaluate import evaluate
from llmrec.evaluation.protocol import CatalogScorer, TopKRanker
from llmrec.recommender import (
    NoMatchError,
    Query,
    RankingRecommender,
    Recommender,
    RecommendError,
    ScoringRecommender,
    UnknownItemError,
    UnknownUserError,
)
from llmrec.run_loading import CatalogChangedError
from tests.fixtures_run import build_decoder_run, build_encoder_run, rewrite_run_json


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_decoder_run(tmp_path_factory.mktemp("decoder"))


@pytest.fixture(scope="module")
def decoder(decoder_run: Path) -> Recommender:
    return Recommender.load(decoder_run, device="cpu")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return Recommender.load(build_encoder_run(tmp_path_factory.mktemp("encoder")), device="cpu")


def check_list(rec: Recommender, recs: list, k: int, seen: set[int]) -> None:
    assert len(recs) == k
    indices = [r.item_index for r in recs]
    assert len(set(indices)) == k and not seen & set(indices)
    for r in recs:
        assert rec.catalog[r.item_index].item_id == r.item_id and r.title == rec.catalog[r.item_index].display_title()
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)


def test_decoder_run_is_a_top_k_ranker_with_its_adapter_merged(decoder: Recommender, decoder_run: Path):
    from peft import PeftModel

    from llmrec.run_loading import load_decoder_model, read_run_config, read_run_info

    assert isinstance(decoder, RankingRecommender) and not isinstance(decoder, ScoringRecommender)
    assert isinstance(decoder, TopKRanker) and not isinstance(decoder, CatalogScorer)
    assert not isinstance(decoder.run.model, PeftModel) and decoder.method == "beam"  # adapter folded in
    info = read_run_info(decoder_run)
    unmerged, _ = load_decoder_model(info, read_run_config(decoder_run), torch.device("cpu"), merge=False)
    assert isinstance(unmerged, PeftModel)
    ids = torch.tensor([[5, 9, 17, 3, 44, 8]])
    with torch.no_grad():
        torch.testing.assert_close(decoder.run.model(input_ids=ids).logits, unmerged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_recommend_for_a_known_user_excludes_their_history(decoder: Recommender):
    seen = set(decoder.dataset.user_sequence("3").items)
    recs = decoder.recommend(user_id="3", k=7)
    check_list(decoder, recs, 7, seen)
    assert all(r.method == "beam" for r in recs)


def test_history_by_ids_titles_and_fuzzy_titles(decoder: Recommender):
    seq = decoder.history_for(history=["6", "Heat (1995)", "toy story 2", "The Godfather"])
    assert [decoder.catalog[i].item_id for i in seq.items] == ["6", "8", "7", "13"]
    recs = decoder.recommend(history=["6", "Heat (1995)"], k=5)
    check_list(decoder, recs, 5, {5, 7})
    recs_all = decoder.recommend(history=["6", "Heat (1995)"], k=5, exclude_seen=False)
    assert len(recs_all) == 5


def test_title_that_matches_nothing_names_closest_candidates(decoder: Recommender):
    with pytest.raises(NoMatchError, match=r"history entry 1 \('Star Warz Episode Nine'\)") as err:
        decoder.recommend(history=["Heat (1995)", "Star Warz Episode Nine"])
    assert err.value.status == 422
    assert any(c["title"].startswith("Star") for c in err.value.candidates)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"user_id": "nobody"}, UnknownUserError, "user id 'nobody'"),
        ({"history": []}, RecommendError, "history is empty"),
        ({"history": ["  "]}, RecommendError, "entry 0 is empty"),
        ({"history": "Heat (1995)"}, RecommendError, "not one string"),
        ({}, RecommendError, "exactly one of"),
        ({"user_id": "1", "history": ["1"]}, RecommendError, "exactly one of"),
        ({"user_id": "1", "k": 0}, RecommendError, "positive integer"),
    ],
)
def test_bad_queries_raise_clear_errors(decoder: Recommender, kwargs: dict, error: type, message: str):
    with pytest.raises(error, match=message):
        decoder.recommend(**kwargs)


def test_k_beyond_the_catalog_is_clamped_with_a_warning(decoder: Recommender, caplog: pytest.LogCaptureFixture):
    seen = set(decoder.dataset.user_sequence("2").items)
    with caplog.at_level(logging.WARNING, logger="llmrec.recommender"):
        recs = decoder.recommend(user_id="2", k=500)
    rankable = len(decoder.catalog) - len(seen)
    assert len(recs) <= rankable and "rankable" in caplog.text
    assert not seen & {r.item_index for r in recs}
    with pytest.raises(RecommendError, match="nothing is left"):
        decoder.recommend(history=[item.item_id for item in decoder.catalog], k=1)


def test_batch_matches_single_queries(decoder: Recommender):
    queries = [Query(user_id="1"), Query(history=["Alien (1979)", "Jaws (1975)"]), Query(user_id="5")]
    batch = decoder.recommend_batch(queries, k=4)
    single = [decoder.recommend(user_id=q.user_id, history=q.history, k=4) for q in queries]
    assert [[r.item_id for r in row] for row in batch] == [[r.item_id for r in row] for row in single]
    for a, b in zip(batch, single, strict=True):
        assert [r.score for r in a] == pytest.approx([r.score for r in b], abs=1e-4)


def test_exhaustive_beam_equals_full_catalog_scoring(decoder_run: Path, decoder: Recommender):
    full = Recommender.load(decoder_run, device="cpu", scoring="full_catalog")
    assert isinstance(full, ScoringRecommender) and isinstance(full, CatalogScorer)
    decoder.ranker.num_beams = len(decoder.catalog)  # exhaustive: beam search must equal exact scoring
    try:
        beam = decoder.recommend(user_id="4", k=6)
    finally:
        decoder.ranker.num_beams = decoder.run.config.generation.num_beams
    exact = full.recommend(user_id="4", k=6)
    assert [r.item_id for r in beam] == [r.item_id for r in exact]
    assert [r.score for r in beam] == pytest.approx([r.score for r in exact], abs=1e-3)


def test_evaluate_accepts_the_recommender_directly(decoder: Recommender, encoder: Recommender):
    for rec, kind in ((decoder, "ranker"), (encoder, "scorer")):
        cases = rec.dataset.eval_cases("test")
        result = evaluate(rec, cases, len(rec.catalog), ks=(1, 5))
        assert result.model_kind == kind and len(result.user_ids) == len(cases)
        assert 0.0 <= result.metrics["hr@5"] <= 1.0


def test_explain_and_tags(decoder: Recommender):
    explanation = decoder.explain(user_id="1", item_id="5")
    assert explanation.path in ("generated", "template_fallback") and 1 <= explanation.tries <= 3
    assert explanation.evidence.similarity_method == "decoder_hidden_mean"
    assert decoder.explainer.reasons(explanation.text, decoder.dataset.user_sequence("1").items, 4) == []
    with pytest.raises(UnknownItemError, match="item id '9999'"):
        decoder.explain(user_id="1", item_id="9999")
    tags = decoder.tags(user_id="1", k=3)
    assert len(tags) == 3 and all(t.name in decoder.catalog.categories() for t in tags)
    assert [t.score for t in tags] == sorted((t.score for t in tags), reverse=True)


def test_encoder_run_scores_the_catalog_and_explains_with_the_template(encoder: Recommender):
    assert isinstance(encoder, ScoringRecommender) and encoder.method == "two_tower"
    histories = [encoder.dataset.user_sequence("1"), encoder.dataset.user_sequence("2")]
    assert encoder.score(histories).shape == (2, len(encoder.catalog))
    check_list(encoder, encoder.recommend(user_id="1", k=5), 5, set(histories[0].items))
    explanation = encoder.explain(user_id="1", item_id="3")
    assert explanation.path == "template_fallback" and explanation.tries == 0
    assert "encoder" in (explanation.note or "")
    assert explanation.evidence.similarity_method == "two_tower_item_embeddings"


def test_ties_are_broken_by_item_index():
    from llmrec.run_loading import ScoreRanker

    class Flat:
        def score(self, histories):
            return torch.zeros(len(histories), 6)

    items, scores = ScoreRanker(Flat()).rank([None], 4, [{1}])  # type: ignore[list-item]
    assert items.tolist() == [[0, 2, 3, 4]]


def test_changed_catalog_is_refused(tmp_path: Path):
    run = build_decoder_run(tmp_path)
    dataset = PreparedDataset.load(tmp_path / "data")
    items = list(dataset.catalog)
    items[0] = Item(items[0].item_id, "Renamed", items[0].categories, items[0].attributes)
    save_prepared(tmp_path / "data", dataset.interactions, Catalog(items), {"source": "edited"}, overwrite=True)
    with pytest.raises(CatalogChangedError, match="changed since run run was trained"):
        Recommender.load(run)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda run: (run / "run.json").unlink(), "run.json is missing"),
        (lambda run: rewrite_run_json(run, kind="diffusion"), "field 'kind' is 'diffusion'"),
        (lambda run: rewrite_run_json(run, dataset_dir=None), r"missing or non-string field\(s\) \['dataset_dir'\]"),
        (lambda run: rewrite_run_json(run, dataset_dir="nowhere"), "'nowhere' is not a prepared dataset"),
        (lambda run: rewrite_run_json(run, catalog_fingerprint="abc"), "fingerprint abc"),
        (lambda run: shutil.rmtree(run / "adapter"), "adapter/adapter_config.json is missing"),
        (lambda run: (run / "run.json").write_text("{oops"), "invalid JSON at line 1"),
        (lambda run: (run / ".incomplete").write_text("started"), "unfinished run"),
    ],
)
def test_broken_run_directories_fail_clearly(decoder_run: Path, tmp_path: Path, edit, message: str):
    run = tmp_path / "copy"
    shutil.copytree(decoder_run, run)
    edit(run)
    with pytest.raises((FileNotFoundError, ValueError, RuntimeError), match=message):
        Recommender.load(run)


def cli() -> typer.Typer:
    from llmrec.commands import recommend

    app = typer.Typer()
    recommend.register(app)
    return app


def test_cli_recommend_and_explain(decoder_run: Path):
    runner = CliRunner()
    out = runner.invoke(cli(), ["recommend", "--run", str(decoder_run), "--user", "1", "-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == 3 and {"item_id", "title", "score", "method"} <= set(rows[0])
    table = runner.invoke(cli(), ["recommend", "--run", str(decoder_run), "--history", "Heat (1995); 6", "-k", "2"])
    assert table.exit_code == 0 and "top 2" in table.stdout
    explained = runner.invoke(cli(), ["explain", "--run", str(decoder_run), "--user", "1", "--item", "5", "--json"])
    assert explained.exit_code == 0 and json.loads(explained.stdout)["path"] in ("generated", "template_fallback")
    missing = runner.invoke(cli(), ["recommend", "--run", str(decoder_run), "--user", "nobody"])
    assert missing.exit_code == 1 and "user id 'nobody'" in missing.output
    both = runner.invoke(cli(), ["recommend", "--run", str(decoder_run), "--user", "1", "--history", "6"])
    assert both.exit_code == 2


def test_cli_evaluate_a_user_subset_with_either_scoring(decoder_run: Path, tmp_path: Path):
    """``evaluate --users N --scoring`` ranks the same seeded users by beam search and exact scores."""
    import pandas as pd

    from llmrec.commands import evaluate as evaluate_cmd

    app = typer.Typer()
    evaluate_cmd.register(app)
    runner = CliRunner()
    data_dir = str(decoder_run.parent / "data")
    users: dict[str, set[str]] = {}
    for scoring in ("beam", "full_catalog"):
        out = tmp_path / scoring
        done = runner.invoke(app, ["evaluate", "--run", str(decoder_run), "--dataset-dir", data_dir, "--split", "valid",
                                   "--users", "3", "--seed", "1", "--scoring", scoring, "--out", str(out)])
        assert done.exit_code == 0, done.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["users"] == 3 and metrics["scoring"] == scoring and metrics["split"] == "valid"
        ranks = pd.read_parquet(out / "ranks.parquet")
        assert len(ranks) == 3
        users[scoring] = set(ranks["user_id"].astype(str))
    assert users["beam"] == users["full_catalog"]  # the subset depends on --seed only
    shorter = runner.invoke(app, ["evaluate", "--run", str(decoder_run), "--dataset-dir", data_dir, "--split", "valid",
                                  "--users", "3", "--seed", "1", "--set", "prompt.max_history_items=1", "--out",
                                  str(tmp_path / "short")])
    assert shorter.exit_code == 0, shorter.output
    assert json.loads((tmp_path / "short" / "metrics.json").read_text())["settings"] == ["prompt.max_history_items=1"]
    for bad in (["--users", "0"], ["--scoring", "greedy"], ["--set", "lora.r=4"], ["--set", "prompt.template=explain"]):
        refused = runner.invoke(app, ["evaluate", "--run", str(decoder_run), "--dataset-dir", data_dir, "--out",
                                      str(tmp_path / "x"), *bad])
        assert refused.exit_code == 2 and not (tmp_path / "x").exists()
    registry = runner.invoke(app, ["evaluate", "--model", "pop", "--dataset-dir", data_dir, "--scoring", "beam",
                                   "--out", str(tmp_path / "y")])
    assert registry.exit_code == 2 and "--run" in registry.output


def test_evaluate_run_script_writes_what_the_cli_writes(decoder_run: Path, tmp_path: Path):
    """scripts/evaluate_run.py (no typer, for the GPU machine) ranks as ``llmrec evaluate --run`` does."""
    import pandas as pd

    from llmrec.commands import evaluate as evaluate_cmd
    from scripts import evaluate_run

    app = typer.Typer()
    evaluate_cmd.register(app)
    data_dir = str(decoder_run.parent / "data")
    common = ["--run", str(decoder_run), "--dataset-dir", data_dir, "--split", "valid", "--users", "3", "--seed", "1",
              "--set", "prompt.max_history_items=2"]
    done = CliRunner().invoke(app, ["evaluate", *common, "--out", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    evaluate_run.main([*common, "--out", str(tmp_path / "script")])
    cli, script = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("cli", "script"))
    assert script["metrics"] == cli["metrics"] and script["settings"] == ["prompt.max_history_items=2"]
    evaluate_run.main([*common[:2], *common[4:], "--out", str(tmp_path / "own")])  # no --dataset-dir: the run's own
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert own["metrics"] == cli["metrics"]
    cli_own = CliRunner().invoke(app, ["evaluate", *common[:2], *common[4:], "--out", str(tmp_path / "cli-own")])
    assert cli_own.exit_code == 0, cli_own.output  # the CLI too ranks on the run's own data without --dataset-dir
    recorded = json.loads((tmp_path / "cli-own" / "metrics.json").read_text())
    assert recorded["metrics"] == cli["metrics"] and recorded["dataset_dir"] == own["dataset_dir"]
    assert {k: v for k, v in recorded.items() if k != "command"} == {k: v for k, v in own.items() if k != "command"}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "script" / "ranks.parquet"),
                                  pd.read_parquet(tmp_path / "cli" / "ranks.parquet"))
    with pytest.raises(SystemExit) as refused:  # a training setting is no inference setting: nothing written
        evaluate_run.main([*common[:-1], "lora.r=4", "--out", str(tmp_path / "bad")])
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()
