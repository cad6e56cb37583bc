"""What encoderlab asks of a model: `forward(batch) -> logits (B, num_labels)`, and nothing else.

Training, evaluation and prediction need only that, so any nn.Module built from `model._target_` works
(train passes it num_labels, id2label and tokenizer). The analysis after test uses more when a model
offers it, through these optional members; a stage whose method is missing is skipped with a log line:

    input_keys: tuple[str, ...]                          batch keys forward reads (default: DEFAULT_INPUT_KEYS)
    max_positions: int                                   longest input it takes (default: the tokenizer's cap)
    attention_maps(batch) -> list[Tensor (B, H, T, T)]   one per layer; padded keys get zero weight
                                                         (attention heat maps and rollout)
    input_embeddings() -> nn.Module                      the token-embedding layer, output (B, T, C)
                                                         (Integrated Gradients attributes its output)

The analysis calls attention_maps in eval mode under torch.inference_mode.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import torch
from torch import nn

DEFAULT_INPUT_KEYS = ("input_ids", "attention_mask")
log = logging.getLogger("encoderlab.analysis")


@runtime_checkable
class HasAttentionMaps(Protocol):
    """Per-layer attention weights, each (B, H, T, T): attention heat maps and rollout."""

    def attention_maps(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]: ...


@runtime_checkable
class HasInputEmbeddings(Protocol):
    """The token-embedding layer (B, T) -> (B, T, C): Integrated Gradients attributions."""

    def input_embeddings(self) -> nn.Module: ...


def input_keys(net: nn.Module) -> tuple[str, ...]:
    """The batch keys `net.forward` reads."""
    return tuple(getattr(net, "input_keys", DEFAULT_INPUT_KEYS))


def max_positions(net: nn.Module) -> int | None:
    """The longest input `net` takes, when it says so."""
    value = getattr(net, "max_positions", None)
    return int(value) if value is not None else None


def skip_without(net: nn.Module, capability: type, method: str, stage: str) -> bool:
    """True (after one log line naming the missing method) when `net` lacks `capability`."""
    if isinstance(net, capability):
        return False
    log.info(
        "%s skipped: %s has no %s method (encoderlab/models/capabilities.py).",
        stage,
        type(net).__name__,
        method,
    )
    return True
