"""`encoderlab sweep`: Optuna studies with real SQLite storage and real MLflow parent/child runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from helpers import all_runs

TINY = {
    "base": [
        "experiment=trec_scratch",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "tokenizer.vocab_size=800",
        "trainer.max_epochs=2",
        "dataset.batch_size=32",
    ],
    "study": {
        "n_trials": 3,
        "sampler": "random",
        "pruner": "none",
        "heartbeat_interval": 1,
        "grace_period": 3,
    },
    "params": {
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "model.pooling": {"type": "categorical", "choices": ["cls", "mean"]},
    },
}


def write_space(root: Path, name: str = "tiny", **changes) -> str:
    space = json.loads(json.dumps(TINY))
    for section, value in changes.items():
        space[section] = value
    (root / "sweeps").mkdir(exist_ok=True)
    (root / "sweeps" / f"{name}.yaml").write_text(yaml.safe_dump(space))
    return name


def load_study(root: Path, name: str = "tiny"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'outputs' / 'optuna.db'}")


def study_runs(mlflow_client) -> tuple:
    """The study's MLflow parent run, its child runs, and every run."""
    runs = all_runs(mlflow_client)
    (parent,) = [r for r in runs if r.data.tags.get("encoderlab.sweep") == "optuna"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children, runs


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow
def test_sweep_runs_resumes_and_reports(cli, isolated, mlflow_client):
    write_space(isolated)
    res = cli("sweep", "sweep=tiny")
    assert res.code == 0, res.err
    study = load_study(isolated)
    assert states(study) == ["COMPLETE"] * 3

    parent, children, _ = study_runs(mlflow_client)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert sorted(c.data.tags["encoderlab.trial"] for c in children) == ["0", "1", "2"]
    for c in children:  # the trial's sampled params are the run's params, its state a tag
        trial = study.trials[int(c.data.tags["encoderlab.trial"])]
        assert float(c.data.params["optimizer.lr"]) == pytest.approx(trial.params["optimizer.lr"])
        assert c.data.params["model.pooling"] == trial.params["model.pooling"]
        assert c.data.tags["encoderlab.trial_state"] == "COMPLETE"
        assert c.data.metrics["best/val/accuracy"] == pytest.approx(trial.value)  # objective: best validation
        assert c.data.metrics["trial/objective"] == pytest.approx(trial.value)
    arts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "study")}
    for name in (
        "best.yaml",
        "best_params.json",
        "importances.json",
        "trials.csv",
        "optimization_history.png",
        "parallel_coordinate.png",
        "slice.png",
        "param_importances.png",
    ):
        assert f"study/{name}" in arts, name
    assert parent.data.metrics["best/val/accuracy"] == pytest.approx(study.best_value)

    # rerunning the same command continues the study: nothing left to do; a larger n_trials adds one
    assert cli("sweep", "sweep=tiny").code == 0
    assert len(load_study(isolated).trials) == 3
    assert cli("sweep", "sweep=tiny", "n_trials=4").code == 0
    assert states(load_study(isolated)) == ["COMPLETE"] * 4
    assert len([r for r in all_runs(mlflow_client) if r.data.tags.get("encoderlab.sweep") == "optuna"]) == 1

    # best.yaml reruns the best trial exactly (same seed, CPU: same numbers)
    best = load_study(isolated).best_trial
    res = cli(
        "train",
        "--config-dir",
        str(isolated / "outputs" / "sweeps" / "tiny"),
        "--config-name",
        "best",
        "hydra.run.dir=outputs/rerun",
    )
    assert res.code == 0, res.err
    rerun = json.loads((isolated / "outputs" / "rerun" / "metrics.json").read_text())
    trial_dir = Path(best.user_attrs["run_dir"])
    assert rerun == json.loads((trial_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_seeds_per_trial_averages_the_seeds_and_prunes_on_the_first(cli, isolated, mlflow_client):
    """study.seeds_per_trial=2: every trial trains its config with seeds 42 and 43, each its own MLflow
    run; the trial's value is the mean of their best validation values; the pruner gets one curve, the
    first seed's; best.yaml reruns that first seed."""
    write_space(isolated, study={**TINY["study"], "n_trials": 2})
    res = cli("sweep", "sweep=tiny", "seeds_per_trial=2")
    assert res.code == 0, res.err
    study = load_study(isolated)
    assert states(study) == ["COMPLETE"] * 2
    parent, children, _ = study_runs(mlflow_client)
    assert len(children) == 4 and parent.data.params["study.seeds_per_trial"] == "2"
    for trial in study.trials:
        mine = {
            c.data.tags["encoderlab.trial_seed"]: c
            for c in children
            if c.data.tags["encoderlab.trial"] == str(trial.number)
        }
        assert sorted(mine) == ["42", "43"]
        bests = {seed: c.data.metrics["best/val/accuracy"] for seed, c in mine.items()}
        assert trial.value == pytest.approx((bests["42"] + bests["43"]) / 2)
        assert trial.user_attrs["seed_values"] == pytest.approx(bests)
        for c in mine.values():  # each run also carries the trial's value, for sorting in the MLflow UI
            assert c.data.tags["encoderlab.trial_state"] == "COMPLETE"
            assert c.data.metrics["trial/objective"] == pytest.approx(trial.value)
        first = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        curve = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        assert len(curve) == 2 and max(curve) == pytest.approx(bests["42"])  # 2 epochs of seed 42 only
        assert first["best"] == pytest.approx(bests["42"])
    trial_dir = isolated / "outputs" / "sweeps" / "tiny" / "trial_0000"
    seed_42 = json.loads((trial_dir / "seed42" / "metrics.json").read_text())
    seed_43 = json.loads((trial_dir / "seed43" / "metrics.json").read_text())
    assert seed_42 != seed_43  # two trainings, not one counted twice
    header = (isolated / "outputs" / "sweeps" / "tiny" / "best.yaml").read_text().splitlines()[0]
    assert "mean over seeds 42, 43; this config runs seed 42" in header


@pytest.mark.slow
def test_retest_retrains_the_winner_with_fresh_seeds_on_test(cli, isolated, mlflow_client):
    """--retest 1,2: the best trial's exact config trained again with seeds 10000 and 10001 and scored on
    test; the mean and std of those two runs are what is reported, on stdout, in retest.json/.md and on
    the study's MLflow parent run, whose children the re-test runs are."""
    write_space(isolated, study={**TINY["study"], "n_trials": 2})
    res = cli("sweep", "sweep=tiny", "--retest", "1,2")
    assert res.code == 0, res.err
    best = load_study(isolated).best_trial
    out = isolated / "outputs" / "sweeps" / "tiny" / "retest"
    report = json.loads((out / "retest.json").read_text())
    assert report["metric"] == "test/accuracy"
    (result,) = report["results"]
    assert result["trial"] == best.number and result["params"] == best.params
    assert result["val_best"] == pytest.approx(best.value)
    assert sorted(result["seeds"]) == ["10000", "10001"]
    scores = []
    for seed, score in result["seeds"].items():
        run_dir = out / f"trial_{best.number:04d}_seed{seed}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["test"]["test/accuracy"] == pytest.approx(score)
        scores.append(score)
    assert result["mean"] == pytest.approx(sum(scores) / 2)
    assert result["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2**0.5)
    assert f"{result['mean']:.4f} ± {result['std']:.4f}" in res.out
    # beside the mean, the accuracy of the two models' averaged probabilities
    import pandas as pd

    frames = [
        pd.read_csv(out / f"trial_{best.number:04d}_seed{s}" / "predictions" / "test_predictions.csv")
        for s in result["seeds"]
    ]
    classes = [c for c in frames[0].columns if c.startswith("prob_") and c != "prob_true_label"]
    averaged = (frames[0][classes] + frames[1][classes]) / 2
    expected = (averaged.idxmax(axis=1).str.removeprefix("prob_") == frames[0]["label"].astype(str)).mean()
    assert result["ensemble_accuracy"] == pytest.approx(expected)
    assert (out / "retest.md").read_text() in res.out

    parent, _, runs = study_runs(mlflow_client)
    retests = [r for r in runs if r.data.tags.get("encoderlab.retest_of_trial") == str(best.number)]
    assert len(retests) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in retests)
    assert parent.data.metrics["retest/test/accuracy_mean"] == pytest.approx(result["mean"])
    assert parent.data.metrics["retest/ensemble_accuracy"] == pytest.approx(result["ensemble_accuracy"])
    arts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/retest.json", "study/retest.md"} <= arts


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"params": {"model.nope": {"type": "int", "low": 1, "high": 3}}}, "param 'model.nope' is not a key"),
        (
            {"params": {"model.pooling": {"type": "categorical", "choices": []}}},
            "needs a non-empty 'choices'",
        ),
        ({"params": {"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "needs low < high"),
        (
            {"params": {"optimizer.lr": {"type": "float", "low": "small", "high": 0.01}}},
            "needs a number for low",
        ),
        ({"study": {"sampler": "bayes"}}, "study.sampler is 'bayes'. Allowed: tpe, random, grid, cmaes"),
        ({"study": {"pruner": "asha"}}, "study.pruner is 'asha'. Allowed: median"),
        (
            {"study": {"storage": "postgresql://encoderlab:secret@127.0.0.1:9/optuna"}},
            "Could not open the study storage",
        ),
        ({"study": {"n_trials": 2, "colour": "blue"}}, "unknown study key 'colour'"),
        ({"study": {"seeds_per_trial": 0}}, "seeds_per_trial must be an integer >= 1, got 0"),
        (
            {"study": {"pruner": "hyperband", "pruner_args": {"reduction": 4}}},
            "study.pruner_args has 'reduction', which the hyperband pruner does not take. Allowed: min_resource",
        ),
        (
            {"study": {"pruner": "hyperband", "pruner_args": {"reduction_factor": 1}}},
            "reduction_factor must be an integer >= 2, got 1",
        ),
        ({"study": {"sampler": "tpe", "sampler_args": [5]}}, "study.sampler_args must be a mapping"),
    ],
)
def test_bad_search_space_fails_before_any_training(cli, isolated, changes, message):
    write_space(isolated, **changes)
    res = cli("sweep", "sweep=tiny")
    assert res.code in (1, 2), res.err
    assert message in res.err and "Traceback" not in res.err
    assert "secret" not in res.err  # storage passwords stay out of messages
    assert not (isolated / "outputs" / "sweeps" / "tiny").exists()  # no trial ran
    db = isolated / "outputs" / "optuna.db"
    if db.exists():
        import optuna

        assert all(s.n_trials == 0 for s in optuna.get_all_study_summaries(f"sqlite:///{db}"))


def test_sampler_and_pruner_args_reach_optuna_and_follow_their_pruner(isolated):
    """study.pruner_args configure the space's pruner; naming another pruner on the command line drops
    them (they belong to the pruner they were written for) unless pruner_args is given there too."""
    from encoderlab.sweep.space import apply_study_args, load_space
    from encoderlab.sweep.study import make_pruner, make_sampler

    write_space(
        isolated,
        study={
            **TINY["study"],
            "sampler": "tpe",
            "pruner": "hyperband",
            "pruner_args": {"max_resource": 15, "reduction_factor": 4},
        },
    )
    space = load_space("tiny")
    pruner = make_pruner(space.study["pruner"], space.study["pruner_args"])
    assert pruner._reduction_factor == 4 and pruner._max_resource == 15
    apply_study_args(space, {"sampler_args": "{n_startup_trials: 3}"})
    assert make_sampler("tpe", 0, space.params, space.study["sampler_args"])._n_startup_trials == 3
    apply_study_args(space, {"pruner": "hyperband"})  # the same pruner: its args stay
    assert space.study["pruner_args"] == {"max_resource": 15, "reduction_factor": 4}
    apply_study_args(space, {"pruner": "median"})
    assert space.study["pruner_args"] == {}
    assert make_pruner("median", {})._n_startup_trials == 5  # encoderlab's default kept
    apply_study_args(space, {"pruner": "median", "pruner_args": "{n_startup_trials: 2}"})
    assert make_pruner("median", space.study["pruner_args"])._n_startup_trials == 2


def test_each_trial_has_its_own_seed_stream_whichever_worker_draws_it(isolated):
    """Trial N is sampled with a seed derived from (study.seed, N): two new studies (e.g. with and without
    pruning) start from the same configurations, and workers sharing one study, each with its own
    sampler object (as on several machines), draw different values that are the same trial by trial as
    one process alone would draw."""
    from encoderlab.sweep.space import apply_study_args, load_space, suggest
    from encoderlab.sweep.study import open_study

    write_space(isolated)

    def worker(study_name: str):
        space = load_space("tiny")
        apply_study_args(space, {"study_name": study_name})
        return open_study(space), space.params

    def proposals(study_name: str, n: int = 3) -> list[dict]:
        study, params = worker(study_name)
        return [suggest(study.ask(), params) for _ in range(n)]

    alone = proposals("with_pruning")
    assert proposals("without_pruning") == alone
    assert len({v["optimizer.lr"] for v in alone}) == 3
    (a, params), (b, _) = worker("shared"), worker("shared")  # two workers joining one new study
    drawn = [suggest(s.ask(), params) for s in (a, b, a)]
    assert drawn == alone  # trial numbers 0, 1, 2 were handed out by the storage across both workers


def test_unknown_sweep_name_lists_the_available_ones(cli, isolated):
    res = cli("sweep", "sweep=nope")
    assert res.code == 2 and "no search space 'sweep=nope'" in res.err and "trec_scratch" in res.err


@pytest.mark.slow
def test_killed_trial_resumes_from_its_last_checkpoint_in_a_retry(cli, isolated, mlflow_client):
    """SIGKILL mid-trial after trial 0 saved last.ckpt, rerun: trial 0 is FAIL (heartbeat) and not counted;
    trial 1 retries it with its params, continuing its MLflow run from the checkpoint (one validation
    point per epoch, none twice) with trial 0's reported values copied in; exactly n_trials counted."""
    write_space(isolated, study={**TINY["study"], "n_trials": 2})
    args = ["sweep", "sweep=tiny", "trainer.max_epochs=2", "num_threads=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "encoderlab", *args],
        cwd=isolated,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trial_dir = isolated / "outputs" / "sweeps" / "tiny" / "trial_0000"
    try:
        deadline = time.time() + 120
        while not (trial_dir / "checkpoints" / "last.ckpt").exists():  # saved at the first validation
            assert proc.poll() is None and time.time() < deadline, "the sweep did not start training"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (trial_dir / "metrics.json").exists(), "killed too late: trial 0 finished"
    (dead_run,) = [r for r in all_runs(mlflow_client) if r.data.tags.get("encoderlab.trial") == "0"]
    dead_values = dict(load_study(isolated).trials[0].intermediate_values)
    time.sleep(3.5)  # past the grace period: the trial's heartbeat has stopped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cli(*args)
    assert res.code == 0, res.err
    assert "trial 1 resumes dead trial 0 from" in res.err
    assert "with its own overrides" not in res.err  # the same command: the same config
    # the heartbeat machinery is optuna-"experimental": no warning about it at every trial
    assert not [w for w in caught if w.category.__name__ == "ExperimentalWarning"]

    study = load_study(isolated)
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]
    dead, retry, fresh = study.trials
    assert retry.params == dead.params and retry.user_attrs["resumes_trial"] == 0
    assert retry.user_attrs["run_dir"] == str(trial_dir)
    assert sorted(retry.intermediate_values) == [0, 1]  # the whole curve, one value per epoch
    assert dead_values and dead.intermediate_values == dead_values
    for step, value in dead_values.items():  # (a validation killed before its save is redone: same value)
        assert retry.intermediate_values[step] == pytest.approx(value, abs=1e-6)

    parent, children, _ = study_runs(mlflow_client)
    assert len(children) == 2  # trial 0's run continued, not a third run
    run = mlflow_client.get_run(dead_run.info.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["encoderlab.trial"], tags["encoderlab.resumed_trial"], tags["encoderlab.resumed"]) == (
        "1",
        "0",
        "1",
    )
    assert tags["encoderlab.trial_state"] == "COMPLETE"
    assert run.data.metrics["trial/objective"] == pytest.approx(retry.value)
    history = mlflow_client.get_metric_history(run.info.run_id, "val/accuracy")
    steps = [m.step for m in history]
    assert len(steps) == 2 and len(set(steps)) == 2, steps
    assert max(m.value for m in history) == pytest.approx(retry.value)
    (other,) = [c for c in children if c.info.run_id != run.info.run_id]
    assert other.data.tags["encoderlab.trial"] == "2" and other.info.status == "FINISHED"
    assert "encoderlab.resumed" not in other.data.tags


def test_only_dead_trials_with_a_checkpoint_are_retried_once_and_the_first_retry_wins(isolated):
    """Which FAIL trials get a retry (same params): those whose process died and left a last.ckpt, one
    retry each, within n_trials' free slots; not a trial whose objective raised, nor a surplus one. Two
    workers that enqueued a retry of the same trial at once: the later one is skipped, not counted."""
    import zipfile

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from encoderlab.errors import EncoderlabError
    from encoderlab.sweep.trials import SurplusTrial, enqueue_retries, resume_plan, trial_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", direction="maximize")
    dist = {"optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    attrs = [{}, {"error": "ValueError: boom"}, {"surplus": True}, {}, {}]
    for i, user_attrs in enumerate(attrs):
        study.add_trial(
            create_trial(
                state=TrialState.FAIL,
                params={"optimizer.lr": 1e-3 * (i + 1)},
                distributions=dist,
                user_attrs=user_attrs,
                intermediate_values={0: 0.5},
            )
        )
    for i in (0, 1, 2, 4):  # trial 3 died before its first validation: no last.ckpt
        ckpt = trial_dir("s", i) / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        with zipfile.ZipFile(ckpt, "w") as z:  # a zip archive, as torch checkpoints are, but not one
            z.writestr("archive/data.pkl", b"not a pickle")
    assert enqueue_retries(study, target=1) == [0]  # one free slot
    assert enqueue_retries(study, target=3) == [4]  # 0 is claimed by its waiting retry
    assert enqueue_retries(study, target=10) == []  # each dead trial is retried once
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs["resumes_trial"], t.system_attrs["fixed_params"]) for t in retries] == [
        (0, {"optimizer.lr": 1e-3}),
        (4, {"optimizer.lr": 5e-3}),
    ]
    # another worker enqueued a retry of trial 0 in the same instant
    study.enqueue_trial(study.trials[0].params, user_attrs=dict(retries[0].user_attrs))
    first, _, late = study.ask(), study.ask(), study.ask()
    with pytest.raises(SurplusTrial):
        resume_plan(study, late, "unused", None)
    assert late.user_attrs["duplicate_of"] == first.number
    with pytest.raises(EncoderlabError, match="does not load .* goes on with fresh params"):
        resume_plan(study, first, "unused", None)  # the slot goes to a fresh trial


