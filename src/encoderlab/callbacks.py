"""Lightning callbacks that encoderlab adds to every fit itself (conf/callbacks/ holds the optional ones)."""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from encoderlab.errors import DivergedError
from encoderlab.signals import Killed, _lightning_owns_sigterm

log = logging.getLogger(__name__)


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
        if trainer.world_size > 1:  # the run's throughput: every process's rows and tokens
            counts = torch.tensor(
                [self.train_samples, float(self.train_tokens), self.train_padded_tokens, self.val_samples],
                dtype=torch.float64,
                device=pl_module.device,
            )
            total = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
            self.train_samples, self.train_tokens, self.train_padded_tokens, self.val_samples = (
                int(total[0]), total[1], int(total[2]), int(total[3])
            )  # fmt: skip

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


def rng_states() -> dict:
    """The global RNG states dropout, word dropout and user code draw from (torch, CUDA, numpy, random)."""
    import random

    import numpy as np

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


class LastCheckpoint(Checkpoint):
    """`<run dir>/checkpoints/last.ckpt`: the full training state that `encoderlab resume` continues from
    (weights, optimizer, LR scheduler, loop position, RNG states, early-stopping and best-checkpoint
    state). Written atomically (a temporary file, then os.replace: a kill -9 mid-write leaves the previous
    last.ckpt) after every validation, at the end of training, and when a signal arrives during training.

    Signals during training are taken at a batch boundary, so the saved state is never that of a half-done
    optimizer step: SIGTERM/SIGINT save after the batch in progress (after the validation in progress when
    one runs) and then end the run as killed; SIGUSR1 (SLURM's `--signal=USR1@90` warning) saves and
    training goes on, unless another handler is already installed. Under SLURM with Lightning's
    auto-requeue (SLURMEnvironment's default) this callback takes the requeue signal over from Lightning:
    it saves last.ckpt at the batch boundary (Lightning would save its own checkpoint mid-step, from the
    signal handler) and then runs `scontrol requeue` (encoderlab.slurm.requeue). A second SIGTERM/SIGINT
    stops at once, keeping the previous last.ckpt."""

    def __init__(
        self, dirpath: str | None = None, filename: str = "last.ckpt", on_signal: bool = True
    ) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.on_signal = on_signal
        self.saved_step: int | None = None  # global step of the last save
        self._pending: int | None = None  # a signal received, not saved for yet
        self._stop: int | None = None  # a stop signal saved for: Killed at the next batch boundary
        self._previous: dict[int, Any] = {}
        self._restored_rng: dict | None = None
        self._requeue_signal: int | None = None  # under SLURM auto-requeue: save, then scontrol requeue

    @property
    def path(self) -> Path:
        if self.dirpath is None:
            raise ValueError("LastCheckpoint needs a dirpath (train sets <run dir>/checkpoints)")
        return Path(self.dirpath) / self.filename

    # ---- saving ---------------------------------------------------------------------------------
    def save(self, trainer: L.Trainer) -> None:
        """trainer.save_checkpoint to a temporary file beside last.ckpt, flushed, then renamed over it."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp = Path(trainer.strategy.broadcast(str(tmp)))  # every process saves (rank 0 writes) one file
        try:
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
        finally:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
        self.saved_step = trainer.global_step

    def _fitting(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run

    def state_dict(self) -> dict[str, Any]:
        states = rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process's own
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            return {"rng": states, "rng_by_rank": gathered}
        return {"rng": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_rng = state_dict.get("rng")
        by_rank = state_dict.get("rng_by_rank")
        if by_rank and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            if len(by_rank) == world:  # the same number of processes as the interrupted fit
                self._restored_rng = by_rank[rank]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            self.save(trainer)
            self._take_signal(trainer)
            self._stop_if_asked()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.world_size > 1:  # a signal to any process: all of them save (a collective), and stop
            self._agree(trainer, pl_module)
        if self._pending is not None:  # Lightning's own point for mid-epoch checkpoints
            self.save(trainer)
            self._take_signal(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._stop_if_asked()  # only now: the previous step's metrics have reached the logger

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if self._fitting(trainer) and self.saved_step != trainer.global_step:
            self.save(trainer)  # training ended without a validation since the last save (max_steps)
        self._take_signal(trainer)
        self._stop_if_asked()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        # Lightning's own SIGTERM handling (SLURM) stops at a batch boundary; a Killed was either raised
        # here after saving or came mid-batch (its state may be a half-done step: keep the last save)
        if type(exception).__name__ == "SIGTERMException" and self._fitting(trainer):
            self.save(trainer)

    # ---- resuming -------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored_rng is not None:  # resumed: where the interrupted run was, data and RNG alike
            skip_seen_batches(trainer)
            set_rng_states(self._restored_rng)
            self._restored_rng = None
        if self.on_signal:
            from encoderlab.slurm import requeue_signal

            self._requeue_signal = requeue_signal(trainer)
            self._install_handlers()

    # ---- signals --------------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        wanted = [signal.SIGINT]
        if not _lightning_owns_sigterm():
            wanted.append(signal.SIGTERM)
        usr1 = getattr(signal, "SIGUSR1", None)
        if usr1 is not None and signal.getsignal(usr1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            wanted.append(usr1)
        if self._requeue_signal is not None and self._requeue_signal not in wanted:
            wanted.append(self._requeue_signal)  # Lightning's SLURM handler registered it at fit start
        for signum in wanted:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _goes_on(self, signum: int | None) -> bool:
        """A signal after which training goes on once last.ckpt is saved (SIGUSR1, the requeue signal)."""
        return signum is not None and signum in (getattr(signal, "SIGUSR1", None), self._requeue_signal)

    def _handle(self, signum: int, frame) -> None:
        stopping = self._stop is not None or (self._pending is not None and not self._goes_on(self._pending))
        if stopping and not self._goes_on(signum):
            previous = self._previous.get(signum)  # a second stop signal: stop now (TrackedRun's handler)
            self._restore_handlers()
            if callable(previous):
                previous(signum, frame)
        elif not stopping:
            self._pending = signum

    def _agree(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The processes of a distributed fit agree on the signal any of them got: 2 = stop, 1 = save and
        go on (SIGUSR1, SLURM's requeue signal), 0 = none."""
        mine = 0 if self._pending is None else 1 if self._goes_on(self._pending) else 2
        code = torch.tensor(mine, device=pl_module.device)
        agreed = int(trainer.strategy.reduce(code, reduce_op=torch.distributed.ReduceOp.MAX))
        if agreed > mine:
            goes_on = self._requeue_signal or getattr(signal, "SIGUSR1", None)
            self._pending = signal.SIGTERM if agreed == 2 else goes_on

    def _take_signal(self, trainer: L.Trainer) -> None:
        """After a save: SIGUSR1 is done with; SIGTERM/SIGINT stop at the next batch boundary."""
        signum, self._pending = self._pending, None
        if signum is None:
            return
        name = signal.Signals(signum).name
        if self._goes_on(signum):
            log.info("%s: saved %s at step %d; training goes on", name, self.path, trainer.global_step)
            if signum == self._requeue_signal and trainer.is_global_zero:
                from encoderlab.slurm import SlurmJob, requeue

                job = SlurmJob.from_env()
                if job is not None:
                    requeue(job, str(self.path))
        else:
            log.info("%s: saved %s at step %d", name, self.path, trainer.global_step)
            self._stop = signum

    def _stop_if_asked(self) -> None:
        if self._stop is not None:
            signum, self._stop = self._stop, None
            self._restore_handlers()
            raise Killed(signum)


