"""Read a run directory back into the parts a :class:`~llmrec.recommender.Recommender` needs.

A run directory (written by training) holds ``run.json`` (kind, base model, dataset dir, catalog
fingerprint), ``config.yaml`` (the resolved config), ``prompts/*.jinja`` (reused verbatim),
``tokenizer/`` and ``adapter/`` (PEFT). :func:`load_run` checks them in that order and names the
file and field of the first problem; it refuses a dataset whose catalog changed since training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from llmrec.config import (
    ConfigError,
    PromptConfig,
    RunConfig,
    apply_override,
    from_dict,
    history_view_prompts,
)
from llmrec.data.dataset import PreparedDataset, catalog_fingerprint
from llmrec.data.schema import Catalog, UserSequence
from llmrec.explain import Explainer, decoder_item_embedder, embedding_similarity, generate_text
from llmrec.io import read_json_object
from llmrec.training.run_dir import INCOMPLETE_MARKER  # written by training while it runs

log = logging.getLogger(__name__)

KINDS = ("decoder", "encoder")
REQUIRED_RUN_FIELDS = ("kind", "base_model", "dataset_dir", "catalog_fingerprint")
EXPLAIN_TEMPLATE = "explain"


class CatalogChangedError(RuntimeError):
    """The prepared dataset's catalog is not the one the run was trained on."""


@dataclass(frozen=True)
class RunInfo:
    """The fields of ``run.json`` a recommender relies on (``raw`` keeps all of them)."""

    path: Path
    kind: str
    base_model: str
    dataset_dir: str
    catalog_fingerprint: str
    raw: dict[str, Any]


@dataclass
class LoadedRun:
    """Everything a loaded run provides."""

    info: RunInfo
    config: RunConfig
    dataset: PreparedDataset
    ranker: Any  # TopKRanker (decoder beam search) or ScoreRanker (catalog scorer)
    method: str  # beam | full_catalog | catalog_head | two_tower
    explainer: Explainer
    grounders: list[tuple[str, Any]]
    model: Any  # the decoder (adapter merged) or the two-tower recommender
    tokenizer: Any


class ScoreRanker:
    """Top-K lists from a catalog scorer: excluded items masked, ties broken by item index."""

    def __init__(self, scorer: Any):
        self.scorer = scorer

    def rank(self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scorer.score(histories).float().cpu()  # (B, N)
        for row, items in enumerate(exclude):
            if items:
                scores[row, list(items)] = float("-inf")
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # ties: lower index first
        top = scores.gather(1, order)  # (B, k)
        order = torch.where(torch.isfinite(top), order, torch.full_like(order, -1))
        return order, top


def read_run_info(run_dir: Path) -> RunInfo:
    """Parse ``RUN/run.json``; errors name the file and the missing or bad field."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path.name} is missing")
    raw = read_json_object(path)
    missing = [f for f in REQUIRED_RUN_FIELDS if not isinstance(raw.get(f), str) or not raw.get(f)]
    if missing:
        raise ValueError(f"{path}: missing or non-string field(s) {missing}")
    if raw["kind"] not in KINDS:
        raise ValueError(f"{path}: field 'kind' is {raw['kind']!r}, expected one of {KINDS}")
    return RunInfo(path=run_dir, kind=raw["kind"], base_model=raw["base_model"], dataset_dir=raw["dataset_dir"],
                   catalog_fingerprint=raw["catalog_fingerprint"], raw=raw)


INFERENCE_OVERRIDES = ("prompt.max_history_items", "prompt.max_history_tokens", "generation.", "catalog_head.batch_size",
                       "catalog_head.history_views")


def check_inference_override(override: str) -> None:
    """Raise ConfigError unless ``override`` (``key.sub=value``) sets one of :data:`INFERENCE_OVERRIDES`."""
    key = override.split("=", 1)[0].strip()
    if "=" not in override or not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
                                      for allowed in INFERENCE_OVERRIDES):
        raise ConfigError(f"override {override!r}: a loaded run takes only inference settings, key.sub=value "
                          f"({', '.join(k + '*' if k.endswith('.') else k for k in INFERENCE_OVERRIDES)})")


def read_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """``RUN/config.yaml`` as a RunConfig; groups that belong to other schemas (e.g. ``encoder``) are skipped.

    ``overrides`` (``key.sub=value``) change inference settings of the loaded run only: the keys
    in :data:`INFERENCE_OVERRIDES` (history budget, generation, ranking batch). Anything that
    would change what the weights mean (model, LoRA, template, title format) is refused.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path.name} is missing")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for override in overrides:
        check_inference_override(override)
        tree = apply_override(tree, override)
    known = {name for name in RunConfig.__dataclass_fields__}
    extra = sorted(set(tree) - known)
    if extra:
        log.debug("%s: groups %s are not part of RunConfig; ignored here", path, extra)
    config = from_dict(RunConfig, {k: v for k, v in tree.items() if k in known}, str(path))
    config.validate()
    return config


