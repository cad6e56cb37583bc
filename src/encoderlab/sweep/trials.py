"""Running trials: the objective (compose, train with a pruning hook, N seeds), the trial loop that keeps
n_trials exact across workers and redoes dead trials, local worker processes, trial tags on MLflow runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from encoderlab.compose import compose
from encoderlab.errors import EncoderlabError
from encoderlab.sweep.space import Space, as_override, suggest
from encoderlab.sweep.study import WORKER_ENV, counted, no_experimental_warnings

log = logging.getLogger("encoderlab.sweep")

MAX_CONSECUTIVE_FAILURES = 3


class SurplusTrial(Exception):
    """A worker asked for a trial after the others had taken the last of n_trials."""


class PruningCallback:
    """Reports the monitored validation metric to Optuna at every validation; raises TrialPruned."""

    def __new__(cls, trial, metric: str):
        import lightning as L

        class _Pruning(L.Callback):
            def __init__(self) -> None:
                self.validations = 0

            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or metric not in trainer.callback_metrics:
                    return
                import optuna

                value = float(trainer.callback_metrics[metric])
                trial.report(value, self.validations)
                self.validations += 1
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at validation {self.validations}: {metric}={value:.4f}")

        return _Pruning()


def run_workers(n: int, argv: list[str]) -> None:
    """N local processes running the same command on the same storage; trial counts stay exact."""
    rest, skip = [], False
    for arg in argv:  # the same command without --workers N / --retest K,N (the parent retests)
        if skip:
            skip = False
        elif arg in ("--workers", "--retest"):
            skip = True
        elif not arg.startswith(("--workers=", "--retest=")):
            rest.append(arg)
    cmd = [sys.executable, "-m", "encoderlab", "sweep", "--worker", *rest]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // n))}
    procs = [subprocess.Popen(cmd, env={**env, WORKER_ENV: str(i)}) for i in range(n)]
    log.info("Started %d workers", n)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise EncoderlabError(f"sweep workers exited with codes {codes}")


def run_trials(study, space: Space, overrides: list[str], parent_id: str | None, tracking_uri: str) -> None:
    """Run trials until n_trials are complete or pruned (counting every worker's)."""
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from encoderlab.train import train

    HydraConfig.instance().cfg = None  # trials are not Hydra jobs: no stale job config from an earlier app
    target = space.study["n_trials"]
    failures = 0
    while True:
        with no_experimental_warnings():
            fail_stale_trials(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            mark_trial_runs(
                tracking_uri, parent_id, study.study_name, t.number, "FAILED", "FAIL", skip_marked=True
            )
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if counted(study) + running >= target:
            if running == 0 or counted(study) >= target:
                break
            time.sleep(5)  # others' trials may still fail and need redoing
            continue

        def objective(trial: optuna.Trial) -> float:
            if counted(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) > target:
                trial.set_user_attr("surplus", True)  # another worker took the last slot: FAIL, not counted
                raise SurplusTrial("the study already has its n_trials")
            values = suggest(trial, space.params)
            trial_overrides = [*overrides, *(as_override(k, v) for k, v in values.items())]
            out_dir = Path("outputs") / "sweeps" / study.study_name / f"trial_{trial.number:04d}"
            cfg, choices = compose(trial_overrides, out_dir)
            trial.set_user_attr("overrides", trial_overrides)
            trial.set_user_attr("choices", choices)
            tags = {"encoderlab.study": study.study_name, "encoderlab.trial": str(trial.number)}
            # seeds_per_trial > 1: the config's seed, then seed + 1, ...; each in its own run directory and
            # MLflow run. The pruner judges the trial on the first seed's curve (one value per validation);
            # a trial it keeps trains the other seeds, and its value is the mean of their best values.
            n_seeds = space.study["seeds_per_trial"]
            seeds = [cfg.seed + j for j in range(n_seeds)]
            bests: dict[int, float] = {}
            for j, seed in enumerate(seeds):
                run_dir = out_dir if n_seeds == 1 else out_dir / f"seed{seed}"
                if n_seeds > 1:
                    cfg, _ = compose([*trial_overrides, f"seed={seed}"], run_dir)
                try:
                    best = train(
                        cfg,
                        callbacks=[PruningCallback(trial, space.study["metric"])] if j == 0 else [],
                        parent_run_id=parent_id,
                        tags={**tags, "encoderlab.trial_seed": str(seed)},
                    )
                except optuna.TrialPruned:
                    raise
                except KeyboardInterrupt:
                    mark_trial_runs(
                        tracking_uri, parent_id, study.study_name, trial.number, "FAILED", "interrupted"
                    )
                    raise
                if best is None:
                    raise EncoderlabError(
                        f"trial {trial.number}, seed {seed}: no validation value of {space.study['metric']}"
                    )
                bests[seed] = best
                if j == 0:
                    trial.set_user_attr("run_dir", str(run_dir.resolve()))
            value = sum(bests.values()) / len(bests)
            if n_seeds > 1:
                trial.set_user_attr("seed_values", {str(k): v for k, v in bests.items()})
            mark_trial_runs(
                tracking_uri, parent_id, study.study_name, trial.number, None, "COMPLETE", value=value
            )
            return value

        study.optimize(objective, n_trials=1, catch=(Exception,))
        last = study.get_trials(deepcopy=False)[-1]
        if last.state == TrialState.FAIL and not last.user_attrs.get("surplus"):
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise EncoderlabError(
                    f"{failures} trials in a row failed (the last: trial {last.number}); stopping the sweep. "
                    "See the trials' logs and their FAILED MLflow runs for the reason."
                )
        else:
            failures = 0


def mark_trial_runs(
    tracking_uri: str,
    parent_id: str | None,
    study_name: str,
    number: int,
    status: str | None,
    state: str,
    skip_marked: bool = False,
    value: float | None = None,
) -> None:
    """Tag the trial's runs with its Optuna state and end those not FINISHED with `status`; `value`, the
    trial's objective, is logged on each as `trial/objective`: with seeds_per_trial > 1 no single run
    holds it. skip_marked: skip the runs that ended and already carry a state (a FAIL trial is
    re-checked on every pass; its finished seeds get tagged once)."""
    if parent_id is None:
        return
    from encoderlab.tracking import tracking_client

    client = tracking_client(tracking_uri)
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`encoderlab.trial` = '{number}'",
    )
    for r in runs:
        if skip_marked and r.info.status != "RUNNING" and "encoderlab.trial_state" in r.data.tags:
            continue
        client.set_tag(r.info.run_id, "encoderlab.trial_state", state)
        if value is not None:
            client.log_metric(r.info.run_id, "trial/objective", value)
        if status is not None and r.info.status not in ("FINISHED", status):  # a finished seed stays so
            client.set_terminated(r.info.run_id, status)