def skip_seen_batches(trainer: L.Trainer) -> None:
    """A resumed fit's train loader starts after the batches of the current epoch already trained on (the
    samplers of encoderlab.data.sampler; another loader restarts the epoch, as Lightning does)."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    loader = trainer.train_dataloader
    if not done or loader is None or not hasattr(loader, "batch_sampler"):
        return
    batch_sampler = loader.batch_sampler
    if hasattr(batch_sampler, "resume_at"):
        batch_sampler.resume_at(trainer.current_epoch, done)
    else:
        log.warning("The train loader cannot skip what this epoch already trained on: the epoch restarts")


class StepProfiler(L.Callback):
    """Profiles training steps with torch.profiler: steps [skip, skip + steps) of the fit (forward,
    backward, clipping and the optimizer step, with Lightning's own work between them). Writes to
    `dirpath` (default <run dir>/profile, logged as the run's `profile` artifact):
    - ops.txt: the top `row_limit` operators by self time, per step, grouped by input shape;
    - trace.json: the timeline, for Perfetto (ui.perfetto.dev) or chrome://tracing.
    Turn it on with `callbacks=profile`; the profiled steps run slower, so perf/* of that run are not
    a speed measurement."""

    def __init__(
        self, skip: int = 20, steps: int = 10, row_limit: int = 25, dirpath: str | None = None
    ) -> None:
        if skip < 0 or steps < 1:
            raise ValueError(
                f"StepProfiler: skip must be >= 0 and steps >= 1, got skip={skip}, steps={steps}"
            )
        self.skip, self.steps, self.row_limit, self.dirpath = skip, steps, row_limit, dirpath
        self._profiler: torch.profiler.profile | None = None
        self._done = False
        self.written: Path | None = None  # the folder written, once profiled

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._done or self._profiler is not None or trainer.global_step < self.skip:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if pl_module.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        self._profiler.__enter__()
        self._first = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._profiler is not None and trainer.global_step - self._first >= self.steps:
            self._finish(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._profiler is not None:  # the fit ended before `steps` steps: write what was profiled
            self._finish(trainer)

    def _finish(self, trainer: L.Trainer) -> None:
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        self._done = True
        if not trainer.is_global_zero:
            return
        steps = max(trainer.global_step - self._first, 1)
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "profile")
        out.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(out / "trace.json"))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = profiler.key_averages(group_by_input_shape=True).table(
            sort_by=sort, row_limit=self.row_limit, max_name_column_width=40, max_shapes_column_width=60
        )
        header = (
            f"torch.profiler: training steps {self._first}..{trainer.global_step - 1} ({steps} steps); "
            f"times are totals over them (divide by {steps} for one step)\n"
        )
        (out / "ops.txt").write_text(header + table + "\n")
        self.written = out
        log.info("Profile of %d training steps: %s", steps, out / "ops.txt")
