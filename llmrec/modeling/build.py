"""Build a model and its tokenizer from a ``ModelConfig``.

Where a model can come from (``resolve_model_source``):

* a named asset (``smollm2-135m-instruct``, ``all-minilm-l6-v2``) fetched by ``llmrec.assets``;
* a local Hugging Face directory (``config.json`` + ``*.safetensors``);
* a ``.gguf`` file, or a directory / hub id plus ``gguf_file`` (always dequantized: see ``_gguf_kwargs``);
* a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), honoring ``HF_HUB_OFFLINE``;
* ``random_init_config``: a random model of that config (tests, throughput), tokenizer from
  ``tokenizer`` or ``name_or_path``.

Only safetensors (or GGUF) weights are read; ``trust_remote_code`` is off unless the user sets it.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llmrec.config import ConfigError, LoraConfig, ModelConfig
from llmrec.modeling.dtype import resolve_dtype

TASKS = ("causal_lm", "feature_extraction", "seq_cls")
# Architectures read as bidirectional encoders (dense retrieval, pooled embeddings).
ENCODER_MODEL_TYPES = {
    "bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2",
    "albert", "modernbert", "camembert",
}


@dataclass(frozen=True)
class ModelSource:
    """Where weights and tokenizer are read from.

    Attributes:
        path: a local directory or a hub id.
        gguf_file: the GGUF file name inside ``path`` (None for safetensors checkpoints).
        origin: ``asset | local | gguf | hub``, for logs and ``run.json``.
        name: what the user wrote (asset name, hub id or path).
    """

    path: str
    gguf_file: str | None
    origin: str
    name: str

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every ``from_pretrained`` call on this source shares."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _single_gguf(directory: Path) -> str | None:
    """The one ``*.gguf`` file of a directory without ``config.json`` (GGUF-only asset), else None."""
    if (directory / "config.json").is_file():
        return None
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ConfigError(f"{directory} holds several GGUF files {ggufs}; set model.gguf_file to one of them")
    return ggufs[0] if ggufs else None


def _local_source(directory: Path, gguf_file: str | None, origin: str, name: str) -> ModelSource:
    if gguf_file is not None and not (directory / gguf_file).is_file():
        raise ConfigError(f"model.gguf_file {gguf_file!r} is not a file in {directory}")
    gguf_file = gguf_file or _single_gguf(directory)
    markers = ("config.json", "tokenizer.json", "tokenizer_config.json")
    if gguf_file is None and not any((directory / m).is_file() for m in markers):
        raise ConfigError(f"{directory} has no config.json, tokenizer files or .gguf file: not a model directory")
    return ModelSource(str(directory), gguf_file, "gguf" if gguf_file else origin, name)


def _asset_dir(name: str) -> Path | None:
    """The fetched directory of named asset ``name``, or None when no asset has that name."""
    try:
        assets = importlib.import_module("llmrec.assets")
    except ModuleNotFoundError:
        return None
    registry = next((getattr(assets, a) for a in ("ASSETS", "REGISTRY", "ASSET_SPECS") if hasattr(assets, a)), None)
    if registry is not None and name not in registry:
        return None
    try:
        return Path(assets.fetch(name))
    except KeyError:
        if registry is None:  # unknown name: let it fall through to the hub
            return None
        raise


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> ModelSource:
    """Decide where ``name_or_path`` is loaded from (see the module docstring for the order).

    Args:
        name_or_path: a named asset, a local directory, a ``.gguf`` file or a hub id.
        gguf_file: GGUF file name inside a directory or hub repository.

    Raises:
        ConfigError: the path exists but is not a model, or names a missing GGUF file.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name_or_path {name_or_path!r}: GGUF file does not exist")
        return ModelSource(str(path.parent), path.name, "gguf", name_or_path)
    if path.is_dir():
        return _local_source(path, gguf_file, "local", name_or_path)
    if "/" not in name_or_path:
        asset = _asset_dir(name_or_path)
        if asset is not None:
            return _local_source(asset, gguf_file, "asset", name_or_path)
    if name_or_path.startswith((".", "/", "~")):
        raise ConfigError(f"model.name_or_path {name_or_path!r} does not exist")
    return ModelSource(name_or_path, gguf_file, "hub", name_or_path)


