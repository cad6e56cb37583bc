"""LoRA adapters (the `peft` library) on a Hugging Face sequence classifier: `model.peft=lora`.

The encoder's pretrained weights stay frozen; low-rank adapters on the chosen linear layers and every
module the checkpoint did not hold (the classification head, DistilBERT's pre_classifier, a missing pooler)
train. Exports merge the adapters into the weights (`merged`), so a saved model is a plain
`AutoModelForSequenceClassification` directory that every loader takes unchanged.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from encoderlab.errors import EncoderlabError, require_extra

# attention projection pairs by naming family, for architectures peft has no default for
_QUERY_VALUE = (
    ("query", "value"),  # BERT, MiniLM, RoBERTa, ELECTRA
    ("q_lin", "v_lin"),  # DistilBERT
    ("query_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q_proj", "v_proj"),  # BART-style attention
)
HEAD_MODULES = ("classifier", "score")
ADAPTER_DIR = "adapter"  # in a run directory and its MLflow artifacts: the adapter alone  # what peft's SEQ_CLS task keeps trainable by default


def linear_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of the model's nn.Linear layers (what target_modules can name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def default_targets(model: nn.Module) -> list[str]:
    """peft's default LoRA targets for the architecture, else the query/value projections by their name."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    names = set(linear_names(model))
    for pair in _QUERY_VALUE:
        if set(pair) <= names:
            return list(pair)
    raise EncoderlabError(
        f"model.peft=lora: no default LoRA target modules for {type(model).__name__} (model_type "
        f"{model_type!r}). Name them with model.lora.target_modules=[...] (its linear layers are named: "
        f"{', '.join(linear_names(model))}), or model.lora.target_modules=all-linear."
    )


def new_modules(loading_info: dict[str, Any] | None) -> list[str]:
    """The modules holding weights the checkpoint did not have (randomly initialized by from_pretrained)."""
    keys: set[str] = set()
    for key in [
        *(loading_info or {}).get("missing_keys", ()),
        *(loading_info or {}).get("mismatched_keys", ()),
    ]:
        name = key[0] if isinstance(key, (tuple, list)) else str(key)
        if "." in name:
            keys.add(name.rsplit(".", 1)[0])
    return sorted(keys)


def apply_lora(model: nn.Module, settings: dict[str, Any], trained_fully: Iterable[str] = ()) -> nn.Module:
    """`model` wrapped by peft.get_peft_model with LoRA adapters; `trained_fully` (module names) and the
    classification head train in full (peft's modules_to_save)."""
    require_extra("peft", "peft", "peft", "model.peft=lora (LoRA adapters)")
    from peft import LoraConfig, TaskType, get_peft_model

    targets = settings.get("target_modules")
    if targets is None:
        targets = default_targets(model)
    elif isinstance(targets, str) and targets != "all-linear":
        targets = [targets]
    keep = sorted({*HEAD_MODULES, *trained_fully})
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=int(settings.get("r", 8)),
        lora_alpha=settings.get("alpha", 16),
        lora_dropout=float(settings.get("dropout", 0.1)),
        target_modules=targets,
        modules_to_save=keep,
    )
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as ex:
        reason = " ".join(str(ex).split())[:300]
        raise EncoderlabError(
            f"model.peft=lora: peft could not put adapters on model.lora.target_modules={targets} ({reason}). "
            f"The linear layers of {type(model).__name__} are named: {', '.join(linear_names(model))}; "
            "name some of them, use all-linear, or null for the architecture's default (query/value)."
        ) from None


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged(model: nn.Module) -> nn.Module:
    """A plain transformers model with the adapters merged into its weights (a copy: `model` keeps training
    state and adapters); `model` itself when it has no adapters."""
    if not is_peft(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_adapter(model: nn.Module, directory: Any) -> bool:
    """The adapter alone (adapter_config.json + adapter_model.safetensors, head included) when `model` has
    one; False otherwise."""
    if not is_peft(model):
        return False
    model.save_pretrained(str(directory))
    return True
