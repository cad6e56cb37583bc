"""Classification metrics (torchmetrics) computed from class probabilities."""

from __future__ import annotations

import torch
import torchmetrics.classification as tmc
from torch import nn


class ClassificationMetrics(nn.Module):
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
        # Batches are buffered and handed to the twelve metrics in one update at compute(): per-batch
        # updates cost several ms of input checks each step, a tenth of a short-sentence CPU step.
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def persistent(self, mode: bool = True) -> None:
        """Whether the accumulated state goes into state_dict (a checkpoint), buffered batches included."""
        self._persistent = mode
        for m in [*self.multiclass.values(), *self.positive.values(), self.confusion]:
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

    def reset(self) -> None:
        self._probs, self._targets = [], []
        for m in [*self.multiclass.values(), *self.positive.values(), self.confusion]:
            m.reset()
