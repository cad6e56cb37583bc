"""Running trials: the objective (compose, train with a pruning hook, N seeds), the trial loop that keeps
n_trials exact across workers and redoes dead trials, local worker processes, trial tags on MLflow runs."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from encoderlab.compose import compose
from encoderlab.errors import EncoderlabError
from encoderlab.sweep.space import Space, as_override, suggest
from encoderlab.sweep.study import counted, no_experimental_warnings
from encoderlab.tracking import drop_tag

log = logging.getLogger("encoderlab.sweep")

MAX_CONSECUTIVE_FAILURES = 3


class SurplusTrial(Exception):
    """A worker asked for a trial after the others had taken the last of n_trials."""


class PruningCallback:
    """Reports the monitored validation metric to Optuna at every validation; raises TrialPruned. Its
    count of validations goes into last.ckpt, so a resumed trial reports the next validation at the next
    step; `start` is that count when the checkpoint holds none."""

    STATE_KEY = "encoderlab.PruningCallback"

    def __new__(cls, trial, metric: str, start: int = 0):
        import lightning as L

        class _Pruning(L.Callback):
            def __init__(self) -> None:
                self.validations = start

            @property
            def state_key(self) -> str:
                return PruningCallback.STATE_KEY

            def state_dict(self) -> dict[str, int]:
                return {"validations": self.validations}

            def load_state_dict(self, state_dict: dict[str, int]) -> None:
                self.validations = int(state_dict.get("validations", self.validations))

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
    procs = [subprocess.Popen(cmd, env=env) for _ in range(n)]
    log.info("Started %d workers", n)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise EncoderlabError(f"sweep workers exited with codes {codes}")


def run_trials(
    study,
    space: Space,
    overrides: list[str],
    parent_id: str | None,
    tracking_uri: str,
    adopt_parent: Callable[[], bool] | None = None,
) -> None:
    """Run trials until n_trials are complete or pruned (counting every worker's). `adopt_parent` is
    called before each trial: it takes the study's MLflow parent run over when its owner died.

    A trial whose process died (kill -9, a signal, a crash of the machine: Optuna's heartbeat fails it,
    and the objective recorded no error for it) is retried once, when study.seeds_per_trial is 1 and its
    run directory holds a checkpoints/last.ckpt: a new trial with the same params continues its training
    from there, into the same MLflow run, with the dead trial's reported values copied in so the pruner
    sees the whole curve. The dead trial stays FAIL and is not counted; the retry is. A retry that fails,
    or dies itself without a checkpoint, leaves the slot to a trial with fresh params. Multi-seed trials
    are redone from scratch with fresh params (their seeds' runs are separate trainings)."""
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from encoderlab.train import train

    HydraConfig.instance().cfg = None  # trials are not Hydra jobs: no stale job config from an earlier app
    target = space.study["n_trials"]
    metric = space.study["metric"]
    failures = 0
    ran: list[int] = []  # the number of the trial this worker just ran
    while True:
        with no_experimental_warnings():
            fail_stale_trials(study)
        if adopt_parent is not None:
            adopt_parent()
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            try:
                mark_trial_runs(
                    tracking_uri, parent_id, study.study_name, t.number, "FAILED", "FAIL", skip_marked=True
                )
            except Exception as ex:  # another worker tags the same run at the same instant: next pass
                log.debug("runs of FAIL trial %d not marked yet: %s", t.number, ex)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if counted(study) + running >= target:
            if running == 0 or counted(study) >= target:
                break
            time.sleep(5)  # others' trials may still fail and need redoing
            continue
        if space.study["seeds_per_trial"] == 1:
            enqueue_retries(study, target)

        def run_trial(trial: optuna.Trial) -> float:
            if counted(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) > target:
                trial.set_user_attr("surplus", True)  # another worker took the last slot: FAIL, not counted
                raise SurplusTrial("the study already has its n_trials")
            trial.set_user_attr("worker", worker_identity())  # which process (on which host) ran it
            n_seeds = space.study["seeds_per_trial"]
            retry = resume_plan(study, trial, tracking_uri, parent_id) if n_seeds == 1 else None
            values = suggest(trial, space.params)  # a retry's params are fixed: the dead trial's
            trial_overrides = [*overrides, *(as_override(k, v) for k, v in values.items())]
            if retry and retry.overrides and retry.overrides != trial_overrides:
                # the run continues with the config it was started with (and logged), not this command's
                log.warning(
                    "trial %d resumes dead trial %d with its own overrides, not this command's: %s",
                    trial.number,
                    retry.dead,
                    " ".join(retry.overrides),
                )
                trial_overrides = retry.overrides
            out_dir = retry.run_dir if retry else trial_dir(study.study_name, trial.number)
            cfg, choices = compose(trial_overrides, out_dir)
            trial.set_user_attr("overrides", trial_overrides)
            trial.set_user_attr("choices", choices)
            tags = {"encoderlab.study": study.study_name, "encoderlab.trial": str(trial.number)}
            start = 0
            if retry:
                start = retry.begin(trial, tracking_uri)
                tags["encoderlab.resumed_trial"] = str(retry.dead)
            # seeds_per_trial > 1: the config's seed, then seed + 1, ...; each in its own run directory and
            # MLflow run. The pruner judges the trial on the first seed's curve (one value per validation);
            # a trial it keeps trains the other seeds, and its value is the mean of their best values.
            seeds = [cfg.seed + j for j in range(n_seeds)]
            bests: dict[int, float] = {}
            for j, seed in enumerate(seeds):
                run_dir = out_dir if n_seeds == 1 else out_dir / f"seed{seed}"
                if n_seeds > 1:
                    cfg, _ = compose([*trial_overrides, f"seed={seed}"], run_dir)
                try:
                    best = train(
                        cfg,
                        callbacks=[PruningCallback(trial, metric, start)] if j == 0 else [],
                        parent_run_id=parent_id,
                        tags={**tags, "encoderlab.trial_seed": str(seed)},
                        resume=(retry.run_id, retry.checkpoint) if retry else None,
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
                        f"trial {trial.number}, seed {seed}: no validation value of {metric}"
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

        ran.clear()

        def objective(trial: optuna.Trial) -> float:
            ran.append(trial.number)
            try:
                return run_trial(trial)
            except (optuna.TrialPruned, SurplusTrial):
                raise
            except Exception as ex:  # a trial that failed, as opposed to one whose process died
                with contextlib.suppress(Exception):
                    trial.set_user_attr("error", f"{type(ex).__name__}: {ex}"[:1000])
                raise

        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            # optuna could not record the result: another worker had marked the trial FAIL meanwhile
            if not ran or study.trials[ran[0]].state != TrialState.FAIL:
                raise
            log.warning(
                "trial %d was marked FAIL by another worker while it ran here: its heartbeat was more than "
                "study.grace_period=%s s late (an overloaded machine or a stalled storage connection). Its "
                "result is not counted; the trial is redone. A larger grace_period avoids this.",
                ran[0],
                space.study["grace_period"],
            )
            continue
        # this worker's trial (others' trials may have been created since)
        last = study.trials[ran[0]] if ran else study.get_trials(deepcopy=False)[-1]
        if last.state == TrialState.FAIL and not skipped(last):
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise EncoderlabError(
                    f"{failures} trials in a row failed (the last: trial {last.number}); stopping the sweep. "
                    "See the trials' logs and their FAILED MLflow runs for the reason."
                )
        else:
            failures = 0


def worker_identity() -> str:
    """host:pid of this sweep process."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def trial_dir(study_name: str, number: int) -> Path:
    """A trial's output directory (its run directory with seeds_per_trial=1), relative to the cwd."""
    return Path("outputs") / "sweeps" / study_name / f"trial_{number:04d}"


def skipped(trial) -> bool:
    """A FAIL trial that never trained: surplus to n_trials, or a second retry of the same dead trial."""
    return bool(trial.user_attrs.get("surplus") or "duplicate_of" in trial.user_attrs)


def died(trial) -> bool:
    """A FAIL trial whose process died (kill -9, SIGTERM, a crash of the machine) rather than one whose
    objective raised: the objective records `error` on every exception it lets out."""
    return trial.state.name == "FAIL" and "error" not in trial.user_attrs and not skipped(trial)


def trial_run_dir(study_name: str, trial) -> Path:
    """The run directory of a trial with one seed: a retry trains in the directory of the trial it
    resumes (`resume_dir`); `run_dir` is set only once a trial's training ended."""
    where = trial.user_attrs.get("run_dir") or trial.user_attrs.get("resume_dir")
    return Path(where) if where else trial_dir(study_name, trial.number).resolve()


def enqueue_retries(study, target: int) -> list[int]:
    """Enqueue one retry (same params, user attrs resumes_trial and resume_dir) of each dead trial with a
    last.ckpt that no trial retries yet, while n_trials has free slots; returns the dead trials' numbers.

    Workers on one storage: a dead trial is claimed by the enqueued trial itself, so a worker that sees a
    trial with resumes_trial=M (in any state) enqueues none for M. Two workers may still both enqueue in
    the same instant; then the lower-numbered (first enqueued) retry wins and the other is skipped when it
    runs (FAIL with duplicate_of, not counted; see resume_plan). A retry whose process died is itself a
    dead trial and can be retried from the same run directory."""
    import zipfile

    from optuna.trial import TrialState

    from encoderlab.resume import LAST_CHECKPOINT

    trials = study.get_trials(deepcopy=False)
    claimed = {t.user_attrs["resumes_trial"] for t in trials if "resumes_trial" in t.user_attrs}
    busy = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    free = target - counted(study) - busy
    out = []
    for t in trials:
        if free <= 0:
            break
        if not died(t) or t.number in claimed or not t.params:
            continue
        run_dir = trial_run_dir(study.study_name, t)
        ckpt = run_dir / LAST_CHECKPOINT
        if not (ckpt.is_file() and zipfile.is_zipfile(ckpt)):  # torch checkpoints are zip archives
            continue
        study.enqueue_trial(t.params, user_attrs={"resumes_trial": t.number, "resume_dir": str(run_dir)})
        free -= 1
        out.append(t.number)
    return out


@dataclass
class Retry:
    """A retry of dead trial `dead`: its run directory, checkpoint, MLflow run and reported values."""

    dead: int
    run_dir: Path
    checkpoint: Path
    run_id: str | None
    history: dict[int, float]
    overrides: list[str] | None  # the dead trial's, which its run was started (and logged) with
    validations: int  # validations the checkpoint has seen (the pruning callback's count)
    epoch: int
    step: int

    def begin(self, trial, tracking_uri: str) -> int:
        """Copy the dead trial's values up to the checkpoint into `trial`, move its MLflow run over to
        `trial` (so marking the dead trial leaves it alone); returns the next validation's step."""
        for step, value in sorted(self.history.items()):
            if step < self.validations:
                trial.report(value, step)
        if self.run_id is not None:
            from encoderlab.tracking import tracking_client

            client = tracking_client(tracking_uri)
            client.set_tag(self.run_id, "encoderlab.trial", str(trial.number))
            client.set_tag(self.run_id, "encoderlab.resumed_trial", str(self.dead))
            drop_tag(client, self.run_id, "encoderlab.trial_state")
        log.info(
            "trial %d resumes dead trial %d from %s (epoch %d, step %d)",
            trial.number,
            self.dead,
            self.checkpoint,
            self.epoch,
            self.step,
        )
        return self.validations


def resume_plan(study, trial, tracking_uri: str, parent_id: str | None) -> Retry | None:
    """What a retry trial continues (None for a fresh trial). Raises SurplusTrial for a duplicate retry
    and EncoderlabError when the checkpoint or MLflow run cannot be used (the next trial is fresh)."""
    dead_number = trial.user_attrs.get("resumes_trial")
    if dead_number is None:
        return None
    trials = study.get_trials(deepcopy=False)
    first = min(t.number for t in trials if t.user_attrs.get("resumes_trial") == dead_number)
    if first != trial.number:  # two workers enqueued a retry at once: the first enqueued wins
        trial.set_user_attr("duplicate_of", first)
        raise SurplusTrial(f"trial {first} already retries dead trial {dead_number}")
    import torch

    from encoderlab.resume import LAST_CHECKPOINT

    (dead,) = [t for t in trials if t.number == dead_number]
    run_dir = Path(trial.user_attrs["resume_dir"])
    ckpt = run_dir / LAST_CHECKPOINT
    try:
        state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
    except Exception as ex:
        raise EncoderlabError(
            f"trial {trial.number} cannot resume dead trial {dead_number}: its checkpoint {ckpt} does not "
            f"load ({type(ex).__name__}: {ex}); the sweep goes on with fresh params"
        ) from ex
    pruning = state.get("callbacks", {}).get(PruningCallback.STATE_KEY, {})
    run_id = None
    if parent_id is not None:
        run_id = trial_run_id(tracking_uri, parent_id, dead_number, run_dir)
        if run_id is None:
            raise EncoderlabError(
                f"trial {trial.number} cannot resume dead trial {dead_number}: no MLflow run of it under "
                f"the study's parent run {parent_id}; the sweep goes on with fresh params"
            )
    return Retry(
        dead=dead_number,
        run_dir=run_dir,
        checkpoint=ckpt,
        run_id=run_id,
        history=dict(dead.intermediate_values),
        overrides=dead.user_attrs.get("overrides"),
        validations=int(pruning.get("validations", len(dead.intermediate_values))),
        epoch=int(state.get("epoch", 0)) + 1,
        step=int(state.get("global_step", 0)),
    )


def trial_run_id(tracking_uri: str, parent_id: str, number: int, run_dir: Path) -> str | None:
    """The MLflow run of trial `number` that trained in `run_dir`."""
    from encoderlab.tracking import tracking_client

    client = tracking_client(tracking_uri)
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`encoderlab.trial` = '{number}'",
    )
    mine = [r for r in runs if r.data.tags.get("encoderlab.run_dir") == str(run_dir)]
    return mine[0].info.run_id if mine else None


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
    """Tag the trial's runs with its Optuna state and end those not FINISHED or KILLED with `status`;
    `value`, the trial's objective, is logged on each as `trial/objective`: with seeds_per_trial > 1 no
    single run holds it. skip_marked: skip the runs that ended and already carry a state (a FAIL trial is
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
        # a finished seed stays so; a KILLED run keeps the status that goes with its signal-naming error
        if status is not None and r.info.status not in ("FINISHED", "KILLED", status):
            client.set_terminated(r.info.run_id, status)