def open_dataset(info: RunInfo) -> PreparedDataset:
    """The run's prepared dataset, checked against the catalog fingerprint stored at training time.

    A relative ``dataset_dir`` is tried against the working directory, then the run directory.
    """
    declared = Path(info.dataset_dir).expanduser()
    candidates = [declared] if declared.is_absolute() else [Path.cwd() / declared, info.path / declared]
    root = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if root is None:
        tried = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(f"{info.path / 'run.json'}: dataset_dir {info.dataset_dir!r} is not a prepared dataset (tried {tried})")
    dataset = PreparedDataset.load(root)
    actual = catalog_fingerprint(dataset.catalog)
    for name, value in (("run.json", info.catalog_fingerprint), ("manifest.json", dataset.manifest.get("catalog_fingerprint"))):
        if value is not None and value != actual:
            raise CatalogChangedError(
                f"the catalog of {root} changed since run {info.path.name} was trained: {name} has fingerprint "
                f"{str(value)[:12]}…, the catalog now hashes to {actual[:12]}…; re-prepare the dataset the run "
                "was trained on, or retrain"
            )
    return dataset


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_grounders(catalog: Catalog, names: Sequence[str]) -> list[tuple[str, Any]]:
    """The free-text grounding chain (``grounding.fallback``) over ``catalog``."""
    from llmrec.grounding import build_grounder

    return [(name, build_grounder(name, catalog)) for name in names]


