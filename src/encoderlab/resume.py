"""`encoderlab resume`: continue a train run that was killed or crashed from its checkpoints/last.ckpt,
into the same MLflow run and run directory, with the config the run was trained with."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from encoderlab.errors import EncoderlabError

if TYPE_CHECKING:
    from encoderlab.slurm import SlurmJob

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # in a run directory (callbacks.last)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Target:
    """What to resume: the run directory, its config, its MLflow run (None with logger.backend=none)."""

    run_dir: Path
    cfg: DictConfig
    run_id: str | None
    tracking_uri: str | None

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / LAST_CHECKPOINT


def load_run_config(run_dir: Path) -> DictConfig:
    """The config a run trained with (<run dir>/.hydra/config.yaml), resolved with the run directory as
    its output_dir."""
    from encoderlab.config import register_configs

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise EncoderlabError(
            f"{run_dir} has no .hydra/config.yaml: not the run directory of an `encoderlab train` run."
        )
    register_configs()  # the ${bundled:...} resolver
    cfg = OmegaConf.load(path)
    if "model" not in cfg or "trainer" not in cfg:
        raise EncoderlabError(f"{path} is not the config of an `encoderlab train` run (no model/trainer).")
    cfg.output_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    return cfg


def locate(target: str, tracking_uri: str | None = None) -> Target:
    """A run directory or an MLflow run id -> the run to resume; errors say what is missing."""
    from encoderlab.tracking import default_tracking_uri, logged_run, tracking_client

    path = Path(target).expanduser()
    if path.is_dir():
        run_dir = path.resolve()
        cfg = load_run_config(run_dir)
        if cfg.logger.backend != "mlflow":
            return Target(run_dir, cfg, None, None)
        uri = tracking_uri or cfg.logger.tracking_uri or default_tracking_uri()
        client = tracking_client(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        quoted = str(run_dir).replace("'", "\\'")
        runs = client.search_runs(exps, f"tags.`encoderlab.run_dir` = '{quoted}'") if exps else []
        if not runs:
            raise EncoderlabError(
                f"No MLflow run in the tracking store {uri} has the run directory {run_dir}. Pass the store "
                "with --tracking-uri (the one the run logged to), or the run id."
            )
        run = runs[0]
    else:
        if not _RUN_ID.match(target):
            raise EncoderlabError(
                f"'{target}' is neither a run directory nor an MLflow run id (32 hex characters)."
            )
        client, run, uri = logged_run(target, tracking_uri)
        where = run.data.tags.get("encoderlab.run_dir")
        if not where:
            raise EncoderlabError(
                f"MLflow run {target} has no encoderlab.run_dir tag: not an encoderlab train run."
            )
        run_dir = Path(where)
        if not run_dir.is_dir():
            raise EncoderlabError(
                f"The run directory of MLflow run {target}, {run_dir}, does not exist (moved, deleted, or on "
                "another machine): resume needs its checkpoints/last.ckpt and .hydra/config.yaml."
            )
        cfg = load_run_config(run_dir)
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        raise EncoderlabError(
            f"MLflow run {run_id} is FINISHED: there is nothing to resume (its metrics and model are final). "
            f"To train the same config again: encoderlab reproduce {run_id}."
        )
    if run.info.status == "RUNNING":  # opening the store marked it FAILED if its process provably died
        from encoderlab.tracking import HOST_TAG, PID_TAG

        tags = run.data.tags
        if tags.get(HOST_TAG):
            raise EncoderlabError(
                f"MLflow run {run_id} is still RUNNING (host {tags[HOST_TAG]}, pid {tags.get(PID_TAG)}): "
                "its process is alive or, on another host, its heartbeat is recent. Stop it first (SIGTERM "
                "saves last.ckpt), then resume."
            )
        log.warning("MLflow run %s is marked RUNNING; resuming it as a run whose process is gone", run_id)
    return Target(run_dir, cfg, run_id, uri)


def check_resumable(target: Target) -> None:
    """The checkpoint is there and is a full training state."""
    what = f"MLflow run {target.run_id}" if target.run_id else f"The run in {target.run_dir}"
    if not target.checkpoint.is_file():
        raise EncoderlabError(
            f"{what} has no {LAST_CHECKPOINT} in {target.run_dir}: it was started before encoderlab kept "
            "resume checkpoints, or with callbacks.last=null, or it stopped before its first validation. "
            "There is no training state to continue from; train it again (encoderlab reproduce <run-id>)."
        )
    if target.cfg.callbacks.get("last") is None:
        raise EncoderlabError(
            f"{what} was trained with callbacks.last=null: resume needs callbacks.last in its config."
        )


def resume(target: str | Target, tracking_uri: str | None = None) -> float | None:
    """Continue the run `target` (run directory, MLflow run id, or what `locate` found) from its last.ckpt:
    fit to the end, then test, report and export as `encoderlab train` does. Returns the best value of the
    monitored metric."""
    found = target if isinstance(target, Target) else locate(target, tracking_uri)
    check_resumable(found)
    from encoderlab.validate import validate_config

    validate_config(found.cfg)
    if found.tracking_uri:  # the store the run was found in, whatever the config or environment say
        found.cfg.logger.tracking_uri = found.tracking_uri
    log.info(
        "Resuming %s from %s",
        f"MLflow run {found.run_id}" if found.run_id else found.run_dir,
        found.checkpoint,
    )
    from encoderlab.train import train

    return train(found.cfg, resume=(found.run_id, found.checkpoint))


def requeued_slurm_run(cfg: DictConfig, job: SlurmJob) -> Target | None:
    """In a requeued job: the run this job (grid point) started before, as an encoderlab.resume.Target to
    continue, or None to start a new run (no such run, nothing to continue from; said in the log). A
    run still marked RUNNING is this job's previous incarnation, which SLURM ended before restarting the
    job: it is marked FAILED first, so resume takes it."""
    from encoderlab.slurm import JOB_TAG, grid_job_num
    from encoderlab.tracking import STALE_AFTER_S, default_tracking_uri, tracking_client

    key = job.key(grid_job_num())
    if cfg.logger.backend != "mlflow":
        log.warning(
            "Requeued SLURM job %s: logger.backend=none keeps no record of its run; a new run starts", key
        )
        return None
    uri = cfg.logger.tracking_uri or default_tracking_uri()
    client = tracking_client(uri, cfg.logger.get("stale_after_s", STALE_AFTER_S))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            experiments, f"tags.`{JOB_TAG}` = '{key}'", order_by=["attributes.start_time DESC"]
        )
        if experiments
        else []
    )
    if not runs:
        log.info(
            "Requeued SLURM job %s (restart %d): no run of it in %s; a new run starts",
            key,
            job.restart_count,
            uri,
        )
        return None
    run = runs[0]
    run_id = run.info.run_id
    if run.info.status == "FINISHED":
        log.warning(
            "Requeued SLURM job %s: its MLflow run %s is FINISHED already; a new run starts", key, run_id
        )
        return None
    if run.info.status == "RUNNING":
        reason = f"process ended: SLURM job {job.requeue_id} was requeued (restart {job.restart_count})"
        client.set_tag(run_id, "encoderlab.error", reason)
        client.set_terminated(run_id, "FAILED")
    target = locate(run_id, uri)
    if not target.checkpoint.is_file():
        log.warning(
            "Requeued SLURM job %s: its MLflow run %s has no %s (stopped before its first validation); a new "
            "run starts",
            key,
            run_id,
            LAST_CHECKPOINT,
        )
        return None
    log.info(
        "Requeued SLURM job %s (restart %d): continuing MLflow run %s from %s",
        key,
        job.restart_count,
        run_id,
        target.checkpoint,
    )
    return target
