"""A team's tracking server: a real `mlflow server` on loopback with a PostgreSQL backend store and the
artifacts it serves itself (--artifacts-destination), four `encoderlab train` processes and an
`encoderlab sweep` logging to it at once, read back through the server (docs/team-tracking-server.md)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import SCRATCH_SMALL, MlflowServer, all_runs, artifacts, tiny_train_cmd

POSTGRES_URL = os.environ.get("ENCODERLAB_TEST_POSTGRES_URL")

pytestmark = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="no PostgreSQL server (.ci/run starts one and sets ENCODERLAB_TEST_POSTGRES_URL)",
)

# what every training run must have uploaded through the server's artifact proxy
RUN_ARTIFACTS = {
    "config/config.yaml",
    "metrics/metrics.json",
    "model/model/config.json",
    "model/model/model.safetensors",
    "model/model/encoderlab.json",
    "predictions/test_predictions.csv",
}

# 96 training rows in batches of 16: 6 steps, a validation every 3 -> 2 validations, 6 loss points
TRAIN_STEPS, TRAIN_VALIDATIONS = 6, 2
TRAIN = [
    "dataset.max_train_samples=96",
    "trainer.max_epochs=1",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "analysis=none",
    "probes=none",
    "num_threads=1",
]

# a two-trial study of a from-scratch encoder, one validation per epoch -> 2 validations per trial
SWEEP_EPOCHS = 2
SWEEP = {
    "base": [
        "experiment=trec_scratch",
        *SCRATCH_SMALL,
        f"trainer.max_epochs={SWEEP_EPOCHS}",
        "trainer.enable_progress_bar=false",
        "dataset.batch_size=32",
        "analysis=none",
        "probes=none",
        "num_threads=1",
    ],
    "study": {"n_trials": 2, "sampler": "random", "pruner": "none"},
    "params": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
}


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(sql)


@pytest.fixture
def database() -> str:
    """A fresh PostgreSQL database for one test, as an SQLAlchemy URL; dropped afterwards."""
    name = f"encoderlab_team_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    base = POSTGRES_URL.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base}/{name}"
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def team_server(tmp_path_factory, database):
    """`mlflow server --backend-store-uri postgresql+psycopg://... --artifacts-destination <dir>` on
    127.0.0.1, stopped (with its web workers) at the end."""
    server = MlflowServer(tmp_path_factory.mktemp("team_server"), backend=database, workers=2)
    started = time.monotonic()
    server.start()
    print(f"mlflow server on PostgreSQL answered /health after {time.monotonic() - started:.1f} s")
    yield server
    server.kill()


@contextlib.contextmanager
def server_log_on_failure(server: MlflowServer):
    """Print the server's log when the block fails (pytest shows a failing test's output)."""
    try:
        yield
    except BaseException:
        print(f"---- {server.log} (last 6000 characters) ----\n{server.log.read_text()[-6000:]}")
        raise


def points(client, run_id: str, key: str) -> list[int]:
    """The steps of every point of a metric's history on the server."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_four_runs_and_a_sweep_log_everything_to_a_postgresql_mlflow_server(
    team_server, tiny_bert, isolated, monkeypatch, cli
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.uri)  # the team's setting; subprocesses inherit it
    (isolated / "sweeps").mkdir()
    (isolated / "sweeps" / "team.yaml").write_text(yaml.safe_dump(SWEEP))
    sweep_cmd = [sys.executable, "-m", "encoderlab", "sweep", "sweep=team"]
    cmds = [tiny_train_cmd(tiny_bert, *TRAIN, f"seed={seed}") for seed in (1, 2, 3, 4)] + [sweep_cmd]
    with server_log_on_failure(team_server):
        started = time.monotonic()
        procs = [
            subprocess.Popen(cmd, cwd=isolated, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for cmd in cmds
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        wall = time.monotonic() - started
        for cmd, proc, out in zip(cmds, procs, outs, strict=True):
            assert proc.returncode == 0, f"{cmd[3:5]} exited {proc.returncode}:\n{out[-3000:]}"

        client = team_server.client()
        runs = all_runs(client)
        assert not [r.info.run_id for r in runs if r.info.status != "FINISHED"]  # none RUNNING/FAILED
        (parent,) = [r for r in runs if r.data.tags.get("encoderlab.sweep") == "optuna"]
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        trains = [r for r in runs if r.data.tags.get("encoderlab.dataset") == "sst2"]
        assert len(trials) == 2 and len(trains) == 4 and len(runs) == 7
        assert sorted(r.data.params["seed"] for r in trains) == ["1", "2", "3", "4"]

        # every metric point each process logged reached the server
        n_points = 0
        for run in trains:
            val = points(client, run.info.run_id, "val/accuracy")
            assert len(set(val)) == len(val) == TRAIN_VALIDATIONS  # one point per validation
            loss = points(client, run.info.run_id, "train/loss_step")
            assert len(set(loss)) == len(loss) == TRAIN_STEPS  # one point per training step
            assert "test/accuracy" in run.data.metrics
        for run in trials:
            assert len(points(client, run.info.run_id, "val/accuracy")) == SWEEP_EPOCHS
            assert "test/accuracy" in run.data.metrics
        for run in trains + trials:
            n_points += sum(len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics)

        # every artifact went through the server's proxy into --artifacts-destination
        for exp in client.search_experiments():
            assert exp.artifact_location.startswith("mlflow-artifacts:/"), exp.artifact_location
        n_artifacts = 0
        for run in trains + trials + [parent]:
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
            listed = artifacts(client, run.info.run_id)
            if run is not parent:
                assert listed >= RUN_ARTIFACTS, sorted(RUN_ARTIFACTS - listed)
            stored = (
                team_server.artifacts_destination / run.info.experiment_id / run.info.run_id / "artifacts"
            )
            assert all((stored / path).is_file() for path in listed), run.info.run_id
            n_artifacts += len(listed)
        assert "best.yaml" in {Path(p).name for p in artifacts(client, parent.info.run_id)}
        assert not (isolated / "outputs" / "mlartifacts").exists()  # nothing written beside the runs

        # the team reads them back through the server: a results table, and a model served by run id
        table = cli("table", "--experiment", "sst2_minilm", "--metrics", "test/accuracy")
        assert table.code == 0, table.err
        assert "| 4 |" in table.out  # the four seeds in one group
        run = trains[0]
        local = Path(run.data.tags["encoderlab.run_dir"]) / "model"
        local.rename(local.with_name("model.moved"))  # predict must download it from the server
        res = cli("predict", run.info.run_id, "a warm and funny film")
        assert res.code == 0, res.err
        assert res.out.split("\t", 1)[0] in ("negative", "positive")
    print(  # after the cli calls, which read the captured output
        f"4 train runs + a 2-trial sweep against the server: {wall:.1f} s wall; {n_points} metric points "
        f"and {n_artifacts} artifacts checked in {len(runs)} runs"
    )


def test_processes_creating_a_new_postgresql_store_at_once_all_open_it(database, isolated):
    """Four processes opening the same new PostgreSQL store directly (logger.tracking_uri=postgresql...)
    race to create its tables: each opens it and finds the one experiment, and no log line carries the
    password."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from encoderlab.tracking import open_experiment, tracking_client\n"
        "uri = sys.argv[1]\n"
        "print('experiment', open_experiment(tracking_client(uri), 'team', None, uri))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, database],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outs)
    ids = {line.split()[1] for out in outs for line in out.splitlines() if line.startswith("experiment ")}
    assert len(ids) == 1
    password = database.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert not [out for out in outs if f":{password}@" in out]
