"""``llmrec quickstart`` end to end on a tiny fixture dataset and a tiny random BERT (offline, seconds)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from llmrec.baselines.pop import Popularity
from llmrec.config import load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.evaluation.evaluate import evaluate
from llmrec.quickstart import QuickstartConfig, fast_config, model_label, run_quickstart
from tests.fixtures_run import GENRES, build_dataset
from tests.tiny import FIXTURE_TITLES, make_tokenizer, tiny_bert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared fixture dataset (8 users, 50 items) and a tiny BERT model directory."""
    root = tmp_path_factory.mktemp("quickstart")
    build_dataset(root / "data")
    tokenizer = make_tokenizer(FIXTURE_TITLES + [" | ".join(GENRES)])
    tiny_bert(len(tokenizer)).save_pretrained(str(root / "bert"))
    tokenizer.save_pretrained(str(root / "bert"))
    return root


def tiny_config(root: Path, **changes: object) -> QuickstartConfig:
    cfg = QuickstartConfig(
        out_dir=str(root / "report"), data_dir=str(root / "data"), model=str(root / "bert"), train_seconds=0.0,
        max_steps=3, batch_size=8, learning_rate=5e-3, max_user_tokens=64, max_item_tokens=16, pairs_per_user=4,
        lora_r=4, lora_layers=[1], valid_users=4, seed=0,
    )
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def quickstart_run(workspace: Path) -> tuple[Path, str]:
    console = Console(file=io.StringIO(), record=True, width=160, color_system=None)
    out = run_quickstart(tiny_config(workspace), console=console, command="pytest quickstart")
    return out, console.export_text()


def test_report_directory_holds_metrics_plots_run_and_example(quickstart_run: tuple[Path, str]) -> None:
    out, _ = quickstart_run
    for name in ("metrics.json", "results.md", "results.png", "user_example.json", "console.txt",
                 "run/run.json", "run/adapter/adapter_config.json", "run/train_curve.png", "run/metrics.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report.tmp")]  # the temp dir was renamed
    report = json.loads((out / "metrics.json").read_text())
    assert [run["label"] for run in report["runs"]] == ["minilm-two-tower+ids", "pop"]  # item residuals by default
    assert report["training"]["optimizer_steps"] == 3
    assert set(report["stage_times_s"]) == {"fetch", "prepare", "train", "evaluate", "example"}
    assert json.loads((out / "run/run.json").read_text())["kind"] == "encoder"
    assert "| pop |" in (out / "results.md").read_text()


def test_pop_row_matches_an_independent_evaluation(quickstart_run: tuple[Path, str], workspace: Path) -> None:
    out, printed = quickstart_run
    dataset = PreparedDataset.load(workspace / "data")
    cases = dataset.eval_cases("test")
    expected = evaluate(Popularity.fit(dataset.sequences(("train",)), len(dataset.catalog)), cases, len(dataset.catalog))
    pop = json.loads((out / "metrics.json").read_text())["runs"][1]
    assert pop["metrics"]["num_queries"] == len(cases) == 8
    for metric in ("hr@10", "ndcg@10", "mrr@10", "coverage@10"):
        assert pop["metrics"][metric] == pytest.approx(expected.metrics[metric])
    pop_line = next(line for line in printed.splitlines() if line.strip("│ ").startswith("pop "))
    assert f"{expected.metrics['hr@10']:.4f}" in pop_line and f"{expected.metrics['ndcg@10']:.4f}" in pop_line
    assert model_label(QuickstartConfig()) in printed and "HR@10" in printed and "NDCG@10" in printed


def test_user_example_has_history_valid_recommendations_and_explanation(quickstart_run: tuple[Path, str], workspace: Path) -> None:
    out, printed = quickstart_run
    example = json.loads((out / "user_example.json").read_text())
    dataset = PreparedDataset.load(workspace / "data")
    first_user = dataset.eval_cases("test")[0].user_id
    sequence = dataset.user_sequence(first_user)
    assert example["user_id"] == first_user
    assert [h["item_id"] for h in example["recent_history"]] == [dataset.catalog[i].item_id for i in sequence.items][-10:]
    recs = example["recommendations"]
    assert len(recs) == 10
    seen = {dataset.catalog[i].item_id for i in sequence.items}
    assert not seen & {r["item_id"] for r in recs} and len({r["item_id"] for r in recs}) == 10
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    explanation = example["explanation"]
    assert explanation["path"] == "template_fallback" and explanation["evidence"]["similarity_method"]
    assert set(explanation["evidence"]["history_items"]) <= seen
    assert recs[0]["title"] in printed and "path: template_fallback" in printed


def test_unknown_user_fails_before_training_and_writes_nothing(workspace: Path) -> None:
    cfg = tiny_config(workspace, out_dir=str(workspace / "bad"), user="no-such-user")
    with pytest.raises(ValueError, match="no-such-user"):
        run_quickstart(cfg, console=Console(file=io.StringIO()))
    assert not (workspace / "bad").exists()


def test_yaml_matches_the_defaults_and_fast_shrinks_the_budget() -> None:
    loaded = load_config([REPO / "configs" / "quickstart.yaml"], schema=QuickstartConfig)
    assert loaded == QuickstartConfig()
    fast = fast_config(loaded)
    assert fast.max_steps < loaded.max_steps and fast.eval_users is not None and fast.train_seconds < loaded.train_seconds


def test_cli_registers_quickstart_with_its_options() -> None:
    import typer
    from typer.testing import CliRunner

    from llmrec.commands.quickstart import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the app into one command
        pass

    result = CliRunner().invoke(app, ["quickstart", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--cache-dir", "--user", "--fast"):
        assert option in result.output
