"""Failures that end a run for a reason outside the code: a full disk, memory, the tracking store. Each
becomes one paragraph naming the cause and what to do (printed as `error: ...`, exit 1); the traceback
goes to the run's log file only."""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = (
    "No space left on device",
    "database or disk is full",
    "Disk quota exceeded",
    "os error 28",
)
# torch.save's writer loses the errno: trusted only when the filesystem is in fact (nearly) full
_WRITE_FAILED_TEXT = ("file write failed", "unexpected pos")
_OOM_TEXT = ("out of memory", "DefaultCPUAllocator: can't allocate memory", "not enough memory")


class RunFailed(EncoderlabError):
    """A run ended by a disk-full, out-of-memory or tracking failure, with its one-paragraph message."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _nearly_full(path: Path) -> bool:
    try:
        usage = shutil.disk_usage(_existing(path))
    except OSError:
        return False
    return usage.free < max(100 * 2**20, usage.total // 100)


def _disk_full(exc: BaseException, run_dir: Path | None) -> str | None:
    hit: BaseException | None = None
    for e in causes(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            hit = e
            break
        said = any(t in str(e) for t in _DISK_FULL_TEXT)
        if said or (any(t in str(e) for t in _WRITE_FAILED_TEXT) and run_dir and _nearly_full(run_dir)):
            hit = hit or e
    if hit is None:
        return None
    # a copy's destination (filename2) is where the space ran out
    filename = getattr(hit, "filename2", None) or getattr(hit, "filename", None)
    path = Path(filename) if filename else (run_dir or Path.cwd())
    where = f"the filesystem of {path}"
    try:
        usage = shutil.disk_usage(_existing(path))
        where += f" (now {_size(usage.free)} free of {_size(usage.total)})"
    except OSError:
        pass
    detail = getattr(hit, "strerror", None) if isinstance(hit, OSError) else None
    first = detail or " ".join(str(hit).split())[:200]
    return (
        f"Disk full: no space left on {where} ({type(hit).__name__}: {first}). Free space there, or send "
        "the run's files to a disk with room (the run directory: hydra.run.dir=DIR; MLflow's artifacts: "
        "logger.artifact_location; its store: logger.tracking_uri), then rerun."
    )


def _setting(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None) if cfg is not None else None


def _out_of_memory(exc: BaseException, cfg: Any) -> str | None:
    hit = next(
        (
            e
            for e in causes(exc)
            if isinstance(e, MemoryError)
            or type(e).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError (CUDA, MPS)
            or (isinstance(e, RuntimeError) and any(t in str(e) for t in _OOM_TEXT))
        ),
        None,
    )
    if hit is None:
        return None
    text = " ".join(str(hit).split())
    device = "the GPU" if "CUDA" in text or "MPS" in text or "GPU" in text else "host memory (RAM)"
    first = f"{type(hit).__name__}: {text[:200]}" if text else type(hit).__name__
    lower = []
    for key in (
        "dataset.batch_size",
        "dataset.eval_batch_size",
        "dataset.max_length",
        "batch_size",
        "max_length",
    ):
        value = _setting(cfg, key)
        if value is not None and not any(k.endswith("." + key) for k, _ in lower):
            lower.append((key, value))
    knobs = ", ".join(f"{k} (now {v})" for k, v in lower) or "the batch size or the maximum sequence length"
    return (
        f"Out of memory on {device} ({first}). Lower {knobs}; trainer.accumulate_grad_batches keeps the "
        "effective batch size when the batch shrinks. A smaller model, or trainer.precision=bf16-mixed on "
        "hardware that supports it, also needs less memory."
    )


def _tracking(exc: BaseException, tracking_uri: str | None) -> str | None:
    hit = next(
        (e for e in causes(exc) if any(c.__name__ == "MlflowException" for c in type(e).__mro__)), None
    )
    if hit is None:
        return None
    text = " ".join(str(hit).split())[:300]
    where = f"the MLflow tracking store {tracking_uri}" if tracking_uri else "the MLflow tracking store"
    return (
        f"Tracking error: {where} failed ({type(hit).__name__}: {text}). Check that the tracking server "
        "is up and reachable from here (or that the store's database is readable and writable), or pick "
        "another store with logger.tracking_uri / MLFLOW_TRACKING_URI, then rerun."
    )


def describe_failure(
    exc: BaseException, cfg: Any = None, run_dir: Path | None = None, tracking_uri: str | None = None
) -> str | None:
    """The message for a disk-full, out-of-memory or tracking failure anywhere in `exc`'s chain; None
    for anything else (a bug keeps its traceback)."""
    if isinstance(exc, EncoderlabError) or not isinstance(exc, Exception):
        return None
    return _disk_full(exc, run_dir) or _out_of_memory(exc, cfg) or _tracking(exc, tracking_uri)


def log_files() -> list[Path]:
    """The log files the root logger writes (Hydra's <run dir>/<job name>.log)."""
    return [Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def traceback_to_log_files(exc: BaseException, message: str = "The failure's traceback:") -> list[Path]:
    """Write `exc`'s traceback to the root logger's file handlers only (not the terminal)."""
    record = logging.LogRecord(
        __name__, logging.ERROR, __file__, 0, message, None, (type(exc), exc, exc.__traceback__)
    )
    written = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            before = getattr(handler.handleError, "failures", 0)
            handler.handle(record)
            if getattr(handler.handleError, "failures", 0) == before:  # else its disk is full too
                written.append(Path(handler.baseFilename))
    return written


def quiet_log_file_errors() -> None:
    """A log file that cannot be written (its disk is full) says so once on stderr, instead of a
    traceback per log line (logging's default)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, "_encoderlab_quiet", False):
            handler._encoderlab_quiet = True  # type: ignore[attr-defined]
            handler.handleError = _QuietError(handler)  # type: ignore[method-assign]


class _QuietError:
    def __init__(self, handler: logging.FileHandler) -> None:
        self.handler, self.failures = handler, 0

    def __call__(self, record: logging.LogRecord) -> None:
        self.failures += 1
        if self.failures == 1:
            ex = sys.exc_info()[1]
            print(f"encoderlab: cannot write the log file {self.handler.baseFilename}: {ex}", file=sys.stderr)
