"""Classification metrics (torchmetrics) computed from class probabilities."""

from __future__ import annotations

import re

import numpy as np
import torch
import torchmetrics.classification as tmc
from torch import nn


class _BufferedMetrics(nn.Module):
    """Batches are buffered and handed to the metrics in one update at compute(): per-batch updates cost
    several ms of input checks each step, a tenth of a short-sentence CPU step. Subclasses list their
    metrics (`_metrics`) and feed one concatenated update (`_update`)."""

    def __init__(self) -> None:
        super().__init__()
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def _metrics(self) -> list[nn.Module]:
        raise NotImplementedError

    def _update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def persistent(self, mode: bool = True) -> None:
        """Whether the accumulated state goes into state_dict (a checkpoint), buffered batches included."""
        self._persistent = mode
        for m in self._metrics():
            m.persistent(mode)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if getattr(self, "_persistent", False):
            self._flush()  # the buffered batches into the metrics' states, which state_dict holds
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self._probs.append(probs.detach())
        self._targets.append(targets.detach())

    def _flush(self) -> None:
        if not self._probs:
            return
        probs, targets = torch.cat(self._probs), torch.cat(self._targets)
        self._probs, self._targets = [], []
        self._update(probs, targets)

    def reset(self) -> None:
        self._probs, self._targets = [], []
        for m in self._metrics():
            m.reset()


class ClassificationMetrics(_BufferedMetrics):
    """accuracy, macro/weighted F1, precision and recall, AUROC; binary F1 of class 1 when there are two
    classes. update(probs (N, C), targets (N,)), then compute() -> {name: value}."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        mc = {"num_classes": num_classes}
        self.multiclass = nn.ModuleDict(
            {
                "accuracy": tmc.MulticlassAccuracy(average="micro", **mc),
                "f1_macro": tmc.MulticlassF1Score(average="macro", **mc),
                "f1_weighted": tmc.MulticlassF1Score(average="weighted", **mc),
                "precision_macro": tmc.MulticlassPrecision(average="macro", **mc),
                "precision_weighted": tmc.MulticlassPrecision(average="weighted", **mc),
                "recall_macro": tmc.MulticlassRecall(average="macro", **mc),
                "recall_weighted": tmc.MulticlassRecall(average="weighted", **mc),
            }
        )
        if num_classes == 2:
            self.positive = nn.ModuleDict(
                {
                    "f1": tmc.BinaryF1Score(),
                    "precision": tmc.BinaryPrecision(),
                    "recall": tmc.BinaryRecall(),
                    "auroc": tmc.BinaryAUROC(),
                }
            )
        else:
            self.positive = nn.ModuleDict({"auroc": tmc.MulticlassAUROC(average="macro", **mc)})
        self.confusion = tmc.MulticlassConfusionMatrix(**mc)

    def _metrics(self) -> list[nn.Module]:
        return [*self.multiclass.values(), *self.positive.values(), self.confusion]

    def _update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        for metric in self.multiclass.values():
            metric.update(probs, targets)
        scores = probs[:, 1] if self.num_classes == 2 else probs
        for metric in self.positive.values():
            metric.update(scores, targets)
        self.confusion.update(probs, targets)

    def compute(self) -> dict[str, torch.Tensor]:
        self._flush()
        out = {name: m.compute() for name, m in self.multiclass.items()}
        out.update({name: m.compute() for name, m in self.positive.items()})
        return out

    def confusion_matrix(self) -> torch.Tensor:
        self._flush()
        return self.confusion.compute()


def metric_name(label: str) -> str:
    """A label as part of an MLflow metric key (letters, digits, _ - . only)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(label))


THRESHOLDED = ("f1_micro", "f1_macro", "precision_micro", "recall_micro", "subset_accuracy", "hamming_loss")


