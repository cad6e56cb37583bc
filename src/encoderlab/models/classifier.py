"""The LightningModule: trains any nn.Module that maps a tokenized batch to logits."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric

from encoderlab.metrics import ClassificationMetrics, MultilabelMetrics
from encoderlab.models.losses import ClassificationLoss

OptimizerFactory = Callable[[list[dict]], torch.optim.Optimizer]  # param groups -> optimizer
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]  # optimizer -> scheduler
log = logging.getLogger(__name__)


class SequenceClassifier(L.LightningModule):
    """Training with `loss` (default: cross-entropy) and torchmetrics logged as train/*, val/*, test/*. `optimizer` and
    `scheduler` are the partials that conf/optimizer and conf/scheduler instantiate to; the scheduler
    steps once per optimizer step. After test: `test_probs` (N, C) in test-set order and `test_confusion`.

    Metrics are exact over the whole split when several processes share it (DDP): torchmetrics gathers
    their states, the losses are means weighted by rows, and test probabilities are gathered with their
    row indices (the `row_index` of a validation/test batch) and put back in the split's order.

    task="multilabel": targets are (B, C) 0/1 floats, probabilities are sigmoids, the loss is `loss` or
    BCEWithLogits, and the metrics are the multilabel family at threshold 0.5 (no confusion matrix)."""

    def __init__(
        self,
        model: nn.Module,
        label_names: list[str],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        loss: nn.Module | None = None,
        task: str = "single_label",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "loss"], logger=False)
        self.model = model
        self.label_names = list(label_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.task = task
        self.multilabel = task == "multilabel"
        # the criterion (models/losses.py); None: plain cross-entropy with label_smoothing. It follows the
        # module's train/eval mode: smoothing in training only, val/test report the unsmoothed loss.
        self.loss_fn = loss if loss is not None else ClassificationLoss(task, label_smoothing=label_smoothing)
        n = len(self.label_names)
        metrics = (
            (lambda: MultilabelMetrics(self.label_names))
            if self.multilabel
            else (lambda: ClassificationMetrics(n))
        )
        # train/* epoch metrics accumulate over the epoch: their state goes into checkpoints, so an epoch
        # resumed from last.ckpt (encoderlab resume) reports all its batches, not those after the resume
        self.train_metrics = metrics()
        self.train_metrics.persistent(True)
        self.train_loss = MeanMetric()
        self.train_loss.persistent(True)
        self.val_metrics = metrics()
        self.val_loss = MeanMetric()
        self.test_metrics = metrics()
        self.test_loss = MeanMetric()
        self.test_rows = CatMetric()
        self.test_row_probs = CatMetric()
        self.test_probs: torch.Tensor | None = None
        self.test_confusion: torch.Tensor | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "row_index"}
        logits = self(inputs).float()  # (B, C); float so bf16 autocast does not degrade the loss
        if self.multilabel:
            loss = self.loss_fn(logits, batch["labels"].float())
            return loss, logits.sigmoid().detach()
        loss = self.loss_fn(logits, batch["labels"])
        return loss, logits.softmax(dim=-1).detach()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, probs = self._step(batch)
        self.train_metrics.update(probs, batch["labels"])
        self.train_loss.update(loss.detach(), weight=len(probs))
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(probs))
        if self.trainer.world_size > 1:
            return loss * self._share_of_global_batch(len(probs), loss.device)
        return loss

    def _share_of_global_batch(self, rows: int, device: torch.device) -> torch.Tensor:
        """DDP averages the processes' gradients with equal weights; a process's mean loss scaled by
        processes x its rows / the global batch's rows makes that the mean over the global batch, also for
        a last batch that does not split evenly (as one process with the global batch size computes it)."""
        total = self.trainer.strategy.reduce(
            torch.tensor(float(rows), device=device), reduce_op=torch.distributed.ReduceOp.SUM
        )
        return rows * self.trainer.world_size / total

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"train/{k}": v for k, v in self.train_metrics.compute().items()})
        self.log("train/loss_epoch", self.train_loss.compute())
        self.train_metrics.reset()
        self.train_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, probs = self._step(batch)
        self.val_metrics.update(probs, batch["labels"])
        self.val_loss.update(loss, weight=len(probs))

    def on_validation_epoch_end(self) -> None:
        metrics = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        headline = "val/f1_micro" if self.multilabel else "val/accuracy"
        self.log(headline, metrics.pop(headline), prog_bar=True)
        self.log_dict(metrics)
        self.val_metrics.reset()
        self.val_loss.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, probs = self._step(batch)
        self.test_metrics.update(probs, batch["labels"])
        self.test_loss.update(loss, weight=len(probs))
        if "row_index" in batch:
            self.test_rows.update(batch["row_index"])
            self.test_row_probs.update(probs)

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.log("test/loss", self.test_loss.compute())
        confusion = self.test_metrics.confusion_matrix()
        self.test_confusion = None if confusion is None else confusion.cpu()
        self.test_probs = None
        if self.test_rows.update_count:  # every process's rows, in the split's order
            rows = self.test_rows.compute().long().cpu()
            probs = self.test_row_probs.compute().float().cpu().reshape(len(rows), -1)
            self.test_probs = torch.full((int(rows.max()) + 1, probs.shape[1]), float("nan"))
            self.test_probs[rows] = probs
        for metric in (self.test_metrics, self.test_loss, self.test_rows, self.test_row_probs):
            metric.reset()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clips what Lightning would (by norm or value), also sparse gradients (LazyAdamW's embedding rows).
        Lightning's own clipping refuses a fused optimizer under any AMP plugin and cannot read sparse
        gradients; when this runs the gradients are at their true scale (fp16's are unscaled already)."""
        if gradient_clip_val is None:
            return
        grads = []
        for p in self.parameters():
            if p.grad is None:
                continue
            if p.grad.is_sparse:  # coalesced once here, so the optimizer sees one row per index
                p.grad = p.grad.coalesce()
                grads.append(p.grad.values())
            else:
                grads.append(p.grad)
        if gradient_clip_algorithm == "value":
            torch._foreach_clamp_min_(grads, -gradient_clip_val)
            torch._foreach_clamp_max_(grads, gradient_clip_val)
            return
        total = torch.nn.utils.get_total_norm(grads)
        # on a CPU rescale only when over the limit (same result, one pass fewer); on a GPU the comparison
        # would sync every step, so always rescale (by min(1, max / norm))
        if self.device.type != "cpu" or total > gradient_clip_val:
            torch._foreach_mul_(grads, torch.clamp(gradient_clip_val / (total + 1e-6), max=1.0))

    def _sparse_input_embedding(self, sparse: bool) -> bool:
        """Switch the model's token embedding (its `input_embeddings()`) to sparse gradients or back;
        False when the model has none that trains."""
        layer = getattr(self.model, "input_embeddings", lambda: None)()
        if not isinstance(layer, nn.Embedding) or not layer.weight.requires_grad:
            return False
        layer.sparse = sparse
        return True

    def on_fit_end(self) -> None:
        self._sparse_input_embedding(False)  # analysis and export get the model as it was built

    def configure_optimizers(self):
        # nanoGPT's rule: matrices decay (the optimizer's weight_decay); biases and LayerNorm weights do not
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        # fused: one kernel over all parameters instead of a loop of small ops (several times faster on
        # CPU). Only CPU and CUDA have the kernel, and Lightning's fp16 GradScaler cannot unscale for it.
        make_optimizer = self.optimizer_factory
        fp16_scaler = getattr(getattr(self.trainer, "precision_plugin", None), "scaler", None) is not None
        if getattr(make_optimizer, "keywords", {}).get("fused") and (
            self.device.type not in ("cpu", "cuda") or fp16_scaler
        ):
            make_optimizer = partial(make_optimizer, fused=None)
        if getattr(getattr(make_optimizer, "func", make_optimizer), "sparse_gradients", False):
            if self.trainer.world_size > 1:  # NCCL cannot all-reduce sparse gradients: plain AdamW then
                log.info(
                    "LazyAdamW with %d processes: the embedding's updates stay dense", self.trainer.world_size
                )
            elif self._sparse_input_embedding(True):
                log.info("LazyAdamW: the input embedding updates only the rows each batch uses")
        optimizer = make_optimizer(groups)
        if self.scheduler_factory is None:
            return optimizer
        make_scheduler = self.scheduler_factory
        accepts = inspect.signature(make_scheduler).parameters
        if "num_training_steps" in accepts and "num_training_steps" not in getattr(
            make_scheduler, "keywords", {}
        ):
            make_scheduler = partial(
                make_scheduler, num_training_steps=int(self.trainer.estimated_stepping_batches)
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": make_scheduler(optimizer), "interval": "step", "frequency": 1},
        }
