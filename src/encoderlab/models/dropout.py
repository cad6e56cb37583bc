"""Dropout whose masks are cheap to draw on a CPU (run-level switch `fast_dropout`).

torch draws a CPU dropout mask with bernoulli_, one element at a time: ~12 ns an element on this
project's 2-core benchmark machine, so the attention-probability dropout of a 256-token batch of 8
(8 x 12 x 256 x 256 = 6.3M elements) takes ~75 ms, six times a step, and the hidden-state dropouts
another ~20 ms each: for MiniLM on IMDb-length reviews that is more than the matrix multiplications.
Here the mask comes from numpy's PCG64 (64 random bits for two elements, ~1.6 ns an element) and a
multi-threaded comparison: an element is kept when its 32 random bits are at or above p x 2^32, so each
is kept with probability 1 - p (to 2^-32), independently, and scaled by 1 / (1 - p), as torch does. The
generator is seeded for every call from torch's generator, so a seeded run repeats its masks. The masks
differ from torch's own, so a run trains the same model with other dropout draws: docs/speed.md compares
loss curves and accuracy. On other devices (and in eval mode) this is torch's dropout.

`use_fast_dropout(net)` swaps every nn.Dropout in `net` for `Dropout` and returns how many; Hugging Face
models also need `ATTENTION`, transformers' eager attention with this dropout (HFEncoderClassifier picks
it for CPU training steps).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = "encoderlab_eager"  # the name registered with transformers' AttentionInterface


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - p, independently."""
    n = int(np.prod(shape))
    seed = int(torch.randint(0, 2**62, ()))  # from torch's generator: torch.manual_seed repeats the masks
    words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((n + 1) // 2)
    bits = torch.from_numpy(words.view(np.int32)[:n]).view(shape)  # uniform over the int32 range
    return bits >= -(2**31) + round(p * 2**32)


class _MaskedScale(torch.autograd.Function):
    """x * keep / (1 - p); the backward pass scales the gradient by the same mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with the cheap mask for CPU tensors in training."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    return _MaskedScale.apply(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout with the cheap CPU mask (`inplace` is ignored: the mask is applied out of place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_fast_dropout(net: nn.Module) -> int:
    """Swap every nn.Dropout of `net` for Dropout (same p; no weights change); the number swapped."""
    swapped = 0
    for module in list(net.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p).train(child.training))
                swapped += 1
    return swapped


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, T, D)
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # additive, (B, 1, T, T)
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (softmax(QK^T * scaling + mask) V) with this module's dropout."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, T)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1)
    out = torch.matmul(_dropout(weights, dropout, module.training), value)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), weights  # (B, T, H, D)


_dropout = dropout  # eager_attention's `dropout` argument is transformers' name for the rate


def register_attention() -> None:
    """Make ATTENTION a transformers attention implementation (with eager's mask); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, eager_attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
