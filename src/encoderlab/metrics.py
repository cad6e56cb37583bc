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

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        for metric in self.multiclass.values():
            metric.update(probs, targets)
        scores = probs[:, 1] if self.num_classes == 2 else probs
        for metric in self.positive.values():
            metric.update(scores, targets)
        self.confusion.update(probs, targets)

    def compute(self) -> dict[str, torch.Tensor]:
        out = {name: m.compute() for name, m in self.multiclass.items()}
        out.update({name: m.compute() for name, m in self.positive.items()})
        return out

    def confusion_matrix(self) -> torch.Tensor:
        return self.confusion.compute()

    def reset(self) -> None:
        for m in [*self.multiclass.values(), *self.positive.values(), self.confusion]:
            m.reset()
