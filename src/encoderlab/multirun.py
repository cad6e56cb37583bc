"""Hydra callback: one MLflow parent run per `encoderlab train -m` sweep, every job a child run under it.

The parent is created when the multirun starts (tagged with the sweep's overrides and its directory) and its
id goes to the jobs through the ENCODERLAB_PARENT_RUN_ID environment variable, which the basic launcher's
in-process jobs and the joblib launcher's worker processes both see; jobs that the submitit launcher runs
elsewhere (`hydra/launcher=slurm`, `submitit_local`) get it from this callback, pickled with the job, in
case the batch job's environment is not the submitting shell's. When the sweep ends the parent gets
the children's count per status and is FINISHED, or FAILED when any child failed.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
_OPEN: MLflowParentRun | None = None  # the sweep whose parent run is still open (for close_open_parent)


def close_open_parent(exc: BaseException | None = None) -> None:
    """End a parent run left open because a job failed or a signal stopped the sweep (`exc`): Hydra
    then raises before on_multirun_end."""
    if _OPEN is not None:
        _OPEN.finish(sweep_failed=True, exc=exc)


class MLflowParentRun(Callback):
    def __init__(self) -> None:
        self.parent = None
        self._previous_env: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the joblib and submitit launchers pickle Hydra's callbacks into their workers: the parent run (its
        # client and heartbeat thread) stays with the process that owns it; jobs get its id
        return {**self.__dict__, "parent": None, "parent_run_id": self.parent.run_id if self.parent else None}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A job in another process (submitit: maybe another machine): the grid parent run it belongs to."""
        run_id = self.__dict__.get("parent_run_id")
        if run_id:
            from encoderlab.tracking import PARENT_RUN_ENV

            os.environ[PARENT_RUN_ENV] = run_id

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.backend != "mlflow":
            return
        from encoderlab.tracking import PARENT_RUN_ENV, ParentRun

        overrides = list(config.hydra.overrides.task)
        swept = [o for o in overrides if "," in o.split("=", 1)[-1] or "(" in o.split("=", 1)[-1]]
        name = f"{config.experiment_name}-sweep-" + ("-".join(o.split("=")[0] for o in swept) or "grid")
        tags = {
            "mlflow.source.name": "encoderlab train -m",
            "encoderlab.command": shlex.join(["encoderlab", "train", *sys.argv[1:]]),
            "encoderlab.sweep": "grid",
            "encoderlab.sweep_overrides": " ".join(overrides),
            "encoderlab.sweep_dir": str(Path(config.hydra.sweep.dir).resolve()),
            "encoderlab.launcher": str(config.hydra.launcher.get("_target_", "")),
        }
        self.parent = ParentRun.open(config.logger, config.experiment_name, name, tags)
        self.parent.client.log_param(self.parent.run_id, "sweep_overrides", " ".join(overrides)[:6000])
        self._previous_env = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = self.parent.run_id
        global _OPEN
        _OPEN = self
        log.info("MLflow parent run %s for the sweep (%s)", self.parent.run_id, " ".join(overrides))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self, sweep_failed: bool = False, exc: BaseException | None = None) -> None:
        """Children's count per status on the parent; FAILED when a job failed (with or without a run),
        KILLED with the signal named when a signal stopped the sweep."""
        global _OPEN
        _OPEN = None
        if self.parent is None:
            return
        from encoderlab.signals import reason, signal_of
        from encoderlab.tracking import PARENT_RUN_ENV

        signum = signal_of(exc)
        if signum is not None:
            counts = self.parent.finish(status="KILLED", error=reason(signum))
        else:
            error = "a job of the sweep failed (see its log)" if sweep_failed else None
            counts = self.parent.finish(error=error)
        if self._previous_env is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = self._previous_env
        log.info("Sweep parent run %s: %d children %s", self.parent.run_id, sum(counts.values()), counts)
        self.parent = None
