"""Tracking outages against a real `mlflow server` on loopback: an unreachable URI fails in seconds, a
server killed mid-run loses nothing (training goes on, the journal is replayed when it is back), and a
server that never comes back leaves a run that `encoderlab sync` completes later."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import MlflowServer, artifacts, free_port, tiny_train_cmd, training_started


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.kill()


def outage_cmd(tiny_bert: Path, uri: str, *extra: str) -> list[str]:
    """A tiny run long enough for a kill to land mid-training, probing a lost server every second."""
    return tiny_train_cmd(
        tiny_bert,
        f"logger.tracking_uri={uri}",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "num_threads=1",
        "logger.retry_interval_s=1",
        *extra,
    )


def run_killing_server(
    cmd, cwd, server: MlflowServer, restart: bool
) -> tuple[subprocess.CompletedProcess, float]:
    """`cmd` with the server killed once training has started (and restarted when `restart`); returns
    the finished process and its wall time."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not training_started(server.db):
            assert proc.poll() is None, f"train exited before it trained: {proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "train did not start training"
            time.sleep(0.2)
        server.kill()
        if restart:
            time.sleep(3)
            server.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - started


def the_run_dir(cwd: Path) -> Path:
    (record,) = list((cwd / "outputs" / "runs").glob("*/*/tracking/run.json"))
    return record.parent.parent


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    """Every logged point of every metric, (step, value) in step order."""
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def comparable(hist: dict) -> dict[str, list[int]]:
    """Metric histories as their steps: what must match an undisturbed run (timings differ in value)."""
    return {key: [step for step, _ in points] for key, points in hist.items()}


