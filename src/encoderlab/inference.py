"""Batched inference for any batch -> logits model: length-sorted, dynamically padded, inference mode.

Used by `encoderlab predict`, `encoderlab evaluate` and the behavioural probes. Sorting by length puts
texts of similar length in one batch, so little compute goes to padding; results come back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) mean class probabilities
    std: np.ndarray | None  # (N, C) spread over Monte-Carlo-dropout passes, None for a single pass
    seconds: float  # wall time of tokenization + forward passes


def _enable_dropout(net: nn.Module) -> None:
    """Eval mode everywhere except dropout layers: Monte-Carlo dropout (Gal & Ghahramani, 2016)."""
    net.eval()
    for module in net.modules():
        if isinstance(module, nn.Dropout) or module.__class__.__name__.endswith("Dropout"):
            module.train()


def _set_mc_dropout(net: nn.Module, on: bool) -> None:
    """The scratch encoder's attention dropout is a float applied when `training` is set on the module."""
    _enable_dropout(net) if on else net.eval()
    if on:
        for module in net.modules():
            if module.__class__.__name__ == "SelfAttention":
                module.train()


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls run natively (about 2x fp32 on this kind of CPU)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """'auto': bf16 where the hardware runs it natively, else fp32."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    return "bf16" if cpu_supports_bf16() else "32"


def predict_proba(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    text_pairs: list[str] | None = None,
    batch_size: int = 64,
    max_length: int = 512,
    mc_dropout: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | None = False,
    seed: int = 0,
    precision: str = "32",
    desc: str = "Predicting",
    multilabel: bool = False,
) -> Predictions:
    """Class probabilities for `texts` (in input order). mc_dropout=N>0 averages N stochastic passes;
    precision "bf16" runs the forward pass in bfloat16 (CPUs with AVX512-BF16/AMX, GPUs): under autocast, or
    as it is when the net's weights are bf16 already.
    progress: a tqdm bar over the batches (None: only on a terminal), labelled `desc`. multilabel: each
    label's sigmoid probability instead of the softmax over classes."""
    import time

    from tqdm.auto import tqdm

    start = time.perf_counter()
    was_training = net.training
    net.to(device)
    n = len(texts)
    passes = max(1, mc_dropout)
    enc = tokenizer(
        texts, text_pairs, truncation=True, max_length=max_length, padding=False, return_attention_mask=False
    )
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort(-lengths, kind="stable")  # longest first: memory peaks early, not at the end
    out = np.zeros((passes, n, 0), dtype=np.float32)
    generator = torch.Generator().manual_seed(seed)
    try:
        _set_mc_dropout(net, mc_dropout > 0)
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        results: list[np.ndarray] = []
        device_type = torch.device(device).type
        # a net already cast to bf16 (as `encoderlab predict` does) runs as it is: autocast would only cast
        # activations back and forth around the ops it keeps in fp32
        fp32_weights = any(p.dtype == torch.float32 for p in net.parameters())
        autocast = torch.autocast(
            device_type, dtype=torch.bfloat16, enabled=precision == "bf16" and fp32_weights
        )
        with torch.inference_mode(), autocast:
            disable = None if progress is None else not progress
            for idx in tqdm(batches, desc=desc, unit="batch", disable=disable):
                features = [{k: enc[k][i] for k in enc} for i in idx]
                batch = tokenizer.pad(features, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                probs = []
                for _ in range(passes):
                    if mc_dropout > 0:  # reproducible stochastic passes
                        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                    logits = net(batch).float()
                    p = logits.sigmoid() if multilabel else logits.softmax(dim=-1)
                    probs.append(p.cpu().numpy())
                results.append(np.stack(probs))  # (passes, b, C)
        if results:
            out = np.concatenate(results, axis=1)[:, np.argsort(order, kind="stable")]  # back to input order
    finally:
        net.train(was_training)
    probs = out.mean(axis=0)
    std = out.std(axis=0) if mc_dropout > 0 else None
    return Predictions(probs=probs, std=std, seconds=time.perf_counter() - start)


ABSTAIN = "abstain"  # the label of a prediction whose top probability is under the threshold


def prediction_rows(
    out: Predictions, label_names: list[str], threshold: float | None = None
) -> list[dict[str, str | float]]:
    """One row per text: label (or ABSTAIN under `threshold`), top_label, confidence, prob_<label> and,
    with MC dropout, std_<label>. `encoderlab predict` and the MLflow pyfunc model both answer with these."""
    top = out.probs.argmax(axis=1)
    conf = out.probs.max(axis=1)
    rows: list[dict[str, str | float]] = []
    for i in range(len(out.probs)):
        label = label_names[top[i]]
        row: dict[str, str | float] = {
            "label": label if threshold is None or conf[i] >= threshold else ABSTAIN,
            "top_label": label,
            "confidence": float(conf[i]),
        }
        row.update({f"prob_{n}": float(out.probs[i, j]) for j, n in enumerate(label_names)})
        if out.std is not None:
            row.update({f"std_{n}": float(out.std[i, j]) for j, n in enumerate(label_names)})
        rows.append(row)
    return rows


def label_set_rows(
    out: Predictions, label_names: list[str], thresholds: list[float]
) -> list[dict[str, str | float]]:
    """Multi-label: one row per text with `labels` (the predicted set, 'joy;love', '' for none: each label
    whose probability is above its threshold), n_labels and prob_<label> (and std_<label> with MC dropout)."""
    from encoderlab.data.multilabel import SEPARATOR

    chosen = out.probs > np.asarray(thresholds, dtype=np.float64)[None, :]
    rows: list[dict[str, str | float]] = []
    for i in range(len(out.probs)):
        row: dict[str, str | float] = {
            "labels": SEPARATOR.join(label_names[j] for j in np.flatnonzero(chosen[i])),
            "n_labels": int(chosen[i].sum()),
        }
        row.update({f"prob_{n}": float(out.probs[i, j]) for j, n in enumerate(label_names)})
        if out.std is not None:
            row.update({f"std_{n}": float(out.std[i, j]) for j, n in enumerate(label_names)})
        rows.append(row)
    return rows
