"""Typed configuration groups and the one loader that fills them.

Loading order, the same everywhere (CLI, scripts, tests)::

    YAML file(s), merged left to right  ->  ``key.sub=value`` overrides  ->  typed validation

A file may start from others with a top-level ``include:`` (one path or a list, relative to
the including file): the included files merge left to right, then the file's own keys over them.
Mappings merge key by key; a list replaces the one merged before it, unless its key ends in ``+``
(``models+:``), which appends to it: to the included files' list in a file with ``include:``, else
to the list of the files before it on the command line (none: the list alone).

Each group is a dataclass whose fields carry a default and a one-line comment. Unknown keys,
wrong types and contradictions are rejected when loaded, naming the key and the file.
Builders turn a group into plain arguments; library classes never take a whole config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and where it came from."""


@dataclass
class DataConfig:
    dataset: str = "ml-100k"  # ml-100k | ml-1m | recbole | amazon2018 | amazon2023 | tabular
    path: str | None = None  # raw files (dir or file); None fetches the named asset
    prepared_dir: str = "data/ml-100k"  # where the prepared dataset is written / read
    k_core: int = 0  # keep users and items with at least k interactions (0 = off)
    min_rating: float | None = None  # keep only interactions rated >= this (None = keep all)
    split: str = "leave_one_out"  # leave_one_out | temporal
    temporal_valid_fraction: float = 0.1  # temporal split: share of time-ordered events for valid
    temporal_test_fraction: float = 0.1  # temporal split: share of time-ordered events for test
    dedupe: bool = True  # drop exact duplicate rows (same user, item, time, action)
    on_bad_row: str = "error"  # error | skip (skips are counted and reported)
    columns: dict[str, str] = field(default_factory=dict)  # tabular: canonical field -> source column
    catalog_path: str | None = None  # tabular: catalog file (CSV/TSV/JSONL/Parquet)
    short_users: str = "train"  # leave-one-out: users with < 3 events: train (training only) | drop
    timestamp_unit: str = "s"  # tabular: unit of numeric timestamps (s | ms)
    list_sep: str = "|"  # tabular: separator of list values (categories) in CSV/TSV cells


@dataclass
class PromptConfig:
    template: str = "next_item"  # template name in prompts/ (next_item | interest_tags | explain)
    prompts_dir: str | None = None  # directory of templates (None = the repository's prompts/)
    max_history_items: int = 50  # most recent items serialized at most
    max_history_tokens: int = 768  # token budget of the serialized history (real tokenizer)
    include_year: bool = True  # render "Title (1995)"
    include_categories: bool = False  # render the item's categories next to its title
    include_rating: bool = False  # render the action and rating ("rated 4/5")
    include_time: bool = False  # render relative time ("3 days later")
    chat_format: str = "plain"  # plain | chat (tokenizer chat template, error if none) | auto (chat when it has one)
    max_examples_per_user: int = 0  # training examples per user, most recent first (0 = all): targets or windows
    window_shifts: int = 1  # item_span/catalog training: cut each history into windows this many times, each cut shifted


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"  # named asset, hub id, local dir or .gguf file
    gguf_file: str | None = None  # GGUF file name inside name_or_path (hub id or dir)
    kind: str = "auto"  # auto | decoder | encoder
    dtype: str = "auto"  # auto (bf16 where supported) | bf16 | fp16 | fp32
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 weights through bitsandbytes
    gradient_checkpointing: bool = False  # trade compute for activation memory
    attn_implementation: str | None = "sdpa"  # sdpa | eager | flash_attention_2 | None (library default)
    trust_remote_code: bool = False  # never on unless the user asks
    random_init_config: dict[str, Any] | None = None  # build a random model of this config (tests, throughput)
    tokenizer: str | None = None  # tokenizer source if not name_or_path (asset, dir, hub id or .gguf)
    num_layers: int | None = None  # keep only the first N transformer blocks (None = all); the rest are never loaded


