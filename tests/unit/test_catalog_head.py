"""The catalog head (``train.format: catalog``): examples, loss, scorer, run round trip, benchmark row.

Tiny random-init Llama with the fixture tokenizer, offline; the recipe
``configs/ml100k/smollm2-catalog.yaml`` itself is run with only the model swapped and a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llmrec.benchmark import BenchmarkConfig
from llmrec.config import ConfigError, PromptConfig, load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.evaluation.evaluate import evaluate
from llmrec.evaluation.protocol import CatalogScorer
from llmrec.llm_benchmark import LLMScorer, build_and_train
from llmrec.modeling.catalog_head import (
    CATALOG_HEAD_FILE,
    CatalogHead,
    CatalogHeadScorer,
    attach_catalog_head,
    attached_head,
    build_catalog_head,
    detach_catalog_head,
    feed_target_histories,
    hidden_title_vectors,
    last_positions,
    load_catalog_head,
    masked_seen,
    save_catalog_head,
    target_histories,
    target_seen_items,
    title_vectors,
)
from llmrec.prompts import load_template
from llmrec.recommender import Recommender
from llmrec.training.examples import IGNORE_INDEX, ExampleBuilder, training_sequences
from llmrec.training.loss import causal_lm_loss_on_labels
from llmrec.training.ranking_eval import prompt_function, view_renders
from tests.fixtures_run import _tokenizer, build_dataset
from tests.tiny import tiny_llama
from tests.unit.train_helpers import tiny_recipe_overrides

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "configs" / "ml100k" / "smollm2-catalog.yaml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return build_dataset(tmp_path_factory.mktemp("catalog-head") / "data")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = _tokenizer()
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    path = tmp_path_factory.mktemp("catalog-tok") / "tokenizer"
    tokenizer.save_pretrained(str(path))
    return path


def prompt_cfg() -> PromptConfig:
    return PromptConfig(template="next_item", max_history_items=6, max_history_tokens=200, include_year=True)


def first_catalog_batch(dataset: PreparedDataset, tokenizer: Any, min_prior: int = 0) -> tuple[Any, dict[str, torch.Tensor]]:
    """The first ``catalog`` example (of the first user, or the first with ``min_prior`` items before
    its first labelled line) and a one-row batch of it."""
    builder = ExampleBuilder(dataset, load_template("next_item"), tokenizer, prompt_cfg(), 256, "catalog")
    examples = (e for sequence in training_sequences(dataset) for e in builder.item_span(sequence))
    example = next(e for e in examples if len(e.prior_items) >= min_prior)
    batch = {"input_ids": torch.tensor([example.input_ids]), "labels": torch.tensor([example.labels]),
             "attention_mask": torch.ones(1, len(example.input_ids), dtype=torch.long)}
    return example, batch


def test_catalog_examples_label_each_line_start_with_its_item(dataset: PreparedDataset, tokenizer: Any):
    cfg = prompt_cfg()
    template = load_template(cfg.template)
    spans = ExampleBuilder(dataset, template, tokenizer, cfg, 256, "item_span")
    items = ExampleBuilder(dataset, template, tokenizer, cfg, 256, "catalog")
    for sequence in training_sequences(dataset)[:4]:
        for span, example in zip(spans.item_span(sequence), items.item_span(sequence), strict=True):
            assert span.input_ids == example.input_ids and span.num_targets == example.num_targets
            labelled = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
            assert len(labelled) == example.num_targets  # one label per line after the window's first
            newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))[-1]
            for i in labelled:
                assert example.input_ids[i - 1] == newline  # predicted from the previous line's newline
                assert span.labels[i] == example.input_ids[i]  # the first token of a labelled item_span line
            # the labels are the window's items after its first, in order
            window = [label for label in example.labels if label != IGNORE_INDEX]
            end = sequence.items.index(window[-1]) + 1
            assert window == list(sequence.items[end - len(window):end])


def test_title_vectors_are_mean_input_embeddings(tokenizer: Any):
    embeddings = torch.randn(len(tokenizer), 8)
    vectors = title_vectors(embeddings, tokenizer, ["Heat (1995)", "Fargo (1996)"])
    ids = tokenizer(["Heat (1995)"], add_special_tokens=False)["input_ids"][0]
    torch.testing.assert_close(vectors[0], embeddings[ids].mean(dim=0))
    assert vectors.shape == (2, 8)


def test_hidden_title_vectors_average_each_title_read_alone(tokenizer: Any):
    model = tiny_llama(len(tokenizer)).eval()
    titles = ["Heat (1995)", "Star Wars: Episode IV - A New Hope (1977)", "Fargo (1996)"]
    batched = hidden_title_vectors(model, tokenizer, titles, batch_size=3)
    for row, title in enumerate(titles):  # padding in a batch changes nothing
        ids = torch.tensor([tokenizer([title], add_special_tokens=False)["input_ids"][0]])
        alone = model.model(input_ids=ids).last_hidden_state[0].mean(dim=0)
        torch.testing.assert_close(batched[row], alone, rtol=1e-4, atol=1e-5)
    assert tokenizer.padding_side == "left"  # restored


def test_hidden_title_source_reads_the_base_weights_and_is_saved_with_the_head(dataset: PreparedDataset, tokenizer: Any,
                                                                             tmp_path: Path):
    from peft import LoraConfig, get_peft_model

    base = build_catalog_head(tiny_llama(len(tokenizer)), tokenizer, dataset.catalog, prompt_cfg(), residuals=False,
                              title_source="hidden")
    by_embedding = build_catalog_head(tiny_llama(len(tokenizer)), tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    assert base.title_source == "hidden" and not torch.allclose(base.titles, by_embedding.titles)
    # rescaled to the embedding vectors' mean norm: the first scores keep the LM head's logit scale
    torch.testing.assert_close(base.titles.norm(dim=1).mean(), by_embedding.titles.norm(dim=1).mean())
    peft = get_peft_model(tiny_llama(len(tokenizer)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))  # adapters not zero
    peft.train()
    with_adapter = build_catalog_head(peft, tokenizer, dataset.catalog, prompt_cfg(), residuals=False,
                                      title_source="hidden")
    torch.testing.assert_close(with_adapter.titles, base.titles)  # adapters disabled while reading titles
    assert peft.training  # mode restored
    save_catalog_head(base, tmp_path / CATALOG_HEAD_FILE)
    other = tiny_llama(len(tokenizer), seed=1)  # other weights (as after a merge): saved vectors win
    loaded = load_catalog_head(tmp_path / CATALOG_HEAD_FILE, other, tokenizer, dataset.catalog, prompt_cfg())
    assert loaded.title_source == "hidden"
    torch.testing.assert_close(loaded.titles, base.titles)
    # an item the run never saw is read by this model and rescaled by the run's factor, not its own
    state = torch.load(tmp_path / CATALOG_HEAD_FILE, weights_only=True)
    state["item_ids"], state["titles"] = state["item_ids"][1:], state["titles"][1:]
    torch.save(state, tmp_path / "partial.pt")
    partial = load_catalog_head(tmp_path / "partial.pt", other, tokenizer, dataset.catalog, prompt_cfg())
    torch.testing.assert_close(partial.titles[1:], base.titles[1:])
    title = dataset.catalog[0].display_title()
    fresh = hidden_title_vectors(other.eval(), tokenizer, [title])[0] * state["title_scale"]
    torch.testing.assert_close(partial.titles[0], fresh, rtol=1e-4, atol=1e-5)


def test_head_starts_as_the_mean_title_token_logit_and_trains_only_its_own_tensors(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    hidden = torch.randn(3, model.config.hidden_size)
    # identity projection: h @ mean(E[title]) = mean over the title's tokens of the LM logit h @ E[token]
    logits = model.lm_head(hidden)  # (3, V)
    ids = tokenizer([dataset.catalog[0].display_title()], add_special_tokens=False)["input_ids"][0]
    torch.testing.assert_close(head(hidden)[:, 0], logits[:, ids].mean(dim=1), rtol=1e-4, atol=1e-5)
    assert [n for n, _ in head.named_parameters()] == ["proj.weight"]
    with_ids = CatalogHead(head.titles, head.item_ids, residuals=True)
    assert sorted(n for n, _ in with_ids.named_parameters()) == ["proj.weight", "residuals"]
    torch.testing.assert_close(with_ids(hidden), head(hidden))  # residuals start at zero
    with_mlp = CatalogHead(head.titles, head.item_ids, mlp_hidden=12)
    assert {n.split(".")[0] for n, _ in with_mlp.named_parameters()} == {"proj", "mlp"}  # shared, none per item
    torch.testing.assert_close(with_mlp(hidden), head(hidden))  # the MLP's output layer starts at zero


def test_catalog_loss_is_the_item_softmax_at_the_line_starts(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=True)
    original = attach_catalog_head(model, head)
    assert attached_head(model) is head
    example, batch = first_catalog_batch(dataset, tokenizer)
    loss = causal_lm_loss_on_labels(model, batch)
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state[0]  # (T, d)
    labels = torch.tensor(example.labels)
    where = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    expected = torch.nn.functional.cross_entropy(head(hidden[where - 1]), labels[where])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert head.proj.weight.grad is not None and head.residuals is not None and head.residuals.grad is not None
    detach_catalog_head(model, original)
    assert attached_head(model) is None and model.lm_head is original


def test_target_histories_are_the_earlier_labelled_items_of_the_same_example():
    x = IGNORE_INDEX
    labels = torch.tensor([[x, x, 7, x, 3, x, 5, x, 9],  # one example: targets 7, 3, 5, 9
                           [x, 4, x, 6, x, x, 2, x, 8]])  # packed: example A (4, 6) then B (2, 8) from column 5
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8],
                              [0, 1, 2, 3, 4, 0, 1, 2, 3]])
    expected = [[-1, -1], [-1, 7], [7, 3], [3, 5],  # row 0, latest two earlier targets
                [-1, -1], [-1, 4], [-1, -1], [-1, 2]]  # row 1: B's history does not reach into A
    assert target_histories(labels, 2, positions).tolist() == expected
    assert target_histories(labels[:1], 2).tolist() == expected[:4]  # unpacked rows need no positions
    assert target_histories(torch.full((2, 4), x), 3).shape == (0, 3)


def test_target_seen_items_are_every_earlier_item_of_the_example_but_the_target():
    x = IGNORE_INDEX
    labels = torch.tensor([[x, x, 7, x, 3, x, 7, x, 9],  # 7 comes back: its second line keeps 7 reachable
                           [x, 4, x, 6, x, x, 2, x, 8]])  # packed: example A (4, 6) then B (2, 8) from column 5
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8],
                              [0, 1, 2, 3, 4, 0, 1, 2, 3]])
    expected = [[-1, -1, -1], [7, -1, -1], [3, -1, -1], [7, 3, 7],
                [-1, -1, -1], [4, -1, -1], [-1, -1, -1], [2, -1, -1]]
    assert target_seen_items(labels, positions).tolist() == expected
    assert target_seen_items(torch.full((2, 4), x)).shape == (0, 0)


def test_user_scope_seen_items_add_each_examples_prior_items_but_the_target():
    x = IGNORE_INDEX
    labels = torch.tensor([[x, x, 7, x, 3, x, 7, x, 9],  # targets 7, 3, 7, 9 after prior items 1, 9, 2
                           [x, 4, x, 6, x, x, 2, x, 8]])  # packed: A (4, 6) after 5, then B (2, 8) after 4, 11
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8],
                              [0, 1, 2, 3, 4, 0, 1, 2, 3]])
    prior = torch.tensor([[[1, 9, 2], [-1, -1, -1]],
                          [[5, -1, -1], [4, 11, -1]]])  # (B, M, P) as packed_collate gives it
    expected = [[1, 9, 2, -1, -1, -1], [1, 9, 2, 7, -1, -1], [1, 9, 2, 3, -1, -1], [1, -1, 2, 7, 3, 7],  # 9 stays reachable as a target
                [5, -1, -1, -1, -1, -1], [5, -1, -1, 4, -1, -1], [4, 11, -1, -1, -1, -1], [4, 11, -1, 2, -1, -1]]
    assert target_seen_items(labels, positions, prior).tolist() == expected
    # unpacked rows (no position ids) read member 0 of their row
    assert target_seen_items(labels[:1], None, prior[:1, :1]).tolist() == expected[:4]


def test_masked_seen_puts_minus_infinity_at_each_rows_own_items_only():
    scores = torch.randn(1, 3, 6)  # (B, K, N) as a model with logits_to_keep may hand them
    seen = torch.tensor([[-1, -1], [4, 0], [2, -1]])
    out = masked_seen(scores, seen)
    masked = torch.zeros(3, 6, dtype=torch.bool)
    masked[1, 4] = masked[1, 0] = masked[2, 2] = True
    assert torch.isneginf(out[0][masked]).all() and torch.equal(out[0][~masked], scores[0][~masked])
    with pytest.raises(ValueError, match="2 seen-item rows for 3 scored rows"):
        masked_seen(scores, seen[:2])


def test_the_head_trains_the_same_on_a_model_whose_logits_to_keep_takes_no_mask(dataset: PreparedDataset, tokenizer: Any,
                                                                               monkeypatch: pytest.MonkeyPatch):
    """transformers releases before the boolean ``logits_to_keep`` mask (5.17, the GPU image's) take the
    fallback: the head, fed K histories and K seen-item rows, is applied to the K label positions only."""
    from llmrec.training import loss as loss_module

    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False, history_pool=3)
    with torch.no_grad():
        head.pool[1].weight.normal_(std=0.05)  # type: ignore[index]
    attach_catalog_head(model, head)
    _, batch = first_catalog_batch(dataset, tokenizer)
    step = feed_target_histories(causal_lm_loss_on_labels, mask_history=True)
    fast = step(model, batch)
    monkeypatch.setattr(loss_module, "supports_logits_to_keep", lambda m: False)
    fallback = step(model, batch)
    torch.testing.assert_close(fallback, fast, rtol=1e-5, atol=1e-6)
    fallback.backward()
    assert model.lm_head is head and head.pool[1].weight.grad is not None  # type: ignore[index]
    assert head.pool[1].weight.grad.abs().sum() > 0  # type: ignore[index]


def test_mask_history_leaves_each_targets_earlier_items_out_of_its_softmax(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    attach_catalog_head(model, head)
    example, batch = first_catalog_batch(dataset, tokenizer)
    plain = feed_target_histories(causal_lm_loss_on_labels)(model, batch)
    masked = feed_target_histories(causal_lm_loss_on_labels, mask_history=True)(model, batch)
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state[0]  # (T, d)
    labels = torch.tensor(example.labels)
    where = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    targets = labels[where].tolist()
    assert len(targets) >= 3
    logits = head(hidden[where - 1])
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, labels[where]), rtol=1e-5, atol=1e-6)
    for j in range(1, len(targets)):
        logits[j, targets[:j]] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, labels[where])
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-6)
    assert float(masked) < float(plain)  # fewer competitors, lower loss
    assert head._seen is None  # nothing stays fed after the step
    masked.backward()
    assert head.proj.weight.grad is not None and torch.isfinite(head.proj.weight.grad).all()


def test_user_scope_mask_also_leaves_the_items_before_the_window_out(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    attach_catalog_head(model, head)
    example, batch = first_catalog_batch(dataset, tokenizer, min_prior=3)  # a window well into its history
    with pytest.raises(ValueError, match="prior_items"):
        feed_target_histories(causal_lm_loss_on_labels, mask_history=True, mask_scope="user")(model, batch)
    batch["prior_items"] = torch.tensor([[example.prior_items]])  # (1, 1, P) as pad_collate gives it
    window = feed_target_histories(causal_lm_loss_on_labels, mask_history=True)(model, batch)
    user = feed_target_histories(causal_lm_loss_on_labels, mask_history=True, mask_scope="user")(model, batch)
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state[0]  # (T, d)
    labels = torch.tensor(example.labels)
    where = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    targets = labels[where].tolist()
    logits = head(hidden[where - 1])
    for j, target in enumerate(targets):
        logits[j, [item for item in [*example.prior_items, *targets[:j]] if item != target]] = float("-inf")
    torch.testing.assert_close(user, torch.nn.functional.cross_entropy(logits, labels[where]), rtol=1e-5, atol=1e-6)
    assert float(user) < float(window)  # the items before the window are competitors no more
    user.backward()
    assert head.proj.weight.grad is not None and torch.isfinite(head.proj.weight.grad).all()


def test_history_pool_starts_at_zero_and_adds_a_shared_map_of_the_recent_items(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    pooled = CatalogHead(head.titles, head.item_ids, history_pool=2)
    assert [n for n, _ in pooled.named_parameters()] == ["proj.weight", "pool.0.weight", "pool.0.bias",
                                                        "pool.1.weight"]  # nothing per item
    hidden = torch.randn(3, model.config.hidden_size)
    history = torch.tensor([[-1, -1], [-1, 4], [2, 5]])
    torch.testing.assert_close(pooled(hidden, history=history), head(hidden))  # zero at the start
    assert pooled.pool is not None
    with torch.no_grad():
        pooled.pool[1].weight.normal_()
    items = pooled.item_matrix()
    user = hidden.clone()  # row 0 has no history: no term
    user[1] += pooled.pool(items[4] - items.mean(dim=0))  # centred on the mean item vector
    user[2] += pooled.pool((items[2] + items[5]) / 2 - items.mean(dim=0))
    torch.testing.assert_close(pooled(hidden, history=history), user @ items.T, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="history_pool"):
        pooled(hidden)  # a pooled head never silently scores without the history
    with pytest.raises(ValueError, match="2 histories for 3 hidden states"):
        pooled(hidden, history=history[:2])
    with pooled.feeding(history):
        torch.testing.assert_close(pooled(hidden), pooled(hidden, history=history))
    assert pooled._fed is None


def test_pooled_catalog_loss_feeds_each_target_its_earlier_items(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False, history_pool=3)
    assert head.pool is not None
    with torch.no_grad():
        head.pool[1].weight.normal_(std=0.05)
    attach_catalog_head(model, head)
    example, batch = first_catalog_batch(dataset, tokenizer)
    with pytest.raises(RuntimeError, match="history_pool"):
        causal_lm_loss_on_labels(model, batch)  # the bare loss cannot feed the head
    loss = feed_target_histories(causal_lm_loss_on_labels)(model, batch)
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state[0]  # (T, d)
    labels = torch.tensor(example.labels)
    where = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    targets = labels[where].tolist()
    history = torch.tensor([([-1] * 3 + targets[:j])[-3:] for j in range(len(targets))])
    expected = torch.nn.functional.cross_entropy(head(hidden[where - 1], history=history), labels[where])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    grad = head.pool[1].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_last_positions_handles_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_positions(left).tolist() == [3, 3]
    assert last_positions(right).tolist() == [1, 3]


def test_scorer_gives_a_history_the_same_scores_alone_and_in_a_padded_batch(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer)).eval()
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    render = prompt_function(dataset.catalog, prompt_cfg(), tokenizer)
    scorer = CatalogHeadScorer(model, tokenizer, head, render, batch_size=4, add_special_tokens=True)
    assert isinstance(scorer, CatalogScorer)
    histories = [case.history for case in dataset.eval_cases("test")[:4]]
    together = scorer.score(histories)
    assert together.shape == (4, len(dataset.catalog))
    for row, history in enumerate(histories):
        torch.testing.assert_close(scorer.score([history])[0], together[row], rtol=1e-4, atol=1e-4)
    # the score is the head applied to the last hidden state of the unpadded prompt
    ids = tokenizer([render(histories[0])], return_tensors="pt")["input_ids"]
    hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
    torch.testing.assert_close(together[0], head(hidden), rtol=1e-4, atol=1e-4)
    # with a history pool, each user's own latest items are pooled, alone or in a batch
    pooled = CatalogHead(head.titles, head.item_ids, history_pool=3)
    assert pooled.pool is not None
    with torch.no_grad():
        pooled.pool[1].weight.normal_(std=0.05)
    scorer = CatalogHeadScorer(model, tokenizer, pooled, render, batch_size=3, add_special_tokens=True)
    together = scorer.score(histories)
    recent = torch.tensor([list(histories[0].items[-3:])])
    torch.testing.assert_close(together[0], pooled(hidden[None], history=recent)[0], rtol=1e-4, atol=1e-4)
    for row, history in enumerate(histories):
        torch.testing.assert_close(scorer.score([history])[0], together[row], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, dataset: PreparedDataset, tokenizer_dir: Path) -> dict[str, Any]:
    """The recipe through the benchmark's ``llm`` entry: trains 3 steps, validation-ranks, loads the run."""
    out = tmp_path_factory.mktemp("catalog-run") / "run"
    overrides = [*tiny_recipe_overrides(tokenizer_dir), "catalog_head.item_residuals=true", "catalog_head.learning_rate=2e-3",
                 "catalog_head.title_mlp=16", "catalog_head.history_pool=3", "model.num_layers=1",
                 "catalog_head.title_source=hidden", "catalog_head.mask_history=true"]
    params = {"config": [RECIPE], "overrides": overrides,
              "output_dir": str(out), "valid_users": 5, "device": "cpu", "scoring": "catalog_head"}
    ranker = build_and_train(dataset, params, seed=0)
    return {"ranker": ranker, "run_dir": out / "seed0" if (out / "seed0").is_dir() else out}


def test_recipe_is_the_item_span_recipe_with_the_catalog_format():
    recipe = load_config([RECIPE])
    base = load_config([str(REPO / "configs" / "ml100k" / "smollm2-lora.yaml")])
    assert recipe.train.format == "catalog" and not recipe.catalog_head.item_residuals
    assert recipe.prompt == base.prompt and recipe.model == base.model and recipe.lora == base.lora


def test_benchmark_row_is_a_catalog_scorer_through_the_shared_evaluator(trained: dict[str, Any], dataset: PreparedDataset):
    ranker = trained["ranker"]
    assert isinstance(ranker, LLMScorer)
    run_dir = ranker.run_dir
    assert (run_dir / CATALOG_HEAD_FILE).is_file()
    assert json.loads((run_dir / "run.json").read_text())["format"] == "catalog"
    evals = json.loads((run_dir / "metrics.json").read_text())["evals"]
    assert evals and "ndcg@10" in evals[-1] and evals[-1]["valid_users"] == 5.0  # validation ranking ran
    cases = dataset.eval_cases("test")
    result = evaluate(ranker, cases, len(dataset.catalog), ks=[5, 10])
    assert result.metrics["num_queries"] == len(cases)
    assert 0.0 <= result.metrics["ndcg@10"] <= 1.0


def test_views_recipe_is_the_shifts_recipe_ranked_over_three_windows():
    configs = REPO / "configs" / "ml100k"
    shifts = load_config([str(configs / "smollm2-catalog-shifts.yaml")])
    views = load_config([str(configs / "smollm2-catalog-views.yaml")])
    assert views.catalog_head.history_views == [20, 14, 7] and shifts.catalog_head.history_views == []
    assert max(views.catalog_head.history_views) == views.prompt.max_history_items  # the widest view is the prompt
    assert views.train.output_dir != shifts.train.output_dir
    views.catalog_head.history_views, views.train.output_dir = [], shifts.train.output_dir
    assert views == shifts  # trained exactly as attempt 15


def test_masked_recipe_is_the_views_recipe_with_mask_history_only():
    configs = REPO / "configs" / "ml100k"
    views = load_config([str(configs / "smollm2-catalog-views.yaml")])
    masked = load_config([str(configs / "smollm2-catalog-masked.yaml")])
    assert masked.catalog_head.mask_history and not views.catalog_head.mask_history
    assert masked.train.output_dir != views.train.output_dir
    masked.catalog_head.mask_history, masked.train.output_dir = False, views.train.output_dir
    assert masked == views


def test_masked_user_recipe_is_the_masked_recipe_with_the_user_scope_only():
    configs = REPO / "configs" / "ml100k"
    masked = load_config([str(configs / "smollm2-catalog-masked.yaml")])
    user = load_config([str(configs / "smollm2-catalog-masked-user.yaml")])
    assert user.catalog_head.mask_scope == "user" and masked.catalog_head.mask_scope == "window"
    assert user.train.output_dir != masked.train.output_dir
    user.catalog_head.mask_scope, user.train.output_dir = "window", masked.train.output_dir
    assert user == masked
    bench = load_config([str(configs / "benchmark-llm-catalog-masked-user.yaml")], schema=BenchmarkConfig)
    (row,) = [m for m in bench.models if m.name == "llm"]  # beside the shared baselines (tests/test_configs.py)
    assert row.params["config"] == ["configs/ml100k/smollm2-catalog-masked-user.yaml"]


def test_shallow_recipe_is_the_pool_recipe_on_the_first_ten_blocks_and_every_window():
    stack = [RECIPE, *(str(REPO / "configs" / "ml100k" / f"smollm2-catalog-{name}.yaml") for name in ("4ep", "mlp", "pool"))]
    pool = load_config(stack)
    shallow = load_config([*stack, str(REPO / "configs" / "ml100k" / "smollm2-catalog-shallow.yaml")])
    assert shallow.model.num_layers == 10 and pool.model.num_layers is None
    assert shallow.prompt.max_examples_per_user == 0 and shallow.train.epochs == 3
    assert shallow.catalog_head == pool.catalog_head and shallow.lora == pool.lora
    # the one-file form of the selected recipe is exactly this stack
    assert load_config([str(REPO / "configs" / "ml100k" / "smollm2-catalog-selected.yaml")]) == shallow


def test_hidden_recipe_loads_alone_as_the_benchmarked_two_file_stack():
    ml100k = REPO / "configs" / "ml100k"
    alone = load_config([str(ml100k / "smollm2-catalog-hidden.yaml")])
    stack = load_config([str(ml100k / "smollm2-catalog-selected.yaml"), str(ml100k / "smollm2-catalog-hidden.yaml")])
    assert alone == stack and alone.catalog_head.title_source == "hidden" and alone.model.num_layers == 10
    assert alone.train.format == "catalog" and alone.train.output_dir == "runs/ml100k-smollm2-catalog-hidden"


def test_run_loads_as_a_catalog_scorer_that_only_recommends_unseen_catalog_items(trained: dict[str, Any], dataset: PreparedDataset):
    run_dir = trained["ranker"].run_dir
    recommender = Recommender.load(run_dir, device="cpu")
    assert recommender.method == "catalog_head"
    assert recommender.run is not None
    assert len(recommender.run.ranker.scorer.backbone.layers) == 1  # model.num_layers=1 of the 2-layer model, as trained
    history = dataset.eval_cases("test")[0].history
    recs = recommender.recommend(history=[dataset.catalog[i].item_id for i in history.items], k=5)
    assert len(recs) == 5
    seen = {dataset.catalog[i].item_id for i in history.items}
    assert all(r.item_id in dataset.catalog.item_ids and r.item_id not in seen for r in recs)
    with pytest.raises(ValueError, match="catalog head"):
        Recommender.load(run_dir, device="cpu", scoring="beam")


def test_a_loaded_run_reads_a_longer_or_shorter_history_only_when_asked(trained: dict[str, Any], dataset: PreparedDataset):
    from llmrec.run_loading import read_run_config

    run_dir = trained["ranker"].run_dir
    history = dataset.eval_cases("test")[0].history
    assert len(history.items) > 2
    default = Recommender.load(run_dir, device="cpu")
    short = Recommender.load(run_dir, device="cpu", overrides=["prompt.max_history_items=2"])
    assert default.run is not None and short.run is not None
    assert short.run.config.prompt.max_history_items == 2
    assert default.run.config.prompt.max_history_items == read_run_config(run_dir).prompt.max_history_items != 2
    scores = {name: rec.run.ranker.scorer.score([history]) for name, rec in (("default", default), ("short", short))}
    assert not torch.equal(scores["default"], scores["short"])  # the prompt really changed
    with pytest.raises(ConfigError, match="only inference settings"):
        Recommender.load(run_dir, device="cpu", overrides=["catalog_head.title_mlp=0"])


def test_history_views_rank_by_the_mean_log_softmax_of_each_window(dataset: PreparedDataset, tokenizer: Any):
    model = tiny_llama(len(tokenizer)).eval()
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False)
    renders = view_renders(dataset.catalog, prompt_cfg(), tokenizer, [6, 2])
    histories = [case.history for case in dataset.eval_cases("test")[:3]]
    assert all(len(h.items) > 2 for h in histories)
    # each view is the prompt with its own item budget: the 2-item view is the 6-item one's tail
    long, short = (render(histories[0]) for render in renders)
    assert long != short and long.startswith(short.split("\n")[0]) and long.endswith(short.split("\n", 2)[-1])
    assert view_renders(dataset.catalog, prompt_cfg(), tokenizer, [])[0](histories[0]) == long  # no views: the prompt
    both = CatalogHeadScorer(model, tokenizer, head, renders, batch_size=2).score(histories)
    alone = [CatalogHeadScorer(model, tokenizer, head, render, batch_size=2).score(histories) for render in renders]
    assert not torch.allclose(alone[0], alone[1])
    expected = (torch.log_softmax(alone[0], dim=-1) + torch.log_softmax(alone[1], dim=-1)) / 2
    torch.testing.assert_close(both, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least one render"):
        CatalogHeadScorer(model, tokenizer, head, [])


def test_a_loaded_run_ranks_over_history_views_only_when_asked(trained: dict[str, Any], dataset: PreparedDataset):
    run_dir = trained["ranker"].run_dir
    history = dataset.eval_cases("test")[0].history
    default = Recommender.load(run_dir, device="cpu")
    viewed = Recommender.load(run_dir, device="cpu", overrides=["catalog_head.history_views=[6, 2]"])
    assert default.run is not None and viewed.run is not None
    assert len(default.run.ranker.scorer.renders) == 1 and len(viewed.run.ranker.scorer.renders) == 2
    scores = viewed.run.ranker.scorer.score([history])
    assert (torch.logsumexp(scores, dim=-1) < 0).all()  # a mean of two different log-softmaxes sums to below 1
    assert not torch.allclose(scores, torch.log_softmax(default.run.ranker.scorer.score([history]), dim=-1))


def test_a_benchmark_entry_ranks_a_finished_run_with_its_inference_settings(trained: dict[str, Any], dataset: PreparedDataset):
    from llmrec.llm_benchmark import load_ranker, parse_params

    run_dir = trained["ranker"].run_dir
    params = parse_params({"config": [RECIPE], "scoring": "catalog_head", "settings": ["catalog_head.history_views=[6, 2]"]})
    viewed = load_ranker(run_dir, dataset, params, None)
    assert viewed.recommender.run is not None and len(viewed.recommender.run.ranker.scorer.renders) == 2
    plain = load_ranker(run_dir, dataset, parse_params({"config": [RECIPE], "scoring": "catalog_head"}), None)
    assert plain.recommender.run is not None and len(plain.recommender.run.ranker.scorer.renders) == 1
    assert viewed.recipe_sha256 == plain.recipe_sha256  # the same weights and recipe; the setting is in params
    for bad in ("model.num_layers=3", "catalog_head.history_views"):  # not inference / not key=value: before training
        with pytest.raises(ConfigError, match=r"models\[\]\.params\.settings"):
            parse_params({"config": [RECIPE], "settings": [bad]})


def test_loaded_head_matches_the_trained_one(trained: dict[str, Any], dataset: PreparedDataset, tokenizer: Any):
    run_dir = trained["ranker"].run_dir
    state = torch.load(run_dir / CATALOG_HEAD_FILE, weights_only=True)
    model = tiny_llama(len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1)  # as trained
    head = load_catalog_head(run_dir / CATALOG_HEAD_FILE, model, tokenizer, dataset.catalog, prompt_cfg())
    torch.testing.assert_close(head.proj.weight, state["proj"])
    assert head.residuals is not None
    torch.testing.assert_close(head.residuals.detach(), state["residuals"])
    assert not torch.equal(state["proj"], torch.eye(state["proj"].shape[0]))  # three steps moved it
    assert head.mlp is not None and head.mlp[1].out_features == 16
    for name, tensor in head.mlp.state_dict().items():
        torch.testing.assert_close(tensor, state["mlp"][name])
    assert state["mlp"]["3.weight"].abs().sum() > 0  # the zero-initialised output layer trained
    assert head.pool is not None and head.history_pool == state["history_pool"] == 3
    for name, tensor in head.pool.state_dict().items():
        torch.testing.assert_close(tensor, state["pool"][name])
    assert state["pool"]["1.weight"].abs().sum() > 0  # the zero-initialised history pool trained through the loop
    assert head.title_source == state["title_source"] == "hidden"  # the recipe's hidden-state title vectors,
    torch.testing.assert_close(head.titles, state["titles"])  # saved by the loop, not recomputed from this model


def test_a_model_without_lm_head_has_no_attached_head(tokenizer: Any):
    from tests.tiny import tiny_bert

    assert attached_head(tiny_bert(len(tokenizer))) is None


def test_catalog_head_scoring_is_refused_for_a_token_trained_model(dataset: PreparedDataset, tokenizer: Any):
    from llmrec.training.ranking_eval import build_ranker

    with pytest.raises(ValueError, match="train.format: catalog"):
        build_ranker(tiny_llama(len(tokenizer)), tokenizer, dataset.catalog, prompt_cfg(), scoring="catalog_head")


def test_validation_during_training_ranks_over_the_runs_history_views(monkeypatch: pytest.MonkeyPatch,
                                                                     dataset: PreparedDataset, tokenizer: Any):
    import llmrec.training.ranking_eval as ranking_eval

    model = tiny_llama(len(tokenizer))
    attach_catalog_head(model, build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False))
    ranker = ranking_eval.build_ranker(model, tokenizer, dataset.catalog, prompt_cfg(), "catalog_head", history_views=[6, 2])
    assert len(ranker.renders) == 2
    seen: dict[str, Any] = {}
    real = ranking_eval.build_ranker

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["ranker"] = real(*args, **kwargs)
        return seen["ranker"]

    monkeypatch.setattr(ranking_eval, "build_ranker", spy)
    config = load_config([RECIPE], ["catalog_head.history_views=[6, 2]"])
    ranking_eval.run_ranking_eval_fn(config, dataset, num_users=2)(model.eval(), tokenizer)
    assert len(seen["ranker"].renders) == 2