@pytest.fixture(scope="module")
def reference(server, tiny_bert, tiny_mirror, session_cache, tmp_path_factory):
    """The same run as the outage tests, undisturbed: its metric histories, artifacts and wall time."""
    cwd = tmp_path_factory.mktemp("reference")
    env = {  # what the `isolated` fixture sets for each test, for this module-wide run
        **os.environ,
        "ENCODERLAB_DATA_DIR": str(tiny_mirror),
        "ENCODERLAB_CACHE_DIR": str(session_cache / "encoderlab"),
        "HF_DATASETS_CACHE": str(session_cache / "hf_datasets"),
        **dict.fromkeys(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"), "1"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    cmd = outage_cmd(tiny_bert, server.uri)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-3000:]
    client = server.client()
    run = client.get_run(json.loads((the_run_dir(cwd) / "tracking" / "run.json").read_text())["run_id"])
    return {"hist": histories(client, run), "artifacts": artifacts(client, run.info.run_id), "wall": wall}


def test_unreachable_tracking_uri_fails_fast_naming_it(tiny_bert, isolated):
    port = free_port()  # nothing listens there
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    res = subprocess.run(
        tiny_train_cmd(tiny_bert, f"logger.tracking_uri={uri}"), capture_output=True, text=True
    )
    print(f"unreachable {uri}: exit {res.returncode} after {time.monotonic() - started:.1f} s")
    assert res.returncode == 1
    assert f"tracking server {uri} is not reachable" in res.stderr
    assert "MLFLOW_TRACKING_URI" in res.stderr and "Traceback" not in res.stderr
    assert not list(isolated.glob("outputs/runs/*/*/tracking/run.json"))  # no run was created


@pytest.mark.slow
def test_a_run_goes_offline_and_back_online_replaying_in_order(server, isolated, monkeypatch):
    """The mechanism under the end-to-end tests, in-process: calls made while the server is away are
    journaled, the first call after it is back (and a retry interval) replays them, in order, once."""
    from omegaconf import OmegaConf

    from encoderlab.tracking import TrackedRun

    for var, value in (("TIMEOUT", "5"), ("MAX_RETRIES", "0"), ("BACKOFF_FACTOR", "0")):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{var}", value)  # restored after the test
    cfg = OmegaConf.create(
        {
            "logger": {
                "backend": "mlflow",
                "tracking_uri": server.uri,
                "artifact_location": None,
                "tags": {},
            },
            "experiment_name": "outage",
            "run_name": "reconnect",
            "dataset": {"name": "none"},
            "model": {"name_or_path": "none"},
        }
    )
    cfg.logger.retry_interval_s = 0.2
    with TrackedRun(cfg, isolated / "run") as run:
        run.log_params({"lr": "0.1"})
        run.log_metrics({"loss": 0.0}, step=0)
        server.kill()
        for step in (1, 2, 3):
            run.log_metrics({"loss": float(step)}, step=step)
        run.log_text("written while offline\n", "notes/offline.txt")
        run.set_tags({"phase": "offline"})
        assert run.offline
        journal = run._journal
        assert len(journal.pending()) == 5
        server.start()
        assert run._server_back.wait(timeout=30)  # the background probe found it
        run.log_metrics({"loss": 4.0}, step=4)  # the next call replays the journal, then goes online
        assert not run.offline and journal.pending() == []
    client = server.client()
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    points = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "loss"))
    assert points == [(s, float(s)) for s in range(5)]  # each point once
    assert got.data.params == {"lr": "0.1"} and got.data.tags["phase"] == "offline"
    assert "notes/offline.txt" in artifacts(client, run.run_id)


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run_loses_nothing(server, reference, tiny_bert, isolated):
    cmd = outage_cmd(tiny_bert, server.uri, "logger.final_sync_timeout_s=300")
    res, wall = run_killing_server(cmd, isolated, server, restart=True)
    assert res.returncode == 0, res.stderr[-3000:]
    print("\n".join(ln for ln in (res.stdout + res.stderr).splitlines() if "racking" in ln or "Epoch" in ln))
    assert "unreachable" in res.stdout + res.stderr  # the outage happened during training, and was survived
    client = server.client()
    run_dir = the_run_dir(isolated)
    run = client.get_run(json.loads((run_dir / "tracking" / "run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED"
    hist = histories(client, run)
    n_points = sum(len(p) for p in hist.values())
    n_expected = sum(len(p) for p in reference["hist"].values())
    got = artifacts(client, run.info.run_id)
    print(
        f"killed+restarted: {wall:.1f} s vs undisturbed {reference['wall']:.1f} s; metric points "
        f"{n_points}/{n_expected}; artifacts {len(got)}/{len(reference['artifacts'])}"
    )
    assert comparable(hist) == comparable(reference["hist"])  # every metric at every step, once
    assert hist["train/loss_step"] == reference["hist"]["train/loss_step"]  # same seed, same losses
    assert got == reference["artifacts"]
    assert {"config/config.yaml", "predictions/test_predictions.csv", "model/model/encoderlab.json"} <= got
    assert (run_dir / "tracking" / "pending.jsonl").is_file()  # the outage went through the journal


@pytest.mark.slow
def test_server_that_never_returns_leaves_a_run_encoderlab_sync_completes(
    server, reference, tiny_bert, isolated, cli
):
    cmd = outage_cmd(tiny_bert, server.uri, "logger.final_sync_timeout_s=2")
    res, _ = run_killing_server(cmd, isolated, server, restart=False)
    run_dir = the_run_dir(isolated)
    assert res.returncode == 3, res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert f"encoderlab sync {run_dir}" in line and "final status FINISHED" in line
    assert "Traceback" not in res.stderr
    assert (run_dir / "model" / "encoderlab.json").is_file()  # the model was exported all the same

    server.start()
    first = cli("sync", str(run_dir))
    assert first.code == 0, first.err
    assert "sent " in first.out and "final status FINISHED" in first.out
    client = server.client()
    run = client.get_run(json.loads((run_dir / "tracking" / "run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED"
    hist = histories(client, run)
    assert comparable(hist) == comparable(reference["hist"])
    assert artifacts(client, run.info.run_id) == reference["artifacts"]

    again = cli("sync", str(run_dir))  # nothing is sent twice
    assert again.code == 0 and "nothing to sync" in again.out
    assert comparable(histories(client, client.get_run(run.info.run_id))) == comparable(hist)


def test_sync_of_a_directory_without_a_tracking_record_says_what_to_pass(cli, isolated):
    res = cli("sync", str(isolated))
    assert res.code == 1
    assert "not an encoderlab run directory" in res.err and "tracking/run.json" in res.err


def test_sync_sends_a_journal_once_and_refuses_a_store_without_the_run(cli, isolated, mlflow_client):
    """The replay itself, on a local store: every journaled call once, in order; a second sync sends
    nothing; a --tracking-uri that does not hold the run leaves the journal untouched."""
    from encoderlab.tracking_journal import Journal

    uri = f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}"
    exp = mlflow_client.create_experiment("journal")
    run_id = mlflow_client.create_run(exp).info.run_id
    run_dir = isolated / "run"
    journal = Journal(run_dir)
    journal.write_run(uri, run_id, exp)
    for step in range(3):
        journal.append(
            {"op": "metrics", "metrics": {"loss": step / 10}, "step": step, "timestamp": 1000 + step}
        )
    journal.append({"op": "params", "params": {"lr": "0.1"}})
    journal.append({"op": "text", "text": "hello\n", "artifact_file": "notes/hello.txt"})
    journal.append({"op": "terminate", "status": "FINISHED", "end_time": 5000})

    wrong = cli("sync", str(run_dir), "--tracking-uri", f"sqlite:///{isolated / 'other.db'}")
    assert wrong.code == 1 and "is not in the tracking store" in wrong.err and "--tracking-uri" in wrong.err
    assert len(journal.pending()) == 6

    first = cli("sync", str(run_dir))
    assert first.code == 0, first.err
    assert "sent 3 metric values, 1 params, 0 tags, 1 artifacts, the final status FINISHED" in first.out
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert artifacts(mlflow_client, run_id) == {"notes/hello.txt"}

    again = cli("sync", str(run_dir))
    assert again.code == 0 and "nothing to sync" in again.out
    assert len(mlflow_client.get_metric_history(run_id, "loss")) == 3


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("logger.retry_interval_s=0", "(0, 3600]"),
        ("logger.max_retries=11", "[0, 10]"),
        ("logger.connect_timeout_s=-1", "(0, 60]"),
    ],
)
def test_outage_settings_out_of_range_are_config_errors(cli, override, allowed):
    res = cli("train", "experiment=quickstart", override)
    assert res.code == 2
    assert f"'{override.split('=')[0]}'" in res.err and allowed in res.err