@dataclass
class LoraConfig:
    enabled: bool = True  # False = full fine-tuning of every weight (no adapter)
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the LoRA input (its bernoulli masks cost ~1/3 of a CPU LoRA step)
    target_modules: str | list[str] = "preset"  # preset (per architecture) | all-linear | explicit names
    modules_to_save: list[str] = field(default_factory=list)  # fully trained extra modules (e.g. lm_head)


@dataclass
class TrainConfig:
    output_dir: str = "runs/smollm2-lora"  # run directory
    format: str = "item_span"  # item_span (whole history, loss on item spans) | catalog (item softmax, catalog head) | prompt_completion | interest_tags (tag head)
    epochs: int = 1  # passes over the training examples
    max_steps: int = -1  # stop after this many optimizer steps (-1 = epochs decide)
    batch_size: int = 8  # examples per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 2e-4  # peak learning rate
    warmup_ratio: float = 0.05  # share of steps with linear warmup
    lr_scheduler: str = "cosine"  # decay after warmup: cosine | linear | constant
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    max_seq_len: int = 1024  # longest training sequence in tokens
    packing: bool = True  # pack several sequences per row with correct boundaries
    group_by_length: bool = True  # padded batches (packing off): batches of similar-length examples, seeded per epoch
    compile: bool = False  # torch.compile the model (Accelerate's inductor backend); no gain measured on CPU
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16 (Accelerate)
    save_every_steps: int = 0  # checkpoint every N steps (0 = end of epoch only)
    keep_checkpoints: int = 2  # newest checkpoints kept in RUN/checkpoints (0 = keep all)
    eval_every_epoch: bool = True  # validation ranking after each epoch
    eval_max_users: int | None = None  # validate on a seeded subset of users (None = all)
    early_stopping_patience: int = 2  # epochs without NDCG@10 gain before stopping (0 = off)
    restore_best: bool = True  # save the weights of the best validation epoch, not the last one
    log_every_steps: int = 10  # loss / tokens-per-second logging interval
    num_workers: int = 0  # dataloader workers
    seed: int = 42  # seeds data order, init and dropout
    logits_only_on_labels: bool = True  # project onto the vocabulary only where a label needs it (llmrec.training.loss)
    threads: int | None = None  # CPU intra-op threads (None = one per available core)
    packed_attention: str = "varlen"  # packed rows: varlen (per-example causal kernel, no T x T mask) | mask (4D block mask)


@dataclass
class GenerationConfig:
    num_beams: int = 20  # beams of the trie-constrained search (>= top_k)
    top_k: int = 10  # distinct items returned
    exclude_seen: bool = True  # history items can never be generated
    batch_size: int = 8  # users per generation batch
    max_new_tokens: int = 64  # free-text generation length (explanations)


@dataclass
class GroundingConfig:
    method: str = "trie"  # trie | dense | bm25 | fuzzy | exact
    fallback: list[str] = field(default_factory=lambda: ["exact", "fuzzy", "bm25"])  # free-text chain
    dense_model: str = "all-minilm-l6-v2"  # encoder for the dense grounder
    min_score: float = 0.0  # below this a match is reported as "no match"


@dataclass
class EvalConfig:
    split: str = "test"  # valid | test
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])  # cut-offs
    exclude_history: bool = True  # items in the input history are never ranked
    sampled_negatives: int = 0  # 0 = full-catalog ranking; N > 0 = N sampled negatives (seeded)
    batch_size: int = 256  # users scored at once
    max_users: int | None = None  # evaluate a seeded subset (None = all users)
    seed: int = 0  # seeds the user subset and the sampled negatives


MASK_SCOPES = ("window", "user")  # catalog_head.mask_scope


