"""`encoderlab train`: compose conf/train.yaml with the overrides (a Hydra app, `-m` for grids) and train."""

from __future__ import annotations

import logging

from encoderlab.compose import hydra_command


def task(cfg) -> float | None:
    """Hydra task: check allowed values first, then import the heavy training stack. Inside a requeued
    SLURM job, continue the run this job started before (encoderlab.slurm) instead of a new one."""
    from encoderlab.validate import validate_config

    validate_config(cfg)
    from encoderlab.tracking_journal import preflight

    preflight(cfg)  # an unreachable tracking server fails here, before the heavy imports
    from encoderlab.slurm import SlurmJob, grid_job_num

    job = SlurmJob.from_env()
    target = None
    if job is not None and job.requeued:
        from encoderlab.resume import requeued_slurm_run

        target = requeued_slurm_run(cfg, job)
    if target is not None:
        from encoderlab.commands.resume import _log_to
        from encoderlab.resume import resume

        handlers = _log_to(target.run_dir / "train.log")  # the run's own log goes on
        try:
            return resume(target)
        finally:
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
    from encoderlab.train import train

    return train(cfg, tags=job.tags(grid_job_num()) if job is not None else None)


def main(argv: list[str]) -> int:
    return hydra_command(argv, "train", task)
