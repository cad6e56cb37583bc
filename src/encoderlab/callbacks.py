"""Lightning callbacks that encoderlab adds to every fit itself (conf/callbacks/ holds the optional ones)."""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping

import lightning as L
import torch

from encoderlab.errors import DivergedError


class Throughput(L.Callback):
    """Counts what the fit processed and how long it took, for the perf/* metrics: training throughput
    excludes periodic validation; tokens are real (non-pad) tokens. `started_at` is the wall clock the
    run's start-up is timed from (encoderlab.run_started_at())."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.train_samples = 0
        self.train_tokens: torch.Tensor | int = 0  # a tensor sum, read once after fit: int() would sync a GPU
        self.train_padded_tokens = 0  # batch x length, padding included
        self.first_step_at: float | None = None  # wall clock of the first training batch
        self.val_samples = 0
        self.val_seconds = 0.0
        self.fit_seconds = 0.0
        self._val_started = self._fit_started = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_started

    def on_train_batch_start(
        self, trainer, pl_module, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        self.train_samples += len(batch["labels"])
        if "attention_mask" in batch:
            self.train_tokens = self.train_tokens + batch["attention_mask"].sum().detach()
            self.train_padded_tokens += batch["attention_mask"].numel()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.val_samples += len(batch["labels"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_seconds += time.perf_counter() - self._val_started

    def metrics(self) -> dict[str, float]:
        """perf/* of the fit."""
        train_seconds = max(self.fit_seconds - self.val_seconds, 1e-9)
        tokens = float(self.train_tokens)
        out = {
            "perf/fit_seconds": self.fit_seconds,  # includes periodic validation
            "perf/train_seconds": train_seconds,
            "perf/train_samples_seen": self.train_samples,
            "perf/train_samples_per_second": self.train_samples / train_seconds,
            "perf/train_tokens_per_second": tokens / train_seconds,
            "perf/padding_fraction": 1 - tokens / max(self.train_padded_tokens, 1),
            "perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if self.val_seconds > 0:
            out["perf/val_samples_per_second"] = self.val_samples / self.val_seconds
        if self.first_step_at is not None:  # from the run's start to its first training batch
            out["perf/seconds_to_first_step"] = self.first_step_at - self.started_at
        return out


class DivergenceGuard(L.Callback):
    """Stops the fit at the first NaN/inf training loss with a DivergedError (what happened, where, what
    to try) instead of training on and exporting a NaN model. On CPU every step's loss is checked at once;
    on a GPU the check of a step's loss waits for the next step (or validation, or the end of training),
    so it never stalls the device: reading a value the GPU computed a step ago costs no waiting."""

    def __init__(self, defer: bool | None = None) -> None:
        self.defer = defer  # check a step's loss at the next step; None: on any device but the CPU
        self._step = 0
        self._pending: tuple[torch.Tensor, dict] | None = None  # (finite flag, context) not yet read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step = trainer.global_step  # optimizer steps done before this batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None  # dict or BatchEncoding
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else (len(batch["labels"]), None)  # (B, T)
        context = {"step": self._step, "shape": shape, "loss": loss.detach(), **_settings(trainer)}
        finite = loss.detach().isfinite().all()
        if not (self.defer if self.defer is not None else loss.device.type != "cpu"):
            self._check(finite, context)
        else:
            self.flush()
            self._pending = (finite, context)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()

    def flush(self) -> None:
        """Check the loss whose check was deferred (GPU)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._check(*pending)

    @staticmethod
    def _check(finite: torch.Tensor, context: dict) -> None:
        if bool(finite):
            return
        raise DivergedError(diverged_message(**context))


def _settings(trainer: L.Trainer) -> dict:
    """What the message names besides the step and batch, read when the step ran (a scheduler moves lr)."""
    group = trainer.optimizers[0].param_groups[0] if trainer.optimizers else {}
    return {
        "lr": group.get("lr"),
        "initial_lr": group.get("initial_lr"),  # optimizer.lr, when a scheduler is set
        "clip": trainer.gradient_clip_val,
        "precision": str(trainer.precision),
    }


def diverged_message(
    step: int, shape: tuple, loss: torch.Tensor, lr=None, initial_lr=None, clip=None, precision: str = "32"
) -> str:
    """One paragraph: the bad loss, the step, the batch shape and learning rate, and what to try."""
    value = "NaN" if torch.isnan(loss).any() else "inf"
    batch, length = shape[0], shape[1] if len(shape) > 1 else None
    size = f"{batch} sequences x {length} tokens" if length is not None else f"{batch} examples"
    rate = f", learning rate {float(lr):.3g}" if lr is not None else ""
    if lr is not None and initial_lr is not None and float(initial_lr) != float(lr):
        rate += f" (optimizer.lr={float(initial_lr):.3g})"
    tries = [
        "a lower optimizer.lr (e.g. 10x lower)",
        f"stronger gradient clipping (trainer.gradient_clip_val, now {clip})"
        if clip
        else "gradient clipping (trainer.gradient_clip_val=1.0)",
    ]
    if not precision.startswith("32"):
        tries.append(f"full precision (trainer.precision=32; now {precision})")
    return (
        f"Training diverged: the training loss became {value} at global step {step} (a batch of {size}"
        f"{rate}). The run stopped there and exported no model. Try {', '.join(tries[:-1])} or {tries[-1]}; "
        "trainer.detect_anomaly=true names the operation that first produced the NaN/inf."
    )
