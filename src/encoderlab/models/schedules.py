"""Learning-rate schedules stepped once per optimizer step (conf/scheduler/*.yaml name them)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_lambda(decay: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step `step`: linear warmup, then decay."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear

    return fn


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    decay: str = "linear",
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup over `warmup_steps` (or `warmup_ratio` of all steps when 0), then linear, cosine or
    constant; `num_training_steps` is the fit's optimizer steps (encoderlab passes it)."""
    if decay not in ("linear", "cosine", "constant"):
        raise ValueError(f"decay must be linear, cosine or constant, got {decay!r}")
    warmup = warmup_steps or math.ceil(warmup_ratio * num_training_steps)
    return LambdaLR(optimizer, lr_lambda(decay, warmup, num_training_steps))
