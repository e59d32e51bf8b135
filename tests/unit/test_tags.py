"""Interest tags: baselines by hand, constrained decoder tags on a tiny Llama, multi-label head reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmrec.config import LoraConfig, ModelConfig, PromptConfig, TrainConfig
from llmrec.data.schema import Catalog, EvalCase, Item, UserSequence
from llmrec.prompts import load_template
from llmrec.tags.baselines import CooccurrenceTags, MostFrequentTags, evaluate_tags, ranked_tags
from llmrec.tags.classifier import (
    PROBLEM_TYPE,
    TagClassifier,
    TagsConfig,
    TagsRunConfig,
    train_tag_classifier,
)
from llmrec.tags.generate import DecoderTagScorer, generate_tags, score_tags, tag_token_ids
from tests.tiny import tiny_llama
from tests.unit.test_two_tower import GENRES, make_tiny_dataset, save_tiny_encoder


def seq(items: tuple[int, ...]) -> UserSequence:
    return UserSequence("u", items, tuple(range(len(items))), ("rate",) * len(items), (None,) * len(items))


def small_catalog() -> Catalog:
    return Catalog([
        Item("a", "A", ("Action",)), Item("b", "B", ("Action", "Comedy")),
        Item("c", "C", ("Drama",)), Item("d", "D", ("Comedy",)),
    ])


def test_most_frequent_tags_counts_training_interactions() -> None:
    catalog = small_catalog()
    model = MostFrequentTags(catalog).fit([seq((0, 1, 2)), seq((1, 3))])
    assert model.tags == ["Action", "Comedy", "Drama"]
    # Action: items 0,1,1 -> 3; Comedy: 1,1,3 -> 3; Drama: 2 -> 1 (total 7)
    assert np.allclose(model.frequency, [3 / 7, 3 / 7, 1 / 7])
    assert ranked_tags(model.score_tags([seq((2,))]), model.tags)[0] == ["Action", "Comedy", "Drama"]


def test_cooccurrence_tags_follow_transitions() -> None:
    catalog = small_catalog()
    # After a Drama item always comes a Comedy item; after Action, Drama.
    model = CooccurrenceTags(catalog, window=1, decay=1.0, prior=0.0).fit([seq((2, 3)), seq((0, 2)), seq((2, 3))])
    assert np.allclose(model.transition[2], [0, 1, 0])  # Drama -> Comedy
    assert np.allclose(model.transition[0], [0, 0, 1])  # Action -> Drama
    scores = model.score_tags([seq((0, 2)), seq((2, 0))])
    assert ranked_tags(scores, model.tags)[0][0] == "Comedy"
    assert ranked_tags(scores, model.tags)[1][0] == "Drama"


def test_evaluate_tags_perfect_scorer_and_skips_untagged_targets() -> None:
    catalog = Catalog([*small_catalog().items, Item("e", "E", ())])

    class Oracle:
        tags = ["Action", "Comedy", "Drama"]

        def __init__(self, truth: list[int]):
            self.truth = truth

        def score_tags(self, histories: list[UserSequence]) -> np.ndarray:
            rows = np.zeros((len(histories), 3))
            for b, h in enumerate(histories):
                for tag in catalog[self.truth[h.items[0]]].categories:
                    rows[b, self.tags.index(tag)] = 1.0
            return rows

    cases = [EvalCase("1", seq((0,)), 1), EvalCase("2", seq((1,)), 2), EvalCase("3", seq((2,)), 4)]
    metrics = evaluate_tags(Oracle([1, 2, 4]), cases, catalog, ks=(1, 2))
    assert metrics["recall@2"] == 1.0 and metrics["precision@1"] == 1.0 and metrics["auc_micro"] == 1.0
    assert metrics["queries"] == 2 and metrics["skipped"] == 1


@pytest.fixture()
def tiny_decoder(tiny_tokenizer):  # type: ignore[no-untyped-def]
    return tiny_llama(len(tiny_tokenizer), seed=3).eval()


def _prompt(tokenizer) -> str:  # type: ignore[no-untyped-def]
    from llmrec.tags.generate import tag_prompt

    cfg = PromptConfig(include_categories=True)
    catalog = make_catalog()
    return tag_prompt(seq((0, 1, 2)), catalog, load_template("interest_tags"), tokenizer, cfg, GENRES, 3, 10)


def make_catalog() -> Catalog:
    from tests.unit.test_two_tower import tiny_catalog

    return tiny_catalog()


def test_generate_tags_only_emits_vocabulary_tags(tiny_decoder, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = _prompt(tiny_tokenizer)
    assert prompt.rstrip().endswith("Genres:")
    cfg = PromptConfig()
    for k in (1, 3, len(GENRES)):
        out = generate_tags(tiny_decoder, tiny_tokenizer, prompt, GENRES, cfg, k=k)
        tags = [t for t, _ in out]
        assert len(tags) == k and len(set(tags)) == k and set(tags) <= set(GENRES)
    # The unconstrained model does not produce vocabulary tags on its own.
    ids = tiny_tokenizer(prompt, return_tensors="pt")["input_ids"]
    free = tiny_decoder.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    assert tiny_tokenizer.decode(free[0, ids.shape[1]:]).strip().split(",")[0].strip() not in GENRES


def test_constrained_generation_agrees_with_exact_tag_scores(tiny_decoder, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = _prompt(tiny_tokenizer)
    cfg = PromptConfig()
    scores = score_tags(tiny_decoder, tiny_tokenizer, prompt, GENRES, cfg)
    # Slow reference: one full forward pass per tag, no KV cache.
    ids = tiny_tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist()
    for j, tag_ids in enumerate(tag_token_ids(tiny_tokenizer, GENRES)):
        full = torch.tensor([ids + tag_ids])
        logprobs = torch.log_softmax(tiny_decoder(full).logits[0].float(), dim=-1)
        expected = sum(float(logprobs[len(ids) - 1 + i, t]) for i, t in enumerate(tag_ids))
        assert scores[j] == pytest.approx(expected, abs=1e-4)
    # The log-likelihood reported for a generated tag is that tag's exact score.
    (tag, logprob), = generate_tags(tiny_decoder, tiny_tokenizer, prompt, GENRES, cfg, k=1)
    assert logprob == pytest.approx(scores[GENRES.index(tag)], abs=1e-4)


def test_decoder_tag_scorer_ranks_every_tag(tiny_decoder, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    scorer = DecoderTagScorer(tiny_decoder, tiny_tokenizer, make_catalog(), load_template("interest_tags"),
                              PromptConfig(include_categories=True), tags=GENRES, max_items=4)
    scores = scorer.score_tags([seq((0, 1)), seq((3, 4, 5))])
    assert scores.shape == (2, len(GENRES)) and np.isfinite(scores).all() and (scores < 0).all()


def test_multilabel_head_trains_saves_and_reloads_with_plain_peft(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    dataset = make_tiny_dataset(tmp_path)
    model_dir = save_tiny_encoder(tmp_path, tiny_tokenizer)
    cfg = TagsRunConfig(
        model=ModelConfig(name_or_path=str(model_dir), dtype="fp32", attn_implementation="eager"),
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
        train=TrainConfig(batch_size=8, learning_rate=5e-3, max_steps=3, mixed_precision="no", log_every_steps=1),
        tags=TagsConfig(max_user_tokens=64, pairs_per_user=3),
    )
    run = train_tag_classifier(cfg, dataset, tmp_path / "tags-run", command="pytest")
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "encoder" and info["task"] == "tags" and info["tags"] == dataset.catalog.categories()
    loaded = TagClassifier.load(run, catalog=dataset.catalog)
    texts = ["Heat (1995) [Action] ; Alien (1979) [Sci-Fi]", "Fargo (1996) [Drama]"]
    with torch.no_grad():
        ours = loaded.logits(texts)
        base = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(info["tags"]), problem_type=PROBLEM_TYPE)
        fresh_head = base(**tiny_tokenizer(texts, padding=True, return_tensors="pt")).logits
        plain = PeftModel.from_pretrained(base, run / "adapter").eval()
        batch = tiny_tokenizer(texts, padding=True, return_tensors="pt")
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(ours, fresh_head, atol=1e-3)  # the trained head came from the adapter
    probs = loaded.score_tags([c.history for c in dataset.eval_cases("test")])
    assert probs.shape == (12, len(info["tags"])) and ((probs > 0) & (probs < 1)).all()


def test_tags_command_prints_ranked_tags(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import typer
    from typer.testing import CliRunner

    from llmrec.commands.tags import register

    dataset = make_tiny_dataset(tmp_path)
    model_dir = save_tiny_encoder(tmp_path, tiny_tokenizer)
    cfg = TagsRunConfig(
        model=ModelConfig(name_or_path=str(model_dir), dtype="fp32", attn_implementation="eager"),
        lora=LoraConfig(r=4, alpha=8), train=TrainConfig(batch_size=8, max_steps=1, mixed_precision="no"),
        tags=TagsConfig(max_user_tokens=64, pairs_per_user=2),
    )
    run = train_tag_classifier(cfg, dataset, tmp_path / "tags-run")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer in multi-command mode
    result = CliRunner().invoke(app, ["tags", "--run", str(run), "--user", "3", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["tags"]) == 3 and all(t["tag"] in dataset.catalog.categories() for t in payload["tags"])
    assert payload["tags"][0]["score"] >= payload["tags"][-1]["score"]
    missing = CliRunner().invoke(app, ["tags", "--run", str(run), "--user", "nobody"])
    assert missing.exit_code == 2 and "nobody" in missing.output