@dataclass
class CatalogHeadConfig:
    """The catalog head of ``train.format: catalog`` (``llmrec.modeling.catalog_head``)."""

    item_residuals: bool = False  # add a learned per-item vector (zero-initialised): an item embedding, report as its own row
    title_mlp: int = 0  # width of a shared MLP over each title vector, added to the item vector (0 = none; no per-item parameter)
    history_pool: int = 0  # add a shared map (LayerNorm -> Linear) of the mean vector of the last N history items to the user's hidden state (0 = none)
    title_source: str = "embeddings"  # title vectors: embeddings (mean input embedding) | hidden (mean last hidden state of the title read alone)
    batch_size: int = 16  # users per forward pass when ranking
    learning_rate: float | None = None  # peak learning rate of the head's parameters (None = train.learning_rate)
    # Training only: leave the items of a target's earlier labelled lines out of its softmax, as ranking
    # leaves the history out of the catalog (a repeated item stays a reachable target).
    mask_history: bool = False
    # Which earlier items mask_history leaves out: window (the target's earlier labelled lines) | user
    # (every item of the user's training sequence before the target, as ranking leaves out every history item).
    mask_scope: str = "window"
    # Ranking only: score each history once per entry, its prompt cut to that many latest items (as
    # prompt.max_history_items would), and rank by the mean log-softmax over the views ([] = the prompt alone).
    history_views: list[int] = field(default_factory=list)

    def validate(self) -> None:
        """Positive batch size, learning rate and views, non-negative MLP width and history pool, a known
        title source and mask scope (a wider scope than ``window`` only with ``mask_history``)."""
        if self.title_mlp < 0:
            raise ConfigError("catalog_head.title_mlp must be >= 0 (0 = no title MLP)")
        if self.history_pool < 0:
            raise ConfigError("catalog_head.history_pool must be >= 0 (0 = no history pool)")
        if self.mask_scope not in MASK_SCOPES:
            raise ConfigError(f"catalog_head.mask_scope must be one of {', '.join(MASK_SCOPES)}, not {self.mask_scope!r}")
        if self.mask_scope != "window" and not self.mask_history:
            raise ConfigError(f"catalog_head.mask_scope={self.mask_scope} needs catalog_head.mask_history: true")
        if self.title_source not in ("embeddings", "hidden"):
            raise ConfigError(f"catalog_head.title_source must be embeddings or hidden, not {self.title_source!r}")
        if self.batch_size <= 0:
            raise ConfigError("catalog_head.batch_size must be > 0")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError("catalog_head.learning_rate must be > 0 (or null for train.learning_rate)")
        if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in self.history_views):
            raise ConfigError(f"catalog_head.history_views must be positive item counts, got {self.history_views}")
        if len(set(self.history_views)) != len(self.history_views):
            raise ConfigError(f"catalog_head.history_views lists a view twice: {self.history_views}")


def history_view_prompts(prompt: PromptConfig, views: Sequence[int]) -> list[PromptConfig]:
    """The prompt settings of each view of ``catalog_head.history_views``: ``prompt`` with
    ``max_history_items`` set to the view's item count (no views: ``[prompt]``)."""
    return [dataclasses.replace(prompt, max_history_items=count) for count in views] if views else [prompt]