@pytest.mark.slow
def test_sigterm_killed_sweep_exits_143_and_resumes(cli, isolated, mlflow_client):
    """SIGTERM (preemption, `timeout`) mid-trial: the sweep exits 143, not 0, the trial's run is KILLED
    with the signal named; a rerun fails the trial (heartbeat), retries it from the last.ckpt the signal
    saved (its KILLED run goes on to FINISHED) and completes exactly n_trials."""
    write_space(isolated, study={**TINY["study"], "n_trials": 2})
    args = ["sweep", "sweep=tiny", "trainer.max_epochs=2", "num_threads=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "encoderlab", *args],
        cwd=isolated,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not list((isolated / "outputs" / "sweeps" / "tiny").glob("trial_0000/checkpoints/*.ckpt")):
            assert proc.poll() is None and time.time() < deadline, "the sweep did not start training"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    (killed,) = [r for r in all_runs(mlflow_client) if r.data.tags.get("encoderlab.trial") == "0"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["encoderlab.error"] == "killed by SIGTERM"
    (parent,) = [r for r in all_runs(mlflow_client) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED" and parent.data.tags["encoderlab.error"] == "killed by SIGTERM"
    time.sleep(3.5)  # past the grace period: the trial's heartbeat has stopped
    res = cli(*args)
    assert res.code == 0, res.err
    study = load_study(isolated)
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["resumes_trial"] == 0
    resumed = mlflow_client.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["encoderlab.resumed_trial"] == "0"
    assert resumed.data.tags["encoderlab.resumed_from"] == "KILLED: killed by SIGTERM"
    assert mlflow_client.get_run(parent.info.run_id).info.status == "FINISHED"  # the same parent, resumed


@pytest.mark.slow
def test_sweep_killed_in_a_trials_second_seed_fails_the_trial_not_the_finished_seed(
    cli, isolated, mlflow_client
):
    """seeds_per_trial=2, SIGKILL while the first trial trains its second seed, rerun: the trial is FAIL
    and redone; in MLflow its killed run is FAILED, its first seed's run stays FINISHED, both tagged FAIL
    (so neither counts as a complete trial)."""
    write_space(isolated, study={**TINY["study"], "n_trials": 1, "seeds_per_trial": 2})
    cmd = [sys.executable, "-m", "encoderlab", "sweep", "sweep=tiny", "trainer.max_epochs=10"]
    proc = subprocess.Popen(cmd, cwd=isolated, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial_dir = isolated / "outputs" / "sweeps" / "tiny" / "trial_0000"
    try:
        deadline = time.time() + 180
        while not list(trial_dir.glob("seed43/checkpoints/*.ckpt")):  # the second seed is training
            assert proc.poll() is None and time.time() < deadline, "the sweep did not reach the second seed"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (trial_dir / "seed43" / "metrics.json").exists(), "killed too late: the second seed finished"
    time.sleep(3.5)  # past the grace period
    res = cli("sweep", "sweep=tiny", "trainer.max_epochs=2")
    assert res.code == 0, res.err
    study = load_study(isolated)
    assert states(study) == ["FAIL", "COMPLETE"]
    runs = {
        (r.data.tags["encoderlab.trial"], r.data.tags["encoderlab.trial_seed"]): r
        for r in all_runs(mlflow_client)
        if "encoderlab.trial" in r.data.tags
    }
    assert sorted(runs) == [("0", "42"), ("0", "43"), ("1", "42"), ("1", "43")]
    assert runs["0", "42"].info.status == "FINISHED" and runs["0", "43"].info.status == "FAILED"
    assert runs["0", "42"].data.tags["encoderlab.trial_state"] == "FAIL"
    assert runs["0", "43"].data.tags["encoderlab.trial_state"] == "FAIL"
    assert {runs["1", s].data.tags["encoderlab.trial_state"] for s in ("42", "43")} == {"COMPLETE"}


@pytest.mark.slow
def test_two_workers_finish_exactly_n_trials_on_sqlite(cli, isolated):
    write_space(isolated, study={**TINY["study"], "n_trials": 3})
    res = cli("sweep", "sweep=tiny", "--workers", "2")
    assert res.code == 0, res.err
    study = load_study(isolated)
    counted = [s for s in states(study) if s in ("COMPLETE", "PRUNED")]
    assert len(counted) == 3
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "FAIL")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ENCODERLAB_TEST_POSTGRES_URL"),
    reason="no PostgreSQL server (.ci/run starts one and sets ENCODERLAB_TEST_POSTGRES_URL)",
)
def test_two_workers_finish_exactly_n_trials_on_postgresql(cli, isolated):
    import uuid

    import optuna

    url = os.environ["ENCODERLAB_TEST_POSTGRES_URL"]
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    write_space(isolated, study={**TINY["study"], "n_trials": 3, "storage": url, "study_name": name})
    res = cli("sweep", "sweep=tiny", "--workers", "2")
    assert res.code == 0, res.err
    study = optuna.load_study(study_name=name, storage=url)
    assert len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]) == 3
    assert "encoderlab:***@" in res.err or "password" not in res.err  # the password is not logged
    optuna.delete_study(study_name=name, storage=url)