def load_run(run_dir: str | Path, device: str | torch.device | None = None, scoring: str = "auto",
             overrides: Sequence[str] = ()) -> LoadedRun:
    """Load a decoder or encoder run (see :meth:`llmrec.recommender.Recommender.load`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if (run_dir / INCOMPLETE_MARKER).exists():
        raise RuntimeError(f"{run_dir} is an unfinished run ({INCOMPLETE_MARKER} is present): training did not complete")
    info = read_run_info(run_dir)
    config = read_run_config(run_dir, overrides)
    dataset = open_dataset(info)
    grounders = build_grounders(dataset.catalog, config.grounding.fallback)
    target = resolve_device(device)
    if info.kind == "encoder":
        if scoring not in ("auto", "full_catalog"):
            raise ValueError(f"scoring={scoring!r}: an encoder run scores the whole catalog (use auto)")
        return _load_encoder(info, config, dataset, grounders, target)
    return _load_decoder(info, config, dataset, grounders, target, scoring)


def _load_encoder(
    info: RunInfo, config: RunConfig, dataset: PreparedDataset, grounders: list[tuple[str, Any]], device: torch.device
) -> LoadedRun:
    from llmrec.encoder.recommender import TwoTowerRecommender

    model = TwoTowerRecommender.load(info.path, catalog=dataset.catalog, device=str(device))
    similarity = embedding_similarity(lambda indices: model.embed_items()[list(indices)])
    explainer = Explainer(dataset.catalog, None, similarity, "two_tower_item_embeddings",
                          no_generator_note="this run has no decoder (encoder run): template explanation from the real overlap")
    return LoadedRun(info, config, dataset, ScoreRanker(model), "two_tower", explainer, grounders, model, model.tokenizer)


def _load_decoder(
    info: RunInfo, config: RunConfig, dataset: PreparedDataset, grounders: list[tuple[str, Any]],
    device: torch.device, scoring: str,
) -> LoadedRun:
    from llmrec.generation.decode import ConstrainedBeamRanker, FullCatalogScorer

    model, tokenizer = load_decoder_model(info, config, device)
    prompts = DecoderPrompts(info.path, config, dataset.catalog, tokenizer)
    gen = config.generation
    ranker: Any
    if info.raw.get("format") == "catalog" or scoring == "catalog_head":
        ranker, method = ScoreRanker(_catalog_head_scorer(info, config, dataset, model, tokenizer, prompts, scoring)), "catalog_head"
    elif scoring == "full_catalog":
        trie = prompts.item_trie(vocab_size=model.get_input_embeddings().weight.shape[0])
        scorer = FullCatalogScorer(model, tokenizer, trie, prompts.next_item,
                                   add_special_tokens=prompts.add_special_tokens)
        ranker, method = ScoreRanker(scorer), "full_catalog"
    else:
        # Prompts are tokenized exactly as in training (a tokenizer's own BOS included).
        trie = prompts.item_trie(vocab_size=model.get_input_embeddings().weight.shape[0])
        ranker = ConstrainedBeamRanker(model, tokenizer, trie, prompts.next_item, num_beams=gen.num_beams,
                                       batch_size=gen.batch_size, add_special_tokens=prompts.add_special_tokens)
        method = "beam"
    generate = None
    note = None
    if prompts.has_explain:
        def generate(history: UserSequence, item: int, seed: int | None) -> str:
            return generate_text(model, tokenizer, prompts.explain(history, item), gen.max_new_tokens, seed,
                                 add_special_tokens=prompts.add_special_tokens)
    else:
        note = f"run {info.path.name} has no prompts/{EXPLAIN_TEMPLATE}.jinja: template explanation from the real overlap"
    similarity = embedding_similarity(decoder_item_embedder(model, tokenizer, dataset.catalog))
    explainer = Explainer(dataset.catalog, generate, similarity, "decoder_hidden_mean", no_generator_note=note)
    return LoadedRun(info, config, dataset, ranker, method, explainer, grounders, model, tokenizer)


def _catalog_head_scorer(info: RunInfo, config: RunConfig, dataset: PreparedDataset, model: Any, tokenizer: Any,
                         prompts: DecoderPrompts, scoring: str) -> Any:
    """The catalog-head scorer of a ``train.format: catalog`` run (any other scoring is refused)."""
    from llmrec.modeling.catalog_head import CATALOG_HEAD_FILE, CatalogHeadScorer, load_catalog_head

    if info.raw.get("format") != "catalog":
        raise ValueError(f"scoring=catalog_head: run {info.path} was trained with format {info.raw.get('format')!r}, not catalog")
    if scoring not in ("auto", "catalog_head"):
        raise ValueError(f"scoring={scoring!r}: run {info.path} has a catalog head, which scores the whole catalog (use auto or catalog_head)")
    head = load_catalog_head(info.path / CATALOG_HEAD_FILE, model, tokenizer, dataset.catalog, config.prompt)
    return CatalogHeadScorer(model, tokenizer, head, prompts.next_item_views(config.catalog_head.history_views),
                             batch_size=config.catalog_head.batch_size,
                             add_special_tokens=prompts.add_special_tokens)


def load_decoder_model(info: RunInfo, config: RunConfig, device: torch.device, merge: bool = True) -> tuple[Any, Any]:
    """Base model (``build_model`` without LoRA) + the run's adapter and tokenizer, in eval mode.

    ``merge`` folds the adapter into the base weights (``merge_and_unload``; not for 4-bit bases):
    inference then does no per-layer adapter work (with a bf16 base and fp32 adapters PEFT would
    also round-trip every activation through fp32). The weights are rounded once to the base's
    dtype; ``merge=False`` keeps the ``PeftModel``.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from llmrec.modeling.build import build_model

    adapter = info.path / "adapter"
    tokenizer_dir = info.path / "tokenizer"
    for needed in (adapter / "adapter_config.json", tokenizer_dir):
        if not needed.exists():
            raise FileNotFoundError(f"{info.path} is not a complete decoder run: {needed.relative_to(info.path)} is missing")
    if config.model.random_init_config is not None:
        _seed_random_base(info)
    base, _ = build_model(config.model, replace(config.lora, enabled=False), "causal_lm", device=None)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"  # generation continues right after each prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))  # tokens added during training
    model = PeftModel.from_pretrained(base, adapter)
    if merge and not config.model.load_in_4bit:
        model = model.merge_and_unload()
    return model.to(device).eval(), tokenizer