@dataclass
class RunConfig:
    """The full configuration of one fine-tuning / inference run."""

    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    catalog_head: CatalogHeadConfig = field(default_factory=CatalogHeadConfig)

    def validate(self) -> None:
        """Reject contradictions that no single field can see."""
        checks = [
            (self.data.split in ("leave_one_out", "temporal"), "data.split must be leave_one_out or temporal"),
            (self.data.on_bad_row in ("error", "skip"), "data.on_bad_row must be error or skip"),
            (self.data.short_users in ("train", "drop"), "data.short_users must be train or drop"),
            (self.data.timestamp_unit in ("s", "ms"), "data.timestamp_unit must be s or ms"),
            (self.data.k_core >= 0, "data.k_core must be >= 0"),
            (self.train.format in ("item_span", "catalog", "prompt_completion", "interest_tags"),
             "train.format must be item_span, catalog, prompt_completion or interest_tags"),
            (self.train.format != "interest_tags" or self.prompt.template == "interest_tags",
             "train.format interest_tags needs prompt.template: interest_tags"),
            (self.catalog_head.learning_rate is None or self.train.format == "catalog",
             "catalog_head.learning_rate needs train.format: catalog (no other format has a catalog head)"),
            (self.catalog_head.title_source == "embeddings" or self.train.format == "catalog",
             "catalog_head.title_source needs train.format: catalog (no other format has a catalog head)"),
            (not self.catalog_head.history_views or self.train.format == "catalog",
             "catalog_head.history_views needs train.format: catalog (no other format has a catalog head)"),
            (self.prompt.chat_format in ("plain", "chat", "auto"), "prompt.chat_format must be plain, chat or auto"),
            (self.prompt.max_history_items >= 0 and self.prompt.max_history_tokens >= 0, "prompt.max_history_items/tokens must be >= 0"),
            (self.prompt.window_shifts >= 1, "prompt.window_shifts must be >= 1 (1 = one cut of each history into windows)"),
            (self.prompt.window_shifts == 1 or self.train.format in ("item_span", "catalog"),
             "prompt.window_shifts needs train.format item_span or catalog (the formats that cut histories into windows)"),
            (self.prompt.window_shifts == 1 or self.prompt.max_history_items >= self.prompt.window_shifts + 1,
             "prompt.window_shifts needs prompt.max_history_items >= window_shifts + 1 (distinct cuts of windows of two or more items)"),
            (self.model.kind in ("auto", "decoder", "encoder"), "model.kind must be auto, decoder or encoder"),
            (self.model.dtype in ("auto", "bf16", "fp16", "fp32"), "model.dtype must be auto, bf16, fp16 or fp32"),
            (not self.model.load_in_4bit or self.lora.enabled, "model.load_in_4bit (QLoRA) needs lora.enabled: true"),
            (self.model.num_layers is None or self.model.num_layers >= 1, "model.num_layers must be >= 1 (or null for all)"),
            (self.generation.num_beams >= self.generation.top_k, "generation.num_beams must be >= generation.top_k"),
            (self.eval.split in ("valid", "test"), "eval.split must be valid or test"),
            (all(k > 0 for k in self.eval.ks), "eval.ks must be positive"),
            (self.train.batch_size > 0 and self.train.grad_accum > 0, "train.batch_size and train.grad_accum must be > 0"),
            (self.train.lr_scheduler in ("cosine", "linear", "constant"), "train.lr_scheduler must be cosine, linear or constant"),
            (self.train.mixed_precision in ("auto", "no", "bf16", "fp16"), "train.mixed_precision must be auto, no, bf16 or fp16"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        # Extra groups added by subclasses (e.g. ``encoder``, ``tags``) validate themselves.
        for group in dataclasses.fields(self):
            check = getattr(getattr(self, group.name), "validate", None)
            if callable(check):
                try:
                    check()
                except ValueError as err:
                    raise ConfigError(str(err)) from None


INCLUDE_KEY = "include"


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML mapping with its ``include:`` files merged under it; errors name the file
    (and line, for syntax errors) and an include cycle names its chain."""
    path = Path(path)
    data = _read_mapping(path)
    includes = data.pop(INCLUDE_KEY, None)
    if includes is None:
        return data  # its append keys apply to the files merged before it (load_config), if any
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(item, str) for item in includes):
        raise ConfigError(f"{path}: {INCLUDE_KEY}: expected a path or a list of paths, got {includes!r}")
    chain = (*_chain, path.resolve())
    tree: dict[str, Any] = {}
    for item in includes:
        target = (path.parent / item).resolve()
        if target in chain:
            cycle = " -> ".join(str(p) for p in (*chain, target))
            raise ConfigError(f"{path}: {INCLUDE_KEY}: cycle {cycle}")
        if not target.is_file():
            raise ConfigError(f"{path}: {INCLUDE_KEY}: {item} ({target}) does not exist")
        tree = _resolved(target, tree, load_yaml(target, chain))
    return _resolved(path, tree, data)


def load_params(path: str | Path) -> dict[str, Any]:
    """One YAML mapping read on its own (``evaluate --params``): its includes merged under it and its
    own append keys resolved, so ``config+: [b.yaml]`` extends an included ``config`` list (or starts
    one) instead of reaching the model as a key named ``config+``."""
    return _resolved(Path(path), {}, load_yaml(path))


def _resolved(path: Path, tree: dict[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`deep_merge` of a file's own keys over its includes, a bad append key named with the file."""
    try:
        return deep_merge(tree, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


APPEND_SUFFIX = "+"  # ``models+: [...]`` appends to the ``models`` list merged so far


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge, everything else replaces.

    A key written with a trailing ``+`` (``models+:``) appends its list to the list ``base`` holds
    under the plain key (none: an empty one), so a file that ``include:``s another can add a
    benchmark row without repeating the others.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(key, str) and key.endswith(APPEND_SUFFIX):
            name = key[: -len(APPEND_SUFFIX)]
            if not name or name in update:
                raise ConfigError(f"{key!r}: an append key needs a name, and cannot stand beside {name!r} in one mapping")
            if not isinstance(value, list) or not isinstance(out.get(name, []), list):
                raise ConfigError(f"{key!r} appends a list to a list; got {type(value).__name__} "
                                  f"to {type(out.get(name)).__name__}")
            out[name] = [*out.get(name, []), *value]
        elif isinstance(value, Mapping):  # merged into what is there, or resolved alone (its own append keys)
            out[key] = deep_merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def apply_override(tree: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (``1e-4``, ``[1,2]``, ``null``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r} has an empty key part")
    value = yaml.safe_load(raw) if raw.strip() else ""
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return deep_merge(tree, nested)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if hint is Any:
        return value
    if origin in (list, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(hint) or (Any,)
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it plainly is.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float, bool, str):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_config(
    paths: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    schema: type[T] = RunConfig,  # type: ignore[assignment]
) -> T:
    """Load YAML file(s), apply ``key=value`` overrides, build and validate ``schema``."""
    tree: dict[str, Any] = {}
    sources = []
    for path in paths:
        tree = _resolved(Path(path), tree, load_yaml(path))
        sources.append(str(path))
    for override in overrides:
        tree = apply_override(tree, override)
    where = " + ".join(sources) or "defaults"
    if overrides:
        where += " + overrides"
    config = from_dict(schema, tree, where)
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return config


def load_benchmark_recipe(
    paths: Sequence[str | Path],
    overrides: Sequence[str],
    prepared_dir: str | Path,
    seed: int,
    output_dir: str | None = None,
    schema: type[T] = RunConfig,  # type: ignore[assignment]
) -> T:
    """A training recipe as a benchmark entry trains it: the benchmark's prepared dataset, seed
    and output directory forced over the recipe's own (``output_dir`` None: the recipe's
    ``train.output_dir`` plus ``-seed<N>``).

    The recipe is parsed once; the forced fields are set on the parsed config (not passed as
    ``key=value`` overrides), so a path with YAML-significant characters stays a path.
    """
    config = load_config(paths, overrides, schema=schema)
    config.data.prepared_dir = str(prepared_dir)  # type: ignore[attr-defined]
    config.train.seed = seed  # type: ignore[attr-defined]
    config.train.output_dir = output_dir if output_dir is not None else f"{config.train.output_dir}-seed{seed}"  # type: ignore[attr-defined]
    return config


# Fields added to RunConfig after run directories and reports were written, each with the default
# that does what runs did before it existed. A saved config.yaml without one and a config holding it
# at this default describe the same recipe: saved-config comparisons and recipe digests leave them out
# (:func:`comparable`), so that finished runs still reload, interrupted ones still resume and a new
# seed of an old recipe still merges with the old seeds' reports. Add each new field here.
LATER_DEFAULTS: dict[tuple[str, str], Any] = {("prompt", "window_shifts"): 1, ("catalog_head", "history_views"): [],
                                              ("catalog_head", "mask_history"): False, ("catalog_head", "mask_scope"): "window"}


def comparable(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A config as a plain dict (``config.yaml`` read back) without the :data:`LATER_DEFAULTS` at their default."""
    out = {key: dict(value) if isinstance(value, Mapping) else value for key, value in tree.items()}
    for (section, key), default in LATER_DEFAULTS.items():
        if isinstance(out.get(section), dict) and out[section].get(key, default) == default:
            out[section].pop(key, None)
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (what a run directory stores as config.yaml)."""
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