def test_study_report_plots_numeric_choices_without_log_noise(tmp_path, caplog):
    """A space with numeric categorical choices (vocab sizes) gets its plots and best.yaml, and the
    sweep's log is not flooded with matplotlib's per-axis 'categorical units' INFO lines."""
    import logging

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from encoderlab.sweep.report import write_study_report
    from encoderlab.sweep.space import Space

    study = optuna.create_study(direction="maximize")
    dists = {
        "tokenizer.vocab_size": CategoricalDistribution([2000, 4000, 8000]),
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
    }
    for i, (vocab, lr) in enumerate([(2000, 1e-3), (4000, 3e-3), (8000, 5e-4), (4000, 1e-4)]):
        overrides = ["experiment=trec_scratch", f"tokenizer.vocab_size={vocab}", f"optimizer.lr={lr}"]
        study.add_trial(
            optuna.trial.create_trial(
                params={"tokenizer.vocab_size": vocab, "optimizer.lr": lr},
                distributions=dists,
                value=0.8 + 0.01 * i,
                user_attrs={"overrides": overrides},
            )
        )
    space = Space("tiny", tmp_path / "tiny.yaml", [], {"metric": "val/accuracy"}, {})
    caplog.set_level(logging.INFO)
    files = write_study_report(study, space, tmp_path)

    assert not [r for r in caplog.records if r.name == "matplotlib.category"]
    for plot in ("optimization_history", "parallel_coordinate", "slice", "param_importances"):
        assert files[plot].stat().st_size > 10_000, plot
    best = yaml.safe_load(files["best_yaml"].read_text())
    assert best["tokenizer"]["vocab_size"] == 4000 and best["optimizer"]["lr"] == 1e-4
