"""LoRA / QLoRA adapters: per-architecture target presets, checks before compute, peft wiring."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from llmrec.config import ConfigError, LoraConfig

_LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Linear layers worth adapting, per ``config.model_type``: attention and MLP projections.
TARGET_PRESETS: dict[str, list[str]] = {
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _LLAMA_STYLE,
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}
PEFT_TASK_TYPES = {
    "causal_lm": TaskType.CAUSAL_LM,
    "feature_extraction": TaskType.FEATURE_EXTRACTION,
    "seq_cls": TaskType.SEQ_CLS,
}


def _module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def adaptable_leaf_names(model: nn.Module) -> list[str]:
    """Short names of the layers LoRA can wrap (Linear, GPT-2 Conv1D, 4-bit Linear, Embedding)."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if name and (isinstance(module, nn.Linear | nn.Embedding) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt")):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_targets(model: nn.Module, spec: str | list[str]) -> list[str] | str:
    """Resolve ``lora.target_modules`` for ``model``.

    Args:
        model: the base model (before peft wraps it).
        spec: ``preset`` (per-architecture list), ``all-linear`` (peft's every linear layer
            except the output head), or explicit module names / name suffixes.

    Returns:
        A list of module name suffixes, or the string ``all-linear``.

    Raises:
        ConfigError: no preset for this architecture, or names that match no module (named).
    """
    if spec == "all-linear":
        return "all-linear"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if spec == "preset":
        if model_type not in TARGET_PRESETS:
            raise ConfigError(
                f"lora.target_modules: no preset for model type {model_type!r} (presets: "
                f"{sorted(TARGET_PRESETS)}); set all-linear or name the modules, e.g. {adaptable_leaf_names(model)}"
            )
        targets = list(TARGET_PRESETS[str(model_type)])
    elif isinstance(spec, str):
        targets = [spec]
    else:
        targets = list(spec)
    check_targets_exist(model, targets, "lora.target_modules")
    return targets


def check_targets_exist(model: nn.Module, targets: list[str], field_name: str) -> None:
    """Raise ``ConfigError`` naming every entry of ``targets`` that matches no module of ``model``."""
    names = _module_names(model)
    missing = [t for t in targets if not any(_matches(n, t) for n in names)]
    if missing:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(
            f"{field_name}: {missing} match no module of this {model_type} model; "
            f"adaptable layers are {adaptable_leaf_names(model)}"
        )


def apply_lora(model: nn.Module, lora_cfg: LoraConfig, task: str = "causal_lm") -> PeftModel:
    """Wrap ``model`` with LoRA adapters per ``lora_cfg`` (targets checked first).

    Adapter weights are kept in fp32 even when the base is bf16 (peft's ``autocast_adapter_dtype``),
    so AdamW updates do not lose precision.
    """
    if task not in PEFT_TASK_TYPES:
        raise ConfigError(f"task {task!r} is not one of {', '.join(PEFT_TASK_TYPES)}")
    targets = lora_targets(model, lora_cfg.target_modules)
    if lora_cfg.modules_to_save:
        check_targets_exist(model, list(lora_cfg.modules_to_save), "lora.modules_to_save")
    peft_config = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        modules_to_save=list(lora_cfg.modules_to_save) or None,
        task_type=PEFT_TASK_TYPES[task],
        bias="none",
    )
    return get_peft_model(model, peft_config)  # type: ignore[arg-type]


def check_bitsandbytes(device: str | torch.device | None = None) -> None:
    """Fail before any compute when 4-bit QLoRA cannot run here.

    Raises:
        ConfigError: bitsandbytes is missing, or it has no 4-bit backend for this device.
    """
    try:
        import bitsandbytes as bnb
    except Exception as err:  # ImportError, or a broken native library raising anything at import
        raise ConfigError(
            f"model.load_in_4bit (QLoRA) needs bitsandbytes, which failed to import: {err}; "
            "`pip install bitsandbytes` or set model.load_in_4bit: false"
        ) from None
    try:
        weight = torch.randn(64, 64, dtype=torch.float32)
        target = torch.device(device) if device is not None else torch.device("cpu")
        packed, state = bnb.functional.quantize_4bit(weight.to(target), quant_type="nf4")
        bnb.functional.dequantize_4bit(packed, state)
    except Exception as err:
        raise ConfigError(
            f"model.load_in_4bit (QLoRA): bitsandbytes {bnb.__version__} cannot quantize to 4 bits on "
            f"{device or 'cpu'} ({type(err).__name__}: {err}); set model.load_in_4bit: false"
        ) from None


def quantization_config(compute_dtype: torch.dtype) -> Any:
    """NF4 4-bit weights with double quantization; matmuls run in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def prepare_for_kbit(model: nn.Module, gradient_checkpointing: bool) -> nn.Module:
    """peft's k-bit preparation: fp32 norms / head, input grads, optional checkpointing."""
    return prepare_model_for_kbit_training(  # type: ignore[no-any-return]
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def require_chat_template(tokenizer: Any) -> None:
    """Raise ``ConfigError`` when a prompt format needs a chat template this tokenizer lacks."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"tokenizer {name!r} has no chat template, but the prompt uses chat roles; "
            "use a chat/instruct model or a plain (non-chat) prompt template"
        )


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (4-bit weights counted as stored elements)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