def infer_kind(config: PretrainedConfig) -> str:
    """``encoder`` for bidirectional encoders (BERT family), ``decoder`` otherwise."""
    return "encoder" if config.model_type in ENCODER_MODEL_TYPES else "decoder"


def build_tokenizer(
    source: ModelSource, kind: str = "decoder", trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``source`` ready for batching.

    Decoders pad on the left, so that generation continues right after each prompt; a tokenizer
    without a pad token reuses its end-of-sequence token (its loss is masked by the collator).
    """
    tokenizer = AutoTokenizer.from_pretrained(
        source.path, trust_remote_code=trust_remote_code, **source.load_kwargs()
    )
    if kind == "decoder":
        tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {source.name} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _auto_class(task: str) -> Any:
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    return {"causal_lm": AutoModelForCausalLM, "feature_extraction": AutoModel,
            "seq_cls": AutoModelForSequenceClassification}[task]


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _layer_override(model_cfg: ModelConfig, config: PretrainedConfig | dict[str, Any], where: str) -> dict[str, int]:
    """``{<layer-count key>: model.num_layers}`` for ``config``, or ``{}`` when all layers are kept.

    Keeping the first N blocks of a pretrained stack (the layer pruning of SLMRec-style studies)
    is a config change: ``from_pretrained`` then builds N blocks and never loads the others.

    Raises:
        ConfigError: the architecture names no layer count, or N is more than it has.
    """
    wanted = model_cfg.num_layers
    if wanted is None:
        return {}
    values = config if isinstance(config, dict) else config.to_dict()
    counts = {k: values[k] for k in LAYER_COUNT_KEYS if isinstance(values.get(k), int)}
    if not counts:
        raise ConfigError(f"model.num_layers: {where} has no layer count ({', '.join(LAYER_COUNT_KEYS)})")
    key, have = next(iter(counts.items()))
    if wanted > have:
        raise ConfigError(f"model.num_layers is {wanted} but {where} has only {have} layers")
    return {key: wanted}


def _random_model(
    model_cfg: ModelConfig, task: str, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, extra: dict[str, Any]
) -> PreTrainedModel:
    spec = dict(model_cfg.random_init_config or {})
    model_type = spec.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.random_init_config needs a model_type (e.g. llama, gpt2, bert)")
    spec.setdefault("vocab_size", len(tokenizer))
    spec.setdefault("pad_token_id", tokenizer.pad_token_id)
    spec.update(extra)
    if model_cfg.num_layers is not None:
        defaults = AutoConfig.for_model(model_type).to_dict()
        spec.update(_layer_override(model_cfg, {**defaults, **spec}, "model.random_init_config"))
    try:
        config = AutoConfig.for_model(model_type, **spec)
    except ValueError as err:
        raise ConfigError(f"model.random_init_config: {err}") from None
    if model_cfg.attn_implementation:
        config._attn_implementation = model_cfg.attn_implementation
    return _auto_class(task).from_config(config, dtype=dtype)


def _pretrained_model(
    model_cfg: ModelConfig, source: ModelSource, task: str, dtype: torch.dtype, extra: dict[str, Any]
) -> PreTrainedModel:
    kwargs: dict[str, Any] = dict(extra, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.num_layers is not None:
        config = _source_config(source, model_cfg.trust_remote_code)
        kwargs.update(_layer_override(model_cfg, config, source.name))
    kwargs.update(source.load_kwargs())
    if source.gguf_file is None:
        kwargs["use_safetensors"] = True  # never unpickle .bin checkpoints
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.load_in_4bit:
        from llmrec.modeling.lora import quantization_config

        kwargs["quantization_config"] = quantization_config(dtype)
    elif source.gguf_file is not None:
        kwargs.update(_gguf_kwargs())
    return _auto_class(task).from_pretrained(source.path, **kwargs)


def _gguf_kwargs() -> dict[str, Any]:
    """Ask transformers to unpack a GGUF file into plain dense weights, whatever the machine.

    From transformers 5.25 a GGUF load keeps its weights packed (``GgufLinear``) wherever the
    ``kernels`` package can fetch a matmul kernel from the hub, and unpacks them only where it
    cannot (offline, as here). The same config would then give ``nn.Linear`` layers offline and
    packed, frozen-quantized layers online, which LoRA targets and training numerics both depend
    on; ``dequantize=True`` gives the dense model everywhere (earlier releases always did).
    """
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # transformers < 5.25 always dequantizes
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def model_source_for(model_cfg: ModelConfig) -> ModelSource | None:
    """The weights' source of ``model_cfg`` (None for a random-init model)."""
    if model_cfg.random_init_config is not None:
        return None
    return resolve_model_source(model_cfg.name_or_path, model_cfg.gguf_file)


def build_model(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    task: str = "causal_lm",
    num_labels: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load (or randomly build) a model, apply LoRA / QLoRA, and return it with its tokenizer.

    Args:
        model_cfg: where the model comes from, dtype, quantization, attention, checkpointing, and
            ``num_layers`` (keep only the first N transformer blocks).
        lora_cfg: adapter settings; ``enabled: false`` leaves every weight trainable.
        task: ``causal_lm`` (decoder LM head), ``feature_extraction`` (bare encoder / decoder),
            ``seq_cls`` (classification head with ``num_labels``).
        num_labels: classes of a ``seq_cls`` head.
        device: where weights are placed (None: left on the CPU for Accelerate to move).

    Returns:
        ``(model, tokenizer)``; the model is a ``PeftModel`` when LoRA is enabled.

    Raises:
        ConfigError: bad source, unknown task, LoRA targets matching no module, or QLoRA
            requested without a working bitsandbytes, all before any compute.
    """
    from llmrec.modeling.lora import apply_lora, check_bitsandbytes, prepare_for_kbit

    if model_cfg.load_in_4bit:
        check_bitsandbytes(device)
    dtype = resolve_dtype(model_cfg.dtype, device)
    source = model_source_for(model_cfg)
    tok_name = model_cfg.tokenizer or model_cfg.name_or_path
    tok_source = source if (source and not model_cfg.tokenizer) else resolve_model_source(tok_name)
    kind = _declared_kind(model_cfg, source or tok_source)
    tokenizer = build_tokenizer(tok_source, kind, model_cfg.trust_remote_code)
    extra: dict[str, Any] = {"num_labels": num_labels} if task == "seq_cls" and num_labels else {}
    model: Any
    if source is None:
        model = _random_model(model_cfg, task, tokenizer, dtype, extra)
    else:
        model = _pretrained_model(model_cfg, source, task, dtype, extra)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model_cfg.load_in_4bit:
        model = prepare_for_kbit(model, model_cfg.gradient_checkpointing)
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_cfg.enabled:
        model = apply_lora(model, lora_cfg, task)
    if device is not None and not model_cfg.load_in_4bit:
        model = model.to(device)
    return model, tokenizer


def _declared_kind(model_cfg: ModelConfig, tok_source: ModelSource) -> str:
    if model_cfg.kind != "auto":
        return model_cfg.kind
    if model_cfg.random_init_config is not None:
        return "encoder" if model_cfg.random_init_config.get("model_type") in ENCODER_MODEL_TYPES else "decoder"
    return infer_kind(_source_config(tok_source, model_cfg.trust_remote_code))


@functools.lru_cache(maxsize=8)
def _source_config(source: ModelSource, trust_remote_code: bool) -> PretrainedConfig:
    """The config of ``source``, read once per process: parsing it out of a GGUF file takes seconds,
    and ``build_model`` needs it for the model's kind and for ``num_layers``. Callers only read it."""
    return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code, **source.load_kwargs())


def model_kind(model_cfg: ModelConfig) -> str:
    """``decoder`` or ``encoder`` for ``model_cfg`` (reads only the config, not the weights)."""
    source = model_source_for(model_cfg) or resolve_model_source(model_cfg.tokenizer or model_cfg.name_or_path)
    return _declared_kind(model_cfg, source)