def test_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="catalog"):
        load_config([RECIPE], ["train.format=items"])


def test_head_learning_rate_is_its_own_group_and_keeps_its_ratio_under_the_schedule(dataset: PreparedDataset, tokenizer: Any):
    from llmrec.training.builders import build_optimizer, build_scheduler

    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=True)
    attach_catalog_head(model, head)
    head_ids = {id(p) for p in head.parameters()}

    same = build_optimizer(model, 1e-3, 0.1)  # no head rate: the head shares the model's groups
    assert [g["lr"] for g in same.param_groups] == [1e-3, 1e-3]

    optimizer = build_optimizer(model, 1e-3, 0.1, head_learning_rate=1e-2)
    head_groups = [g for g in optimizer.param_groups if any(id(p) in head_ids for p in g["params"])]
    assert head_groups and all(g["lr"] == 1e-2 for g in head_groups)
    assert all(id(p) in head_ids for g in head_groups for p in g["params"])  # nothing else rides along
    assert sum(len(g["params"]) for g in head_groups) == 2  # projection and residuals
    others = [g for g in optimizer.param_groups if g not in head_groups]
    assert all(g["lr"] == 1e-3 for g in others)
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == trainable

    scheduler = build_scheduler(optimizer, "cosine", total_steps=10, warmup_ratio=0.2, num_processes=1)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    rates = [g["lr"] for g in optimizer.param_groups]
    assert 0 < rates[0] < 1e-3
    torch.testing.assert_close(head_groups[0]["lr"] / others[0]["lr"], 10.0)


