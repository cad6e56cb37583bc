"""Training losses for imbalanced labels: class weights (inverse frequency, effective number of samples, or
given), focal loss, on softmax (single-label) and sigmoid (multi-label) heads.

`build_loss(cfg.loss, task, label_counts, n_rows)` returns the module SequenceClassifier calls as
`loss_fn(logits (B, C), targets)`: targets (B,) long for single_label, (B, C) float 0/1 for multilabel.
Label smoothing applies in training only (the module's train/eval mode, which Lightning sets), so
validation and test report the same weighted/focal criterion without smoothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderlab.errors import EncoderlabError
from encoderlab.validate import check_class_weights

log = logging.getLogger(__name__)

TASKS = ("single_label", "multilabel")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise EncoderlabError(f"Config error: unknown task {task!r}. Allowed: {', '.join(TASKS)}.")


def class_weights(
    spec: Any, task: str, label_counts: torch.Tensor, n_rows: int, beta: float = 0.999
) -> torch.Tensor | None:
    """The (C,) weights `spec` asks for, or None.

    single_label: auto = n_rows / (C * count_c) (scikit-learn's "balanced"); effective =
    (1 - beta) / (1 - beta**count_c), scaled to sum to C (Cui et al. 2019).
    multilabel (used as BCE pos_weight): auto = negatives / positives of each label; effective = the same
    ratio of effective numbers, (1 - beta**negatives) / (1 - beta**positives).
    A label with no train rows counts as one row (the largest weight), with a warning: it never appears as
    a training target, and a finite weight keeps validation losses finite."""
    _check_task(task)
    check_class_weights(spec)
    if spec is None:
        return None
    counts = torch.as_tensor(label_counts, dtype=torch.float64).flatten()
    n_labels = len(counts)
    if not isinstance(spec, str):
        if len(spec) != n_labels:
            raise EncoderlabError(
                f"loss.class_weights lists {len(spec)} weights but the data has {n_labels} "
                f"labels: give one positive weight per label, in label order (see data/summary.json), or "
                "use loss.class_weights=auto."
            )
        return torch.tensor([float(v) for v in spec], dtype=torch.float32)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        log.warning(
            "loss.class_weights=%s: label(s) %s have no train rows; weighted as if they had one.", spec, empty
        )
    pos = counts.clamp(min=1)
    if task == "multilabel":
        neg = (n_rows - counts).clamp(min=0)
        if spec == "auto":
            w = neg / pos
        else:
            w = (1 - beta**neg) / (1 - beta**pos) if beta > 0 else torch.ones_like(pos)
    elif spec == "auto":
        w = n_rows / (n_labels * pos)
    else:
        w = (1 - beta) / (1 - beta**pos)
        w = w * n_labels / w.sum()
    return w.float()


class ClassificationLoss(nn.Module):
    """Cross-entropy (single_label) or binary cross-entropy on each label (multilabel), optionally class
    weighted and focal; returns the mean over the batch.

    single_label: torch's weighted cross-entropy, a mean weighted by the targets' class weights; with
    focal_gamma > 0 each row's term is multiplied by (1 - p_target)**gamma (Lin et al. 2017, the class
    weights as alpha), normalised the same way, so gamma 0 is exactly the weighted cross-entropy.
    multilabel: BCE with the weights as pos_weight (the positive term of label c times w_c); focal scales
    the positive term by (1 - p)**gamma and the negative one by p**gamma; mean over rows and labels."""

    def __init__(
        self,
        task: str = "single_label",
        weight: torch.Tensor | None = None,
        focal_gamma: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _check_task(task)
        self.task = task
        self.focal_gamma = float(focal_gamma)
        self.label_smoothing = float(label_smoothing)
        # not in state_dict: rebuilt from the config, so checkpoints keep their keys
        self.register_buffer("weight", None if weight is None else weight.float(), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return self._binary(logits, targets.to(logits.dtype))
        return self._softmax(logits, targets)

    def _softmax(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        smoothing = self.label_smoothing if self.training else 0.0  # val/test report the unsmoothed loss
        if self.focal_gamma == 0:
            return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=smoothing)
        per_row = F.cross_entropy(
            logits, targets, weight=self.weight, label_smoothing=smoothing, reduction="none"
        )
        p_target = logits.softmax(dim=-1).gather(1, targets[:, None]).squeeze(1)
        focal = (1 - p_target).clamp(min=0) ** self.focal_gamma * per_row
        norm = self.weight[targets].sum() if self.weight is not None else logits.new_tensor(len(targets))
        return focal.sum() / norm

    def _binary(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.focal_gamma == 0:
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.weight)
        # log p and log(1 - p) from the logits (stable), each term scaled by its focal factor
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        p = log_p.exp()
        pos = targets * (1 - p) ** self.focal_gamma * log_p
        if self.weight is not None:
            pos = pos * self.weight
        neg = (1 - targets) * p**self.focal_gamma * log_not_p
        return -(pos + neg).mean()

    def describe(self, label_names: Sequence[str] | None = None) -> dict[str, Any]:
        """What this loss trains with (logged with the run)."""
        names = list(label_names) if label_names is not None else None
        weights = None
        if self.weight is not None:
            values = [round(float(w), 6) for w in self.weight]
            weights = dict(zip(names, values, strict=True)) if names else values
        return {
            "task": self.task,
            "criterion": "bce_with_logits" if self.task == "multilabel" else "cross_entropy",
            "weights_as": ("pos_weight" if self.task == "multilabel" else "class weight")
            if weights
            else None,
            "class_weights": weights,
            "focal_gamma": self.focal_gamma,
            "label_smoothing": self.label_smoothing,
        }


def build_loss(cfg_loss: Any, task: str, label_counts: torch.Tensor, n_rows: int) -> nn.Module:
    """The training loss cfg.loss describes for `task` ("single_label" or "multilabel"), with class
    weights from `label_counts` ((C,) train rows per label) and `n_rows` (train rows)."""
    _check_task(task)
    gamma = float(cfg_loss.get("focal_gamma", 0.0) or 0.0)
    smoothing = float(cfg_loss.get("label_smoothing", 0.0) or 0.0)
    beta = float(cfg_loss.get("effective_beta", 0.999))
    if gamma < 0:
        raise EncoderlabError(
            f"Config error: bad value for 'loss.focal_gamma': {gamma}. Allowed: 0 (off) or a number > 0 "
            "(focal loss; 2 is the usual choice)."
        )
    if not 0 <= beta < 1:
        raise EncoderlabError(
            f"Config error: bad value for 'loss.effective_beta': {beta}. Allowed: a float in [0, 1) "
            "(0.9, 0.99, 0.999 or 0.9999 in Cui et al. 2019)."
        )
    if task == "multilabel" and smoothing > 0:
        raise EncoderlabError(
            f"loss.label_smoothing={smoothing} applies to single-label cross-entropy only; "
            "with dataset.task=multilabel set loss.label_smoothing=0."
        )
    weight = class_weights(cfg_loss.get("class_weights"), task, label_counts, n_rows, beta)
    return ClassificationLoss(task, weight, gamma, smoothing)
