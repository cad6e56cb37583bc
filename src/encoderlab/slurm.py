"""SLURM preemption -> requeue -> resume into the same MLflow run.

A train run started inside a SLURM job is tagged with the job (`encoderlab.slurm_job`). With
`sbatch --requeue --signal=USR1@90`, SIGUSR1 saves last.ckpt at the next batch boundary and `scontrol
requeue <job>` puts the job back in the queue (LastCheckpoint, where Lightning's SLURMEnvironment has
auto_requeue on, its default); SLURM then ends the job with SIGTERM (run KILLED, exit 143). The requeued
job runs the same batch script with the same job id and SLURM_RESTART_COUNT >= 1: `encoderlab train`
finds the run tagged with this job and continues it from its last.ckpt into the same MLflow run
(encoderlab.resume.requeued_slurm_run), instead of starting a new one.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

JOB_TAG = "encoderlab.slurm_job"  # what a requeued job looks its run up by (SlurmJob.key)
JOB_ID_TAG, ARRAY_TASK_TAG = "encoderlab.slurm_job_id", "encoderlab.slurm_array_task_id"
RESTART_TAG = "encoderlab.slurm_restart_count"


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job this process runs in, from SLURM's environment variables."""

    job_id: str
    array_job_id: str | None = None
    array_task_id: str | None = None
    restart_count: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlurmJob | None:
        env = os.environ if env is None else env
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return None
        restarts = env.get("SLURM_RESTART_COUNT", "0")
        return cls(
            job_id=job_id,
            array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
            array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
            restart_count=int(restarts) if restarts.isdigit() else 0,
        )

    @property
    def requeue_id(self) -> str:
        """The id `scontrol requeue` takes: <array job>_<task> for an array task, else the job id."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    @property
    def requeued(self) -> bool:
        return self.restart_count >= 1

    def key(self, grid_job: int | None = None) -> str:
        """The job (and, for a `-m` grid run inside one job, the grid point) a run belongs to."""
        return self.requeue_id + (f"#{grid_job}" if grid_job is not None else "")

    def tags(self, grid_job: int | None = None) -> dict[str, str]:
        tags = {JOB_TAG: self.key(grid_job), JOB_ID_TAG: self.job_id, RESTART_TAG: str(self.restart_count)}
        if self.array_task_id:
            tags[ARRAY_TASK_TAG] = self.array_task_id
        return tags


def grid_job_num() -> int | None:
    """The Hydra job number in a `train -m` grid, else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return int(hc.job.num) if hc.mode is not None and hc.mode.name == "MULTIRUN" else None


def requeue(job: SlurmJob, checkpoint: str) -> bool:
    """`scontrol requeue <job>`; a missing or failing scontrol is logged (what failed, that training goes
    on, how to continue later), never raised. True when SLURM accepted the requeue."""
    cmd = ["scontrol", "requeue", job.requeue_id]
    later = (
        f"Training goes on; {checkpoint} holds the state saved for the requeue, so `encoderlab resume "
        "<run id>` can continue the run later."
    )
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        log.error(
            "SLURM job %s not requeued: `scontrol` is not on PATH on this node. %s", job.requeue_id, later
        )
        return False
    except (OSError, subprocess.TimeoutExpired) as ex:
        log.error("SLURM job %s not requeued: `%s` failed (%s). %s", job.requeue_id, " ".join(cmd), ex, later)
        return False
    if res.returncode != 0:
        detail = " ".join((res.stderr or res.stdout or "").split())[:300] or "no output"
        log.error(
            "SLURM job %s not requeued: `%s` exited with %d (%s; a job is requeued only when it was "
            "submitted with --requeue or the cluster's JobRequeue=1). %s",
            job.requeue_id,
            " ".join(cmd),
            res.returncode,
            detail,
            later,
        )
        return False
    log.info(
        "Requeued SLURM job %s: SLURM ends this job now and starts it again; `encoderlab train` continues "
        "this run there from %s",
        job.requeue_id,
        checkpoint,
    )
    return True


def requeue_signal(trainer) -> int | None:
    """The signal Lightning's SLURM auto-requeue listens to (SIGUSR1 unless set), when this fit runs under
    SLURMEnvironment with auto_requeue on; else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    connector = getattr(trainer, "_accelerator_connector", None)
    environment = getattr(connector, "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return int(environment.requeue_signal) if environment.requeue_signal is not None else None
    return None
