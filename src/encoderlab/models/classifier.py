"""The LightningModule: trains any nn.Module that maps a tokenized batch to logits."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from encoderlab.metrics import ClassificationMetrics


def lr_lambda(name: str, warmup: int, total: int):
    """Multiplier of the base learning rate at optimizer step `step`: linear warmup, then decay."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear

    return fn


class SequenceClassifier(L.LightningModule):
    """Cross-entropy training with AdamW, warmup + decay per optimizer step, and torchmetrics logged as
    train/*, val/*, test/*. After test: `test_probs` (N, C) in test-set order and `test_confusion`."""

    def __init__(
        self,
        model: nn.Module,
        label_names: list[str],
        optimizer: DictConfig,
        scheduler: DictConfig,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        self.label_names = list(label_names)
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.label_smoothing = label_smoothing
        n = len(self.label_names)
        self.train_metrics = ClassificationMetrics(n)
        self.val_metrics = ClassificationMetrics(n)
        self.test_metrics = ClassificationMetrics(n)
        self.test_probs: torch.Tensor | None = None
        self.test_confusion: torch.Tensor | None = None
        self._test_batches: list[torch.Tensor] = []
        # throughput bookkeeping, logged as perf/* by train.py
        self.train_samples_seen = 0
        self.train_tokens_seen = 0  # real (non-pad) tokens
        self.train_padded_tokens = 0  # batch x length, padding included
        self.first_step_at: float | None = None  # wall clock of the first training batch
        self.val_seconds = 0.0
        self.val_samples_seen = 0
        self._val_started = 0.0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        smoothing = self.label_smoothing if self.training else 0.0  # val/test report the plain loss
        logits = self(batch).float()  # (B, C); float so bf16 autocast does not degrade the loss
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=smoothing)
        return loss, logits.softmax(dim=-1).detach()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        loss, probs = self._step(batch)
        self.train_samples_seen += len(probs)
        if "attention_mask" in batch:
            # a tensor sum, read once after fit: int() here would sync a GPU every step
            self.train_tokens_seen = self.train_tokens_seen + batch["attention_mask"].sum().detach()
            self.train_padded_tokens += batch["attention_mask"].numel()
        self.train_metrics.update(probs, batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(probs))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"train/{k}": v for k, v in self.train_metrics.compute().items()})
        self.train_metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self._val_started = time.perf_counter()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, probs = self._step(batch)
        self.val_samples_seen += len(probs)
        self.val_metrics.update(probs, batch["labels"])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(probs))

    def on_validation_epoch_end(self) -> None:
        metrics = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        self.log("val/accuracy", metrics.pop("val/accuracy"), prog_bar=True)
        self.log_dict(metrics)
        self.val_metrics.reset()
        self.val_seconds += time.perf_counter() - self._val_started

    def on_test_epoch_start(self) -> None:
        self._test_batches = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, probs = self._step(batch)
        self.test_metrics.update(probs, batch["labels"])
        self._test_batches.append(probs.cpu())
        self.log("test/loss", loss, on_epoch=True, batch_size=len(probs))

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_confusion = self.test_metrics.confusion_matrix().cpu()
        self.test_probs = torch.cat(self._test_batches) if self._test_batches else None
        self.test_metrics.reset()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip for a fused optimizer under any AMP plugin (for fp16's loss scaling);
        without a scaler (fp32, bf16) the gradients are at their true scale, so clip them directly."""
        if gradient_clip_val is None:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        elif self.device.type == "cpu":  # rescale only when over the limit: same result, one pass fewer
            params = [p for p in self.parameters() if p.grad is not None]
            total = torch.nn.utils.get_total_norm([p.grad for p in params])
            if total > gradient_clip_val:
                torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, total)
        else:  # on a GPU the comparison would sync every step: always rescale (by min(1, max/norm))
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def configure_optimizers(self):
        opt = self.optimizer_cfg
        # nanoGPT's rule: matrices decay; biases and LayerNorm weights (1-D) do not
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        # fused: one kernel over all parameters instead of a loop of small ops (several times faster on CPU)
        fp16_scaler = getattr(getattr(self.trainer, "precision_plugin", None), "scaler", None) is not None
        fused = opt.get("fused", True) and self.device.type in ("cpu", "cuda") and not fp16_scaler
        optimizer = torch.optim.AdamW(
            groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, fused=True if fused else None
        )
        total = int(self.trainer.estimated_stepping_batches)
        sch = self.scheduler_cfg
        warmup = sch.warmup_steps or math.ceil(sch.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(sch.name, warmup, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
