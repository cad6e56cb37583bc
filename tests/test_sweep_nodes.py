"""Sweeps across machines: independently started `encoderlab sweep` workers on one PostgreSQL study, as on
several nodes (issue 24), one of them killed with SIGKILL mid-trial."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import SCRATCH_SMALL, all_runs

POSTGRES_URL = os.environ.get("ENCODERLAB_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="no PostgreSQL server (.ci/run starts one and sets ENCODERLAB_TEST_POSTGRES_URL)",
)

N_TRIALS = 3
SPACE = {
    "base": [
        "experiment=trec_scratch",
        *SCRATCH_SMALL,
        "trainer.max_epochs=3",
        "dataset.batch_size=32",
        "num_threads=1",
    ],
    "study": {
        "n_trials": N_TRIALS,
        "sampler": "random",
        "pruner": "none",
        # a killed worker's trial is FAIL 10 s after its last beat (3 workers share 2 cores here: a live
        # worker's beats can be seconds late)
        "heartbeat_interval": 2,
        "grace_period": 10,
    },
    "params": {
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
}


@pytest.fixture
def fresh_database():
    """A new, empty PostgreSQL database on the test server (dropped afterwards): its URL."""
    import psycopg

    name = f"sweepnodes_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_URL
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _running_trial_of(study, pid: int, trial_root: Path):
    """The RUNNING trial of worker `pid` once its run directory holds last.ckpt (its first validation)."""
    me = f"{socket.gethostname()}:{pid}"
    for t in study.get_trials(deepcopy=False):
        ckpt = trial_root / f"trial_{t.number:04d}" / "checkpoints" / "last.ckpt"
        if t.state.name == "RUNNING" and t.user_attrs.get("worker") == me and ckpt.is_file():
            return t
    return None


def _storage(url: str):
    """A read-only look at the study that holds no connection between queries."""
    from optuna.storages import RDBStorage
    from sqlalchemy.pool import NullPool

    return RDBStorage(url, skip_table_creation=True, engine_kwargs={"poolclass": NullPool})


@pytest.mark.slow
def test_three_independent_workers_on_postgresql_survive_a_kill_9(cli, isolated, fresh_database):
    """Three `encoderlab sweep` processes started on their own on one PostgreSQL study; one is killed
    with SIGKILL mid-trial. The others finish: exactly n_trials COMPLETE+PRUNED in the storage, the dead
    trial FAIL and redone from its last.ckpt by a retry trial, one MLflow parent run, one child run per
    counted trial, and nothing left RUNNING."""
    import optuna

    (isolated / "sweeps").mkdir()
    (isolated / "sweeps" / "nodes.yaml").write_text(yaml.safe_dump(SPACE))
    study_name = "nodes"
    args = ["sweep", "sweep=nodes", f"storage={fresh_database}", f"study_name={study_name}"]
    cmd = [sys.executable, "-m", "encoderlab", *args]
    logs = [open(isolated / f"worker{i}.log", "w") for i in range(3)]  # noqa: SIM115
    procs = [subprocess.Popen(cmd, cwd=isolated, stdout=f, stderr=subprocess.STDOUT) for f in logs]
    victim = procs[0]
    trial_root = isolated / "outputs" / "sweeps" / study_name

    def tail(i: int) -> str:
        return (isolated / f"worker{i}.log").read_text()[-3000:]

    try:
        deadline = time.time() + 300  # a safety net: 3 processes start torch on a shared machine
        dead = None
        while dead is None:
            assert victim.poll() is None, f"worker 0 exited early:\n{tail(0)}"
            assert time.time() < deadline, f"worker 0 did not start a trial:\n{tail(0)}"
            time.sleep(0.2)
            try:  # one connection per look, closed after it (a new engine per look would keep its pool)
                study = optuna.load_study(study_name=study_name, storage=_storage(fresh_database))
            except Exception:  # the workers have not created the tables or the study yet
                continue
            dead = _running_trial_of(study, victim.pid, trial_root)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        for i, p in enumerate(procs[1:], start=1):
            assert p.wait(timeout=240) == 0, tail(i)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    # the next command on the store: the same sweep has nothing left to do
    res = cli(*args)
    assert res.code == 0, res.err

    study = optuna.load_study(study_name=study_name, storage=_storage(fresh_database))
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == N_TRIALS, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert study.trials[dead.number].state.name == "FAIL"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    retries = [t for t in trials if t.user_attrs.get("resumes_trial") == dead.number]
    done_retries = [t for t in retries if t in counted]  # two workers may enqueue one at once: the first wins
    assert len(done_retries) <= 1, done_retries
    # when the living workers finished n_trials before the dead trial's heartbeat ran out, there is
    # nothing left to redo; otherwise its one retry continued it with its params, in its run directory
    for retry in done_retries:
        assert all(t.user_attrs.get("duplicate_of") == retry.number for t in retries if t is not retry)
        assert retry.params == dead.params
        assert retry.user_attrs["run_dir"] == str(trial_root / f"trial_{dead.number:04d}")
    # each worker drew its own proposals: no two trials trained the same params except a retry
    fresh = [
        tuple(sorted(t.params.items())) for t in trials if t.params and "resumes_trial" not in t.user_attrs
    ]
    assert len(set(fresh)) == len(fresh), fresh
    victim_id = f"{socket.gethostname()}:{victim.pid}"
    assert victim_id not in {t.user_attrs["worker"] for t in counted}  # the workers that lived did them

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}")
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get("encoderlab.sweep") == "optuna"]
    assert len(parents) == 1, [(r.info.run_id, r.info.status) for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    done = [c for c in children if c.data.tags.get("encoderlab.trial_state") in ("COMPLETE", "PRUNED")]
    assert sorted(int(c.data.tags["encoderlab.trial"]) for c in done) == sorted(t.number for t in counted)
    numbers = [c.data.tags["encoderlab.trial"] for c in children]
    assert len(numbers) == len(set(numbers)), numbers  # no two runs for one trial
    # the run of the retry that counted (none when nothing was left to redo) says which trial it resumed
    resumed = [c for c in done if c.data.tags.get("encoderlab.resumed_trial") == str(dead.number)]
    assert [c.data.tags["encoderlab.trial"] for c in resumed] == [str(t.number) for t in done_retries]
    assert all(c.info.status == "FINISHED" for c in resumed)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["study/complete"] == N_TRIALS