def _seed_random_base(info: RunInfo) -> None:
    """Rebuild a random-init base exactly as training did: same seed, same torch version.

    Training seeds everything (``train.seed``) right before ``build_model``, so the base weights
    are a pure function of the seed and the torch build; the adapter is only valid on top of them.
    """
    from accelerate.utils import set_seed

    versions_path = info.path / "versions.json"
    trained_with = json.loads(versions_path.read_text(encoding="utf-8")).get("torch") if versions_path.is_file() else None
    if trained_with != torch.__version__ or not isinstance(info.raw.get("seed"), int):
        raise ValueError(
            f"{info.path / 'run.json'}: the run's base model was randomly initialized (weights not saved); it can only be "
            f"rebuilt from run.json 'seed' with the torch version it was trained with ({trained_with}, this is {torch.__version__})"
        )
    set_seed(int(info.raw["seed"]))


class DecoderPrompts:
    """The run's own templates (``RUN/prompts/*.jinja``), rendered with the run's prompt settings."""

    def __init__(self, run_dir: Path, config: RunConfig, catalog: Catalog, tokenizer: Any):
        from llmrec.prompts import load_template_file

        prompts_dir = run_dir / "prompts"
        next_item = prompts_dir / f"{config.prompt.template}.jinja"
        if not next_item.is_file():
            raise FileNotFoundError(f"{run_dir} lacks prompts/{next_item.name}, the template it was trained with")
        self.next_template = load_template_file(next_item)
        explain = prompts_dir / f"{EXPLAIN_TEMPLATE}.jinja"
        self.explain_template = load_template_file(explain) if explain.is_file() else None
        self.config = config
        self.catalog = catalog
        self.tokenizer = tokenizer

    @property
    def has_explain(self) -> bool:
        return self.explain_template is not None

    def next_item(self, history: UserSequence) -> str:
        from llmrec.serialize import render_prompt

        return render_prompt(history, self.catalog, self.next_template, self.tokenizer, self.config.prompt)

    def next_item_views(self, views: Sequence[int]) -> list[Callable[[UserSequence], str]]:
        """:meth:`next_item` once per view (``catalog_head.history_views``), each with
        ``prompt.max_history_items`` set to the view's item count; no views: ``[next_item]``."""
        from llmrec.serialize import render_prompt

        def render(cfg: PromptConfig) -> Callable[[UserSequence], str]:
            return lambda history: render_prompt(history, self.catalog, self.next_template, self.tokenizer, cfg)

        return [render(cfg) for cfg in history_view_prompts(self.config.prompt, views)]

    @property
    def add_special_tokens(self) -> bool:
        """How prompt text is tokenized (the serialization contract shared with training)."""
        from llmrec.serialize import prompt_adds_special_tokens

        return prompt_adds_special_tokens(self.tokenizer, self.config.prompt)

    def explain(self, history: UserSequence, item: int) -> str:
        """The ``explain`` template over the most recent ``prompt.max_history_items`` items and ``item``."""
        from llmrec.serialize import chat_frame, history_item, target_item, uses_chat

        assert self.explain_template is not None
        cfg = self.config.prompt
        start = max(0, len(history) - cfg.max_history_items) if cfg.max_history_items else 0
        items = [history_item(history, i, self.catalog, cfg, position=i - start + 1) for i in range(start, len(history))]
        text = self.explain_template.render(history=items, target=target_item(self.catalog[item], cfg), num_items=len(items))
        if uses_chat(self.tokenizer, cfg):
            before, after = chat_frame(self.tokenizer)
            return before + text + after
        return text

    def item_trie(self, vocab_size: int) -> Any:
        """Trie of every item's completion, tokenized after the line the prompts end with."""
        from llmrec.generation.trie import build_item_trie
        from llmrec.serialize import completion_text

        sample = self.next_item(UserSequence("<probe>", (0,), (0,), ("rate",), (None,)))
        body = sample.rstrip("\n")
        context = sample[body.rfind("\n") + 1:]  # the last line (a history line or the answer marker) and its newline
        completions = [completion_text(item, self.config.prompt, self.next_template) for item in self.catalog]
        return build_item_trie(completions, self.tokenizer, context=context, vocab_size=vocab_size)