def test_the_title_mlp_biases_and_norm_get_the_head_rate_without_weight_decay(dataset: PreparedDataset, tokenizer: Any):
    from llmrec.training.builders import build_optimizer

    model = tiny_llama(len(tokenizer))
    head = build_catalog_head(model, tokenizer, dataset.catalog, prompt_cfg(), residuals=False, mlp_hidden=12)
    attach_catalog_head(model, head)
    optimizer = build_optimizer(model, 1e-3, 0.1, head_learning_rate=1e-2)
    head_groups = [g for g in optimizer.param_groups if g["lr"] == 1e-2]
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in head_groups}
    assert head.mlp is not None
    assert by_decay[0.1] == {id(head.proj.weight), id(head.mlp[1].weight), id(head.mlp[3].weight)}
    assert by_decay[0.0] == {id(head.mlp[0].weight), id(head.mlp[0].bias), id(head.mlp[1].bias)}


def test_head_settings_are_validated():
    assert load_config([RECIPE], ["catalog_head.learning_rate=5e-3"]).catalog_head.learning_rate == 5e-3
    with pytest.raises(ConfigError, match="catalog_head.learning_rate must be > 0"):
        load_config([RECIPE], ["catalog_head.learning_rate=0"])
    with pytest.raises(ConfigError, match="catalog_head.batch_size"):
        load_config([RECIPE], ["catalog_head.batch_size=0"])
    with pytest.raises(ConfigError, match="catalog_head.title_mlp"):
        load_config([RECIPE], ["catalog_head.title_mlp=-1"])
    with pytest.raises(ConfigError, match="catalog_head.history_pool"):
        load_config([RECIPE], ["catalog_head.history_pool=-2"])
    with pytest.raises(ConfigError, match="needs train.format: catalog"):  # it would silently do nothing
        load_config([RECIPE], ["train.format=item_span", "catalog_head.learning_rate=5e-3"])
    assert load_config([RECIPE], ["catalog_head.title_source=hidden"]).catalog_head.title_source == "hidden"
    with pytest.raises(ConfigError, match="catalog_head.title_source must be embeddings or hidden"):
        load_config([RECIPE], ["catalog_head.title_source=tokens"])
    with pytest.raises(ConfigError, match="catalog_head.title_source needs train.format: catalog"):
        load_config([RECIPE], ["train.format=item_span", "catalog_head.title_source=hidden"])
    assert load_config([RECIPE], ["catalog_head.history_views=[20, 14, 7]"]).catalog_head.history_views == [20, 14, 7]
    for bad in ("[20, 0]", "[20, -7]", "[20, 20]", "[true]"):
        with pytest.raises(ConfigError, match="catalog_head.history_views"):
            load_config([RECIPE], [f"catalog_head.history_views={bad}"])
    assert load_config([RECIPE], ["catalog_head.mask_history=true", "catalog_head.mask_scope=user"]).catalog_head.mask_scope == "user"
    with pytest.raises(ConfigError, match="catalog_head.mask_scope must be one of window, user"):
        load_config([RECIPE], ["catalog_head.mask_history=true", "catalog_head.mask_scope=session"])
    with pytest.raises(ConfigError, match="mask_scope=user needs catalog_head.mask_history: true"):
        load_config([RECIPE], ["catalog_head.mask_scope=user"])
    with pytest.raises(ConfigError, match="catalog_head.history_views needs train.format: catalog"):
        load_config([RECIPE], ["train.format=item_span", "catalog_head.history_views=[20, 7]"])


