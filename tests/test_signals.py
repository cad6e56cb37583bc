"""SIGTERM (preemption, `timeout`) and SIGINT (Ctrl-C) mid-training: the MLflow run ends KILLED with the
signal named, and `encoderlab train` exits 143 / 130, so `train && next` does not go on."""

from __future__ import annotations

import signal

import pytest

from helpers import FAST, all_runs, train_then_signal

pytestmark = pytest.mark.slow  # trains a tiny BERT in a subprocess


@pytest.mark.parametrize(
    ("signum", "code", "reason"),
    [
        (signal.SIGTERM, 143, "killed by SIGTERM"),
        (signal.SIGINT, 130, "interrupted by SIGINT (Ctrl-C)"),
    ],
)
def test_signal_mid_training_marks_the_run_killed_and_exits_nonzero(
    isolated, tiny_bert, mlflow_client, signum, code, reason
):
    res, _ = train_then_signal(isolated, tiny_bert, signum)
    assert res.returncode == code, res.stderr[-3000:]
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "KILLED"
    assert run.data.tags["encoderlab.error"] == reason
    # one line says what happened, to which run, and where its files are
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("encoderlab: ")]
    assert reason in line and run.info.run_id in line and run.data.tags["encoderlab.run_dir"] in line
    assert "Traceback" not in res.stderr


def test_a_signal_during_a_grid_marks_the_grid_parent_killed_too(isolated, tiny_bert, mlflow_client):
    """`train -m`: the running job's run and the grid's parent run both end KILLED with the signal named
    (not FAILED, which would say a job broke), and the process exits 143."""
    res, _ = train_then_signal(isolated, tiny_bert, signal.SIGTERM, "seed=1,2")
    assert res.returncode == 143, res.stderr[-3000:]
    runs = all_runs(mlflow_client)
    (parent,) = [r for r in runs if r.data.tags.get("encoderlab.sweep") == "grid"]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    for run in (parent, child):
        assert run.info.status == "KILLED"
        assert run.data.tags["encoderlab.error"] == "killed by SIGTERM"
    assert "Traceback" not in res.stderr


def test_handlers_are_restored_after_a_run(cli, tiny_bert):
    """In-process callers run many commands: a finished run leaves the process's handlers as they were."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    res = cli(
        "train", "experiment=sst2_minilm", f"model.name_or_path={tiny_bert}", "trainer.fast_dev_run=1", *FAST
    )
    assert res.code == 0, res.err
    assert {s: signal.getsignal(s) for s in before} == before


def test_lightnings_own_sigterm_exit_becomes_a_killed_run(tmp_path):
    """On SLURM Lightning keeps its SIGTERM handler and ends fit with SIGTERMException (a SystemExit with
    code 0): the run still ends as killed by SIGTERM, so the CLI exits 143, not 0."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from omegaconf import OmegaConf

    from encoderlab.signals import Killed
    from encoderlab.tracking import TrackedRun

    cfg = OmegaConf.create({"logger": {"backend": "none"}})
    with pytest.raises(Killed) as caught, TrackedRun(cfg, tmp_path):
        raise SIGTERMException
    assert caught.value.exit_code == 143 and str(caught.value) == "killed by SIGTERM"
    assert caught.value.run_dir == str(tmp_path)
