"""SIGTERM / SIGINT during a run: the run ends KILLED with the signal named and the process exits
128 + signum (143 / 130), so `encoderlab train && next` does not take a preempted run as a success."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Killed(BaseException):
    """A signal ended the run. A BaseException, not a KeyboardInterrupt: Lightning's fit turns a
    KeyboardInterrupt into sys.exit(1), and `except Exception` (Hydra's job runner, optuna's trial
    loop) must let it through. TrackedRun fills in run_id and run_dir for the CLI's message."""

    def __init__(self, signum: int) -> None:
        super().__init__(reason(signum))
        self.signum = int(signum)
        self.run_id: str | None = None
        self.run_dir: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal terminated

    def message(self) -> str:
        """The one stderr line: what happened, to which run, where its files are."""
        where = f"MLflow run {self.run_id} marked KILLED" if self.run_id else "the run stopped"
        where += f", run directory {self.run_dir}" if self.run_dir else ""
        return f"encoderlab: {self}; {where} (exit code {self.exit_code})"


def reason(signum: int) -> str:
    """The `encoderlab.error` tag of a run a signal ended."""
    if signum == signal.SIGINT:
        return "interrupted by SIGINT (Ctrl-C)"
    return f"killed by {signal.Signals(signum).name}"


def signal_of(exc: BaseException | None) -> int | None:
    """The signal that ended a run with `exc`: a Killed, or Lightning's SIGTERMException (raised after
    the batch when Lightning's own SIGTERM handler ran, see `install`); else None."""
    if isinstance(exc, Killed):
        return exc.signum
    if type(exc).__name__ == "SIGTERMException":  # lightning.pytorch.utilities.exceptions, not imported
        return int(signal.SIGTERM)
    return None


def _lightning_owns_sigterm() -> bool:
    """On SLURM Lightning's handlers requeue the job on SIGUSR1 and let SIGTERM end fit after the batch;
    an exception raised from inside them (e.g. while the requeue checkpoint is written) would break that."""
    try:
        from lightning.fabric.plugins.environments import SLURMEnvironment
    except ImportError:
        return False
    return SLURMEnvironment.detect()


class SignalHandlers:
    """Raise Killed(signum) on SIGTERM and SIGINT while a run is open (SIGINT only on SLURM, see
    `_lightning_owns_sigterm`); `restore()` puts the previous handlers back (in-process callers of
    cli.main run many commands). A second signal while the run is being closed is ignored, so the
    MLflow status gets written. A no-op outside the main thread (Python allows handlers only there)."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.fired = False

    def install(self) -> SignalHandlers:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in HANDLED:
            if signum == signal.SIGTERM and _lightning_owns_sigterm():
                continue
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:
            return
        self.fired = True
        raise Killed(signum)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}
