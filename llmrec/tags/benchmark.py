"""Interest-tag models as benchmark entries: the second table of ``llmrec benchmark``.

A tag entry is a function registered by short name in :data:`llmrec.benchmark.TAG_REGISTRY` (or at
run time with :func:`llmrec.benchmark.register_tag_model`)::

    build(dataset: PreparedDataset, params: dict, seed: int, split: str) -> TagScorer

``split`` is the evaluated split. Unlike a ranking model, a tag baseline needs it: it may learn
from the splits before it (``INPUT_SPLITS[split]``: train for valid, train + valid for test, as
``scripts/train_tags.py`` does), never from the split's targets. Every entry is scored by
:func:`llmrec.tags.baselines.evaluate_tags` on the benchmark's eval cases (``eval.max_users``
applies); ``params.max_users`` draws a further seeded subset for slow heads, and every row says how
many users it covers.

Benchmark YAML (``configs/ml100k/benchmark-tags.yaml``)::

    tags:
      - name: most_frequent
      - name: cooccurrence
        params: {window: 10, decay: 0.8, prior: 0.1}
      - name: tag_classifier
        params:
          config: [configs/ml100k/tags.yaml]   # train one, or run_dir: runs/minilm-tags to load one
          overrides: [tags.max_train_seconds=300]
      - name: decoder_tags                        # zero-shot base decoder
        params: {model: smollm2-135m-instruct, max_users: 100}
      - name: decoder_tags                        # fine-tuned on the interest_tags prompt first
        label: smollm2-tags
        params: {config: [configs/ml100k/smollm2-tags.yaml]}   # or run_dir: runs/ml100k-smollm2-tags

Launch: ``llmrec benchmark --config configs/ml100k/benchmark-tags.yaml``
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llmrec.benchmark import BenchmarkModel, get_tag_builder, seeded_subset
from llmrec.config import ConfigError, EvalConfig, PromptConfig, from_dict, load_benchmark_recipe
from llmrec.data.dataset import INPUT_SPLITS, PreparedDataset
from llmrec.data.schema import UserSequence
from llmrec.tags.baselines import CooccurrenceTags, FloatArray, MostFrequentTags, TagScorer, evaluate_tags

log = logging.getLogger(__name__)

T = TypeVar("T")
# Prompt of the decoder head unless params.prompt says otherwise (as in configs/ml100k/tags.yaml).
DECODER_PROMPT: dict[str, Any] = {"template": "interest_tags", "chat_format": "auto", "include_categories": True}


def fit_sequences(dataset: PreparedDataset, split: str) -> list[UserSequence]:
    """The sequences a tag model may learn from when ``split`` is evaluated (its targets never)."""
    return dataset.sequences(INPUT_SPLITS[split])


def _construct(cls: Callable[..., T], dataset: PreparedDataset, params: dict[str, Any], name: str) -> T:
    try:
        return cls(dataset.catalog, **params)
    except TypeError as err:  # an unknown or misspelled parameter
        raise ConfigError(f"tags: {name}.params: {err}") from None


def build_most_frequent(dataset: PreparedDataset, params: dict[str, Any], seed: int, split: str) -> MostFrequentTags:
    """Entry ``most_frequent``: tag shares of the input interactions (params: ``tags``, the vocabulary)."""
    return _construct(MostFrequentTags, dataset, params, "most_frequent").fit(fit_sequences(dataset, split))


def build_cooccurrence(dataset: PreparedDataset, params: dict[str, Any], seed: int, split: str) -> CooccurrenceTags:
    """Entry ``cooccurrence``: params ``window``, ``decay``, ``prior`` (see :class:`CooccurrenceTags`)."""
    return _construct(CooccurrenceTags, dataset, params, "cooccurrence").fit(fit_sequences(dataset, split))


class TimedTagScorer:
    """A tag scorer plus the wall time its training took (the table's ``train s``; None = unknown)."""

    def __init__(self, scorer: TagScorer, train_time_s: float | None):
        self.scorer = scorer
        self.tags = list(scorer.tags)
        self.train_time_s = train_time_s

    def score_tags(self, histories: Sequence[UserSequence]) -> FloatArray:
        return self.scorer.score_tags(histories)


@dataclass
class ClassifierParams:
    """The ``params`` of a ``tag_classifier`` entry: exactly one of ``run_dir`` and ``config``."""

    run_dir: str | None = None  # load this finished tag-classifier run (no training)
    config: list[str] = field(default_factory=list)  # or train one from these TagsRunConfig YAML file(s)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of config
    output_dir: str | None = None  # where a trained run goes (default: the config's train.output_dir + -seed<N>)
    overwrite: bool = True  # replace output_dir when it exists (a rerun of the benchmark trains again)
    device: str = "cpu"  # torch device of the loaded classifier


def train_classifier_run(params: ClassifierParams, dataset: PreparedDataset, seed: int) -> tuple[Path, float]:
    """Train per ``params.config`` with the benchmark's dataset and seed; returns (run dir, seconds)."""
    from llmrec.tags.classifier import TagsRunConfig, train_tag_classifier

    cfg = load_benchmark_recipe(params.config, params.overrides, dataset.root, seed, params.output_dir, TagsRunConfig)
    started = time.perf_counter()
    run_dir = train_tag_classifier(cfg, dataset, cfg.train.output_dir, f"llmrec benchmark (tag_classifier, seed {seed})",
                                   overwrite=params.overwrite)
    return run_dir, time.perf_counter() - started


def _recorded_train_seconds(run_dir: Path) -> float | None:
    path = run_dir / "metrics.json"
    return float(json.loads(path.read_text(encoding="utf-8"))["train_seconds"]) if path.is_file() else None


def build_classifier(dataset: PreparedDataset, params: dict[str, Any], seed: int, split: str) -> TimedTagScorer:
    """Entry ``tag_classifier``: load ``params.run_dir``, or train one from ``params.config`` first.

    The head trains on train-split positions only (:func:`~llmrec.tags.classifier.train_tag_classifier`).

    Raises:
        ConfigError: both or neither of ``run_dir`` and ``config``, or an unknown parameter.
        ValueError: the run was trained on another dataset than the benchmark's.
    """
    from llmrec.tags.classifier import TagClassifier, read_tags_run

    parsed = from_dict(ClassifierParams, params, "tags: tag_classifier.params")
    if (parsed.run_dir is None) == (not parsed.config):
        raise ConfigError("tags: tag_classifier.params: give exactly one of run_dir (load a run) and config (train one)")
    if parsed.run_dir is not None:
        run_dir, seconds = Path(parsed.run_dir), _recorded_train_seconds(Path(parsed.run_dir))
        log.info("tag_classifier: loading run %s (no training)", run_dir)
    else:
        run_dir, seconds = train_classifier_run(parsed, dataset, seed)
    fingerprint = read_tags_run(run_dir).get("catalog_fingerprint")
    if fingerprint != dataset.fingerprint:
        raise ValueError(f"run {run_dir} was trained on another dataset (catalog {str(fingerprint)[:12]}) than the "
                         f"benchmark's {dataset.root} (catalog {dataset.fingerprint[:12]})")
    return TimedTagScorer(TagClassifier.load(run_dir, catalog=dataset.catalog, device=parsed.device), seconds)


@dataclass
class DecoderParams:
    """The ``params`` of a ``decoder_tags`` entry: a base decoder read zero-shot, or a fine-tuned run.

    With ``run_dir`` (load) or ``config`` (fine-tune with ``train.format: interest_tags`` first, as
    ``configs/ml100k/smollm2-tags.yaml``), the run's own prompt settings apply and ``model``,
    ``prompt`` and ``history_items`` are not used.
    """

    model: str = "smollm2-135m-instruct"  # zero-shot: asset name, local directory or hub id
    prompt: dict[str, Any] = field(default_factory=dict)  # zero-shot: PromptConfig fields over DECODER_PROMPT
    num_tags: int = 3  # zero-shot: tags the prompt asks for
    history_items: int = 10  # zero-shot: most recent history items in the prompt
    run_dir: str | None = None  # load this finished decoder run (no training)
    config: list[str] = field(default_factory=list)  # or fine-tune one from these RunConfig YAML file(s)
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of config
    output_dir: str | None = None  # where a fine-tuned run goes (default: the config's train.output_dir + -seed<N>)
    length_normalize: bool = False  # rank tags by mean instead of summed token log-probability
    device: str = "cpu"  # torch device


def train_decoder_tags_run(params: DecoderParams, dataset: PreparedDataset, seed: int) -> tuple[Path, float]:
    """Fine-tune per ``params.config`` with the benchmark's dataset and seed; returns (run dir, seconds)."""
    from llmrec.config import RunConfig
    from llmrec.llm_benchmark import record_train_time
    from llmrec.training.loop import train
    from llmrec.training.run_dir import resume_or_start

    cfg: RunConfig = load_benchmark_recipe(params.config, params.overrides, dataset.root, seed, params.output_dir)
    if cfg.train.format != "interest_tags":
        raise ConfigError(f"tags: decoder_tags.params.config: train.format is {cfg.train.format!r}, not interest_tags")
    resume = resume_or_start(Path(cfg.train.output_dir), cfg)
    result = train(cfg, command=f"llmrec benchmark (decoder_tags, seed {seed})", resume=resume, device=params.device)
    record_train_time(result.run_dir, result.train_seconds, result.global_step)  # summed over resumes
    return result.run_dir, result.train_seconds


def build_decoder(dataset: PreparedDataset, params: dict[str, Any], seed: int, split: str) -> TagScorer:
    """Entry ``decoder_tags``: exact likelihood of every tag as the first answer of the ``interest_tags`` prompt.

    Raises:
        ConfigError: both ``run_dir`` and ``config``, or an unknown parameter.
        ValueError: the run was trained on another dataset than the benchmark's.
    """
    from llmrec.llm_benchmark import recorded_train_time
    from llmrec.tags.generate import load_decoder_tag_scorer, load_run_tag_scorer

    parsed = from_dict(DecoderParams, params, "tags: decoder_tags.params")
    if parsed.run_dir is not None and parsed.config:
        raise ConfigError("tags: decoder_tags.params: give at most one of run_dir (load a run) and config (fine-tune one)")
    if parsed.run_dir is None and not parsed.config:
        prompt = from_dict(PromptConfig, {**DECODER_PROMPT, **parsed.prompt}, "tags: decoder_tags.params.prompt")
        scorer = load_decoder_tag_scorer(parsed.model, dataset.catalog, prompt, prompt.template, parsed.num_tags,
                                         parsed.history_items, parsed.length_normalize, parsed.device)
        return TimedTagScorer(scorer, 0.0)  # nothing is trained: loading is not training
    if parsed.run_dir is not None:
        run_dir = Path(parsed.run_dir)
        seconds = recorded_train_time(run_dir)
        log.info("decoder_tags: loading run %s (no training)", run_dir)
    else:
        run_dir, seconds = train_decoder_tags_run(parsed, dataset, seed)
    run_scorer, run_dataset = load_run_tag_scorer(run_dir, parsed.device, parsed.length_normalize)
    if run_dataset.fingerprint != dataset.fingerprint:
        raise ValueError(f"run {run_dir} was trained on another dataset (catalog {run_dataset.fingerprint[:12]}) than "
                         f"the benchmark's {dataset.root} (catalog {dataset.fingerprint[:12]})")
    return TimedTagScorer(run_scorer, seconds)


def run_tag_one(dataset: PreparedDataset, spec: BenchmarkModel, seed: int, eval_cfg: EvalConfig) -> dict[str, Any]:
    """Build one tag model with one seed and score it on the benchmark's cases; returns its report row."""
    label = spec.label or spec.name
    params = dict(spec.params)
    max_users = params.pop("max_users", None)
    started = time.perf_counter()
    scorer = get_tag_builder(spec.name)(dataset, params, seed, eval_cfg.split)
    build_time = time.perf_counter() - started
    if not isinstance(scorer, TagScorer):
        raise TypeError(f"tag model {spec.name!r} returned {type(scorer).__name__}, not a TagScorer")
    cases = seeded_subset(dataset.eval_cases(eval_cfg.split), eval_cfg.max_users, eval_cfg.seed)
    cases = seeded_subset(cases, max_users, eval_cfg.seed)
    started = time.perf_counter()
    metrics = evaluate_tags(scorer, cases, dataset.catalog)
    inference_time = time.perf_counter() - started
    reported = getattr(scorer, "train_time_s", None)  # a loaded run reports when it was trained
    log.info("tags %s seed %d: f1@3 %.4f auc_micro %.4f (%d users)", label, seed, metrics["f1@3"], metrics["auc_micro"],
             len(cases))
    return {
        "model": spec.name,
        "label": label,
        "seed": seed,
        "users": len(cases),  # users scored (targets without categories are counted in metrics.skipped)
        "metrics": metrics,
        "train_time_s": round(float(reported) if reported is not None else build_time, 2),
        "build_time_s": round(build_time, 2),  # wall time of the builder in this command (fit, training or loading)
        "inference_time_s": round(inference_time, 2),
        "params": spec.params,
    }
