"""Hydra callback: one MLflow parent run per `encoderlab train -m` sweep, every job a child run under it.

The parent is created when the multirun starts (tagged with the sweep's overrides and its directory) and its
id goes to the jobs through the ENCODERLAB_PARENT_RUN_ID environment variable, which the basic launcher's
in-process jobs and the joblib launcher's worker processes both see. When the sweep ends the parent gets
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


def close_open_parent() -> None:
    """End a parent run left open because a job failed: Hydra then raises before on_multirun_end."""
    if _OPEN is not None:
        _OPEN.finish(sweep_failed=True)


class MLflowParentRun(Callback):
    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._previous_env: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.backend != "mlflow":
            return
        from mlflow.tracking import MlflowClient

        import encoderlab
        from encoderlab.tracking import PARENT_RUN_ENV, default_tracking_uri, git_state, open_experiment

        uri = config.logger.tracking_uri or default_tracking_uri()
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(uri)
        self.experiment_id = open_experiment(
            self.client, config.experiment_name, config.logger.artifact_location, uri
        )
        overrides = list(config.hydra.overrides.task)
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        git = git_state()
        tags = {
            "mlflow.source.name": "encoderlab train -m",
            "encoderlab.version": encoderlab.__version__,
            "encoderlab.command": shlex.join(["encoderlab", "train", *sys.argv[1:]]),
            "encoderlab.sweep": "grid",
            "encoderlab.sweep_overrides": " ".join(overrides),
            "encoderlab.sweep_dir": sweep_dir,
            "encoderlab.launcher": str(config.hydra.launcher.get("_target_", "")),
        }
        if git["commit"]:
            tags["mlflow.source.git.commit"] = git["commit"]
        swept = [o for o in overrides if "," in o.split("=", 1)[-1] or "(" in o.split("=", 1)[-1]]
        name = f"{config.experiment_name}-sweep-" + ("-".join(o.split("=")[0] for o in swept) or "grid")
        run = self.client.create_run(self.experiment_id, run_name=name[:200], tags=tags)
        self.run_id = run.info.run_id
        self.client.log_param(self.run_id, "sweep_overrides", " ".join(overrides)[:6000])
        self._previous_env = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = self.run_id
        global _OPEN
        _OPEN = self
        log.info("MLflow parent run %s for the sweep (%s)", self.run_id, " ".join(overrides))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self, sweep_failed: bool = False) -> None:
        """Children's count per status on the parent; FAILED when a job failed (with or without a run)."""
        global _OPEN
        _OPEN = None
        if self.run_id is None:
            return
        from encoderlab.tracking import PARENT_RUN_ENV

        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
            max_results=10000,
        )
        counts: dict[str, int] = {}
        for child in children:
            counts[child.info.status] = counts.get(child.info.status, 0) + 1
        for status, n in counts.items():
            self.client.log_metric(self.run_id, f"sweep/children_{status.lower()}", n)
        self.client.log_metric(self.run_id, "sweep/children", len(children))
        failed = counts.get("FAILED", 0) + counts.get("KILLED", 0)
        if sweep_failed:
            self.client.set_tag(self.run_id, "encoderlab.error", "a job of the sweep failed (see its log)")
        self.client.set_terminated(self.run_id, "FAILED" if failed or sweep_failed else "FINISHED")
        if self._previous_env is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = self._previous_env
        log.info("Sweep parent run %s: %d children %s", self.run_id, len(children), counts)
        self.run_id = None