class MultilabelMetrics(_BufferedMetrics):
    """torchmetrics' multilabel family at one decision threshold (a label is predicted when its
    probability is above it): micro/macro F1, precision and recall, subset accuracy (exact match),
    Hamming loss, label-ranking average precision, macro AUROC, and f1_<label> per label.
    update(probs (N, C), targets (N, C) 0/1), then compute() -> {name: value}; the same interface as
    ClassificationMetrics so SequenceClassifier can hold either."""

    def __init__(self, label_names: list[str], threshold: float = 0.5) -> None:
        super().__init__()
        self.label_names = list(label_names)
        ml = {"num_labels": len(label_names), "threshold": threshold}
        self.thresholded = nn.ModuleDict(
            {
                "f1_micro": tmc.MultilabelF1Score(average="micro", **ml),
                "f1_macro": tmc.MultilabelF1Score(average="macro", **ml),
                "precision_micro": tmc.MultilabelPrecision(average="micro", **ml),
                "recall_micro": tmc.MultilabelRecall(average="micro", **ml),
                "precision_macro": tmc.MultilabelPrecision(average="macro", **ml),
                "recall_macro": tmc.MultilabelRecall(average="macro", **ml),
                "subset_accuracy": tmc.MultilabelExactMatch(**ml),
                "hamming_loss": tmc.MultilabelHammingDistance(average="micro", **ml),
                "f1_per_label": tmc.MultilabelF1Score(average=None, **ml),
            }
        )
        n = {"num_labels": len(label_names)}
        self.ranking = nn.ModuleDict(
            {
                "lrap": tmc.MultilabelRankingAveragePrecision(**n),
                "auroc": tmc.MultilabelAUROC(average="macro", **n),
            }
        )

    def _metrics(self) -> list[nn.Module]:
        return [*self.thresholded.values(), *self.ranking.values()]

    def _update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        for metric in self._metrics():
            metric.update(probs.float(), targets.round().long())

    def compute(self) -> dict[str, torch.Tensor]:
        self._flush()
        out = {name: m.compute() for name, m in self.thresholded.items() if name != "f1_per_label"}
        per_label = self.thresholded["f1_per_label"].compute()
        out.update({f"f1_{metric_name(n)}": per_label[i] for i, n in enumerate(self.label_names)})
        out.update({name: m.compute() for name, m in self.ranking.items()})
        return out

    def confusion_matrix(self) -> None:
        """No C x C confusion matrix for multi-label predictions (the report draws co-occurrence)."""
        self._flush()
        return None


def multilabel_at_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: list[float], label_names: list[str]
) -> dict[str, float]:
    """The thresholded multilabel metrics (THRESHOLDED and f1_<label>) with one decision threshold per
    label: a label is predicted when its probability is above its threshold."""
    preds = (probs.float() > torch.as_tensor(thresholds, dtype=torch.float32)).long()
    metrics = MultilabelMetrics(label_names)
    for metric in metrics.thresholded.values():  # int predictions are taken as they are
        metric.update(preds, targets.round().long())
    out = {name: float(metrics.thresholded[name].compute()) for name in THRESHOLDED}
    per_label = metrics.thresholded["f1_per_label"].compute()
    out.update({f"f1_{metric_name(n)}": float(per_label[i]) for i, n in enumerate(label_names)})
    return out


THRESHOLD_GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))  # 0.05 .. 0.95


def tune_thresholds(
    probs: np.ndarray, targets: np.ndarray, grid: tuple[float, ...] = THRESHOLD_GRID
) -> list[float]:
    """Per label, the threshold of `grid` that maximises that label's F1 on (validation) predictions; ties go
    to the one nearest 0.5, and a label with no positive row keeps 0.5."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0.5
    grid_arr = np.asarray(grid)
    out = []
    for j in range(probs.shape[1]):
        positives = targets[:, j]
        if not positives.any():
            out.append(0.5)
            continue
        pred = probs[:, j][:, None] > grid_arr[None, :]  # (N, G)
        tp = (pred & positives[:, None]).sum(0)
        f1 = 2 * tp / (pred.sum(0) + positives.sum())
        best = np.flatnonzero(np.isclose(f1, f1.max()))
        out.append(float(grid_arr[best[np.argmin(np.abs(grid_arr[best] - 0.5))]]))
    return out
