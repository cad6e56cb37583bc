"""Lightning callbacks that encoderlab adds to every fit itself (conf/callbacks/ holds the optional ones)."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch


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