def test_user_scope_training_hands_the_loss_each_packed_examples_prior_items(tmp_path: Path, dataset: PreparedDataset,
                                                                             tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import llmrec.modeling.catalog_head as catalog_head_module

    seen_priors: list[tuple[int, ...]] = []
    real = catalog_head_module._seen_rows

    def recording(pairs: Any, prior_items: torch.Tensor | None = None) -> torch.Tensor:
        assert prior_items is not None
        seen_priors.append(tuple(prior_items.shape))
        return real(pairs, prior_items)

    monkeypatch.setattr(catalog_head_module, "_seen_rows", recording)
    overrides = [*tiny_recipe_overrides(tokenizer_dir), "model.num_layers=1", "train.packing=true",
                 "catalog_head.mask_history=true", "catalog_head.mask_scope=user", "prompt.max_history_items=5",
                 "catalog_head.history_views=[5, 3]"]  # short windows: several items before most of them
    params = {"config": [RECIPE], "overrides": overrides, "output_dir": str(tmp_path / "run"), "valid_users": 3,
              "device": "cpu", "scoring": "catalog_head"}
    build_and_train(dataset, params, seed=0)
    assert seen_priors and all(len(shape) == 3 and shape[0] == 2 for shape in seen_priors)  # (B, M, P), each step
    assert any(shape[1] > 1 for shape in seen_priors)  # rows hold several examples
    assert any(shape[2] > 1 for shape in seen_priors)  # and windows with several items before them


def test_the_training_loop_gives_the_head_its_learning_rate(trained: dict[str, Any]):
    states = sorted((trained["ranker"].run_dir / "checkpoints").glob("step-*/optimizer.bin"))
    assert states, "the run kept no optimizer state"
    groups = torch.load(states[-1], map_location="cpu", weights_only=True)["param_groups"]
    assert sorted({g["initial_lr"] for g in groups if g["params"]}) == [5e-4, 2e-3]  # LoRA (the recipe's), head


def test_export_writes_a_run_with_a_checkpoints_weights_or_their_mean(trained: dict[str, Any], dataset: PreparedDataset,
                                                                      tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from llmrec.training.export import ADAPTER_FILE, EXPORT_FILE, export_checkpoints

    run_dir = trained["ranker"].run_dir
    best = run_dir / "checkpoints" / "best-trainable.safetensors"
    weights = load_file(str(best))
    assert any(".lora_A." in name for name in weights) and any(name.endswith("lm_head.proj.weight") for name in weights)
    save_file({name: tensor.float() + 0.5 for name, tensor in weights.items()}, str(tmp_path / "other.safetensors"))
    adapter, head = load_file(str(run_dir / ADAPTER_FILE)), torch.load(run_dir / CATALOG_HEAD_FILE, weights_only=True)

    copy = export_checkpoints(run_dir, [best], tmp_path / "copy")  # the run's own (best-epoch) weights back
    for name, tensor in load_file(str(copy / ADAPTER_FILE)).items():
        assert torch.equal(tensor, adapter[name])
    assert torch.equal(torch.load(copy / CATALOG_HEAD_FILE, weights_only=True)["proj"], head["proj"])

    mean = export_checkpoints(run_dir, [best, tmp_path / "other.safetensors"], tmp_path / "mean")
    for name, tensor in load_file(str(mean / ADAPTER_FILE)).items():
        torch.testing.assert_close(tensor.float(), adapter[name].float() + 0.25)
    exported = torch.load(mean / CATALOG_HEAD_FILE, weights_only=True)
    torch.testing.assert_close(exported["proj"], head["proj"] + 0.25)
    torch.testing.assert_close(exported["residuals"], head["residuals"] + 0.25)
    for part in ("mlp", "pool"):
        for name, tensor in exported[part].items():
            torch.testing.assert_close(tensor, head[part][name] + 0.25)
    assert torch.equal(exported["titles"], head["titles"])  # fixed title vectors are not trained
    assert json.loads((mean / EXPORT_FILE).read_text())["weights"] == "mean"
    assert not (mean / "checkpoints").exists()
    ranker = Recommender.load(mean, device="cpu").ranker  # a complete run: it loads and ranks
    result = evaluate(ranker, dataset.eval_cases("test")[:6], len(dataset.catalog), ks=[10])
    assert result.metrics["num_queries"] == 6

    with pytest.raises(FileExistsError, match="exists"):
        export_checkpoints(run_dir, [best], tmp_path / "mean")
    save_file({name: t for name, t in weights.items() if "proj" not in name}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="differ"):
        export_checkpoints(run_dir, [best, tmp_path / "partial.safetensors"], tmp_path / "bad")
    with pytest.raises(ValueError, match="no trainable counterpart"):
        export_checkpoints(run_dir, [tmp_path / "partial.safetensors"], tmp_path / "bad")
    save_file({**weights, "base_model.model.model.embed_tokens.weight": torch.zeros(2, 2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match="cannot place"):
        export_checkpoints(run_dir, [tmp_path / "extra.safetensors"], tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="not a step-N"):
        export_checkpoints(run_dir, [tmp_path / "nope.safetensors"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_llmrec_train_alone_validates_a_catalog_run_by_ranking(tmp_path: Path, dataset: PreparedDataset,
                                                                 tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """``llmrec train`` (no benchmark) ranks validation users after each epoch and keeps the best epoch."""
    from typer.testing import CliRunner

    from llmrec import cli
    from llmrec.training.builders import catalog_validation_fn

    out = tmp_path / "run"
    overrides = [*tiny_recipe_overrides(tokenizer_dir), "model.num_layers=1", f"data.prepared_dir={dataset.root}",
                 f"train.output_dir={out}", "train.max_steps=-1", "train.epochs=2", "train.eval_max_users=5",
                 "train.early_stopping_patience=0"]
    loads: list[Path] = []
    real_load = PreparedDataset.load.__func__  # type: ignore[attr-defined]

    def counted_load(cls: type[PreparedDataset], root: str | Path, verify: bool = False) -> PreparedDataset:
        loads.append(Path(root))
        return real_load(cls, root, verify)

    monkeypatch.setattr(PreparedDataset, "load", classmethod(counted_load))
    cli._register_all()
    result = CliRunner().invoke(cli.app, ["train", "--config", RECIPE, *overrides])
    assert result.exit_code == 0, result.output
    assert loads == [dataset.root]  # head, examples and validation hook share one read of the prepared dataset
    evals = json.loads((out / "metrics.json").read_text())["evals"]
    assert len(evals) == 2 and all(e["valid_users"] == 5.0 and "ndcg@10" in e for e in evals)  # one per epoch
    metrics = json.loads((out / "metrics.json").read_text())
    best = max(range(2), key=lambda i: evals[i]["ndcg@10"])  # max keeps the first of equals, as the loop does
    assert metrics["best_step"] == evals[best]["step"] and metrics["weights_step"] == metrics["best_step"]
    # the other formats have no ranking hook (their validation loss decides), nor does eval_every_epoch=false
    assert catalog_validation_fn(load_config([RECIPE], ["train.format=item_span"])) is None
    assert catalog_validation_fn(load_config([RECIPE], ["train.eval_every_epoch=false"])) is None
