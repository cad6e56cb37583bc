"""One `encoderlab sweep`: open the study and its MLflow parent run, run the trials (here or in worker
processes), then report the best trial and optionally re-test the winners on fresh seeds."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from encoderlab.compose import compose
from encoderlab.errors import ConfigError
from encoderlab.sweep.space import Space, apply_study_args, check_keys, load_space
from encoderlab.sweep.study import counted, open_study, redact, storage_url, study_lock
from encoderlab.sweep.trials import run_trials, run_workers

log = logging.getLogger("encoderlab.sweep")


def parent_run(cfg, space: Space, url: str) -> Any:
    """The study's MLflow ParentRun (None without MLflow): found by its tags when the study resumes or
    another worker created it, created otherwise."""
    if cfg.logger.backend != "mlflow":
        return None
    from encoderlab.tracking import ParentRun, default_tracking_uri, tracking_client

    study_name = space.study["study_name"]
    find_by = {
        "encoderlab.sweep": "optuna",
        "encoderlab.study": study_name,
        "encoderlab.study_storage": redact(url),
    }
    tags = {"encoderlab.sweep_space": str(space.path), "mlflow.source.name": "encoderlab sweep"}
    # the store opened (mlflow imported, tables created) before the lock: workers wait on it less
    tracking_client(cfg.logger.tracking_uri or default_tracking_uri())
    # workers started at the same instant on several machines: one creates the parent, the others find it
    with study_lock(url, study_name):
        parent = ParentRun.open(cfg.logger, cfg.experiment_name, f"{study_name}-study", tags, find_by)
        client = parent.client
        if "space" not in client.get_run(parent.run_id).data.params:  # a new parent run
            client.log_param(parent.run_id, "space", json.dumps(space.params)[:6000])
            for k, v in space.study.items():
                if k != "storage":
                    client.log_param(parent.run_id, f"study.{k}", str(v))
    return parent


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (in-process runners swap the stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_to_stderr() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def run_sweep(
    space_name: str,
    study_args: dict[str, str],
    train_overrides: list[str],
    workers: int = 1,
    worker: bool = False,
    retest_spec: str | None = None,
    argv: list[str] | None = None,
) -> int:
    """The whole sweep; `argv` is the command line that worker processes rerun."""
    from encoderlab.errors import format_config_error

    space = load_space(space_name)
    apply_study_args(space, study_args)
    overrides = [
        "analysis=none",
        "probes=none",
        "trainer.enable_progress_bar=false",
        *space.base,
        *train_overrides,
    ]
    try:
        base_cfg, _ = compose(overrides)
    except Exception as ex:
        message = format_config_error(ex)
        if message is None:
            raise
        raise ConfigError(message) from ex
    check_keys(space, base_cfg)
    if base_cfg.callbacks.checkpoint.monitor != space.study["metric"]:
        overrides.append(f"callbacks.checkpoint.monitor={space.study['metric']}")
        overrides.append(
            f"callbacks.checkpoint.mode={'max' if space.study['direction'] == 'maximize' else 'min'}"
        )
    log_to_stderr()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(space)
    url = storage_url(space.study)
    parent = parent_run(base_cfg, space, url)
    try:
        return _run_study(study, space, overrides, base_cfg, parent, url, workers, worker, retest_spec, argv)
    except BaseException as ex:
        from encoderlab.signals import reason, signal_of

        signum = signal_of(ex)
        if signum is not None and parent is not None and parent.heartbeat is not None:
            # this process owns the parent run: KILLED with the signal named (rerunning resumes it)
            parent.finish(status="KILLED", error=reason(signum))
        raise
    finally:
        if parent is not None:
            parent.stop_heartbeat()


def _run_study(study, space, overrides, base_cfg, parent, url, workers, worker, retest_spec, argv) -> int:
    from encoderlab.tracking import default_tracking_uri

    client, parent_id = (parent.client, parent.run_id) if parent is not None else (None, None)

    tracking_uri = base_cfg.logger.tracking_uri or default_tracking_uri()
    log.info(
        "Study '%s' in %s: %d/%d trials complete or pruned",
        study.study_name,
        redact(url),
        counted(study),
        space.study["n_trials"],
    )

    if workers > 1 and not worker:
        run_workers(workers, argv or [])
    else:
        run_trials(study, space, overrides, parent_id, tracking_uri, parent.adopt if parent else None)
    if worker:
        return 0
    best = finish_study(study, space, overrides, client, parent_id)
    if retest_spec and best is not None:
        from encoderlab.sweep.retest import retest

        k, n = (int(x) for x in retest_spec.split(","))
        retest(study, space, overrides, client, parent_id, k, n)
    return 0


def finish_study(study, space: Space, overrides: list[str], client, parent_id: str | None):
    """Best params, best.yaml, importances and the four plots, logged on the parent run."""
    from optuna.trial import TrialState

    from encoderlab.sweep.report import write_study_report

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning("No complete trial yet: nothing to report.")
        return None
    out_dir = Path("outputs") / "sweeps" / study.study_name
    files = write_study_report(study, space, out_dir)
    best = study.best_trial
    if client is not None:
        client.log_artifacts(parent_id, str(out_dir / "report"), "study")
        client.log_metric(parent_id, f"best/{space.study['metric']}", best.value)
        client.log_metric(parent_id, "study/complete", len(complete))
        client.log_metric(
            parent_id, "study/pruned", len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        )
        client.log_metric(
            parent_id, "study/failed", len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        )
        for k, v in best.params.items():
            client.set_tag(parent_id, f"best.{k}", str(v))
        client.set_terminated(parent_id, "FINISHED")
    print(f"Best trial {best.number}: {space.study['metric']}={best.value:.4f} with {best.params}")
    print(f"Rerun it: encoderlab train --config-dir {files['best_yaml'].parent} --config-name best")
    return best
