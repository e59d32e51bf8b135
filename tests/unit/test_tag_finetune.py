"""Fine-tuning the decoder tag head (``train.format: interest_tags``) on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from llmrec.benchmark import BenchmarkModel
from llmrec.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PromptConfig,
    RunConfig,
    load_config,
)
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.prompts import load_template
from llmrec.tags.benchmark import run_tag_one
from llmrec.tags.finetune import IGNORE_INDEX, TagExampleBuilder, answer_order
from llmrec.tags.generate import DecoderTagScorer, load_run_tag_scorer, tag_token_ids
from llmrec.training.examples import build_examples
from llmrec.training.loop import train
from tests.tiny import tiny_llama
from tests.unit.test_two_tower import make_tiny_dataset
from tests.unit.train_helpers import save_tokenizer, tiny_run_config

TAG_PROMPT = PromptConfig(template="interest_tags", include_categories=True, max_history_items=4, max_examples_per_user=2)


def test_tag_examples_are_the_scorer_prompt_plus_the_next_items_tags(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    dataset = make_tiny_dataset(tmp_path)
    catalog = dataset.catalog
    template = load_template("interest_tags")
    builder = TagExampleBuilder(catalog, template, tiny_tokenizer, TAG_PROMPT, max_seq_len=512)
    scorer = DecoderTagScorer(None, tiny_tokenizer, catalog, template, TAG_PROMPT, max_items=4)
    sequence = dataset.sequences(("train",))[0]
    rows = list(builder.examples(sequence))
    assert len(rows) == 2  # max_examples_per_user: the last two positions
    vocab_ids = tag_token_ids(tiny_tokenizer, catalog.categories())
    for (input_ids, labels, user, targets, prompt), t in zip(rows, (len(sequence) - 2, len(sequence) - 1), strict=True):
        assert user == sequence.user_id and targets == 1
        assert prompt == scorer.prompt(sequence.prefix(t))  # exactly what the head reads at inference
        prompt_ids = tiny_tokenizer(prompt)["input_ids"]
        assert input_ids[:len(prompt_ids)] == prompt_ids and labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        answer = input_ids[len(prompt_ids):]
        assert labels[len(prompt_ids):] == answer
        truth = catalog[sequence.items[t]].categories
        expected = [token for tag in answer_order(truth, user, t) for token in vocab_ids[catalog.categories().index(tag)]]
        assert answer == expected
    assert [r[0] for r in builder.examples(sequence)] == [r[0] for r in rows]  # deterministic


def test_answer_order_puts_each_true_tag_first_and_skips_untagged_targets(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    firsts = {answer_order(["Action", "Comedy", "Drama"], "u", t)[0] for t in range(60)}
    assert firsts == {"Action", "Comedy", "Drama"}
    catalog = Catalog([Item("a", "Heat", ("Action",)), Item("b", "Fargo", ()), Item("c", "Alien", ("Sci-Fi",))])
    cfg = PromptConfig(template="interest_tags", include_categories=True)
    builder = TagExampleBuilder(catalog, load_template("interest_tags"), tiny_tokenizer, cfg, max_seq_len=512)
    history = UserSequence("u", (0, 1, 2), (1, 2, 3), ("rate",) * 3, (None,) * 3)
    rows = list(builder.examples(history))
    assert len(rows) == 1 and rows[0][4].count("Heat") == 1  # position 1 (Fargo, no genres) gives none


def test_interest_tags_format_needs_the_tags_template(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="interest_tags needs prompt.template"):
        load_config([], ["train.format=interest_tags"])
    cfg = load_config([], ["train.format=interest_tags", "prompt.template=interest_tags"])
    assert cfg.train.format == "interest_tags"


def test_decoder_tag_head_fine_tunes_then_serves_the_tags_command_and_benchmark(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import typer
    from typer.testing import CliRunner

    from llmrec.commands.tags import register

    dataset = make_tiny_dataset(tmp_path)
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    tiny_llama(len(tiny_tokenizer), seed=5).save_pretrained(tmp_path / "base")
    cfg: RunConfig = tiny_run_config(tmp_path, tok_dir, epochs=4, learning_rate=3e-2, batch_size=4, format="interest_tags",
                                     max_seq_len=512, packing=False, eval_max_users=None)
    cfg.model = ModelConfig(name_or_path=str(tmp_path / "base"), tokenizer=str(tok_dir), dtype="fp32",
                            attn_implementation="eager")
    cfg.data = DataConfig(prepared_dir=str(dataset.root))
    cfg.prompt = PromptConfig(template="interest_tags", include_categories=True, max_history_items=4, max_examples_per_user=3)
    examples = build_examples(dataset, tiny_tokenizer, cfg.prompt, "interest_tags", 512)
    assert len(examples) == 12 * 3
    before = DecoderTagScorer(tiny_llama(len(tiny_tokenizer), seed=5).eval(), tiny_tokenizer, dataset.catalog,
                              load_template("interest_tags"), cfg.prompt, max_items=4)
    histories = [c.history for c in dataset.eval_cases("valid")]
    result = train(cfg, "pytest", device="cpu")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert len(metrics["evals"]) == 4 and all(np.isfinite(e["valid_loss"]) for e in metrics["evals"])

    scorer, loaded = load_run_tag_scorer(result.run_dir)
    assert scorer.max_items == 4 and scorer.tags == dataset.catalog.categories()
    # The probability that the first answer is some vocabulary tag rises: the answer format is learned
    # (a random tied tiny Llama cannot get confident, its logits are bounded, so the loss alone moves little).
    mass = {name: np.logaddexp.reduce(s.score_tags(histories), axis=1).mean() for name, s in (("before", before), ("after", scorer))}
    assert mass["after"] > mass["before"] + 1.0, mass
    history = loaded.user_sequence("3")
    generated = [tag for tag, _ in scorer.generate(history, k=3)]
    assert len(set(generated)) == 3 and set(generated) <= set(scorer.tags)

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    shown = CliRunner().invoke(app, ["tags", "--run", str(result.run_dir), "--user", "3", "-k", "2", "--json"])
    assert shown.exit_code == 0, shown.output
    assert [t["tag"] for t in json.loads(shown.stdout)["tags"]][0] in scorer.tags

    row = run_tag_one(dataset, BenchmarkModel(name="decoder_tags", params={"run_dir": str(result.run_dir)}), 0,
                      EvalConfig(split="test"))
    assert row["users"] == 12 and 0.0 <= row["metrics"]["f1@3"] <= 1.0 and np.isfinite(row["metrics"]["auc_micro"])
    with pytest.raises(ConfigError, match="at most one"):
        run_tag_one(dataset, BenchmarkModel(name="decoder_tags", params={"run_dir": "x", "config": ["y.yaml"]}), 0,
                    EvalConfig(split="test"))


def test_decoder_tags_benchmark_records_the_run_summed_training_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The time written beside a benchmark-trained tag run is train()'s own, summed over resumes."""
    import llmrec.training.loop as loop
    from llmrec.tags.benchmark import DecoderParams, train_decoder_tags_run

    def fake_train(cfg, command, resume=False, **kwargs):  # stands for a run resumed after 1000 s of earlier calls
        run_dir = Path(cfg.train.output_dir)
        run_dir.mkdir(parents=True)
        return loop.TrainResult(run_dir, 7, 0.5, {}, [], False, train_seconds=1234.5)

    monkeypatch.setattr(loop, "train", fake_train)
    params = DecoderParams(config=["configs/ml100k/smollm2-tags.yaml"], output_dir=str(tmp_path / "run"))
    run_dir, seconds = train_decoder_tags_run(params, SimpleNamespace(root=tmp_path / "data"), seed=0)
    assert seconds == 1234.5
    assert json.loads((run_dir / "benchmark_train.json").read_text()) == {"train_time_s": 1234.5, "global_step": 7}
