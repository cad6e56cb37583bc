"""No run left RUNNING (issue 23): runs record host, pid and a heartbeat; any command that opens the store
marks the runs whose process provably died FAILED; a full disk, memory or the tracking store end a run
FAILED with one paragraph naming the cause, and no traceback on the terminal."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import FAST, all_runs, tiny_train_cmd, train_then_signal


def _tags(host: str, pid: int, heartbeat: float, started: float | None = None) -> dict[str, str]:
    tags = {"encoderlab.host": host, "encoderlab.pid": str(pid), "encoderlab.heartbeat": str(int(heartbeat))}
    if started is not None:
        tags["encoderlab.pid_started"] = f"{started:.2f}"
    return tags


def test_opening_the_store_marks_only_the_runs_whose_process_provably_died(mlflow_client, cli):
    import psutil

    exp = mlflow_client.create_experiment("others")
    now, me = time.time(), psutil.Process()
    runs = {
        "other host, silent for an hour": _tags("elsewhere", 4242, now - 3600),
        "other host, fresh heartbeat": _tags("elsewhere", 4242, now - 5),
        "other host, heartbeat off": {**_tags("elsewhere", 4242, now - 3600), "encoderlab.heartbeat_s": "0"},
        "another tool's run": {},
        "this live process": _tags(socket.gethostname(), os.getpid(), now, me.create_time()),
        "this pid, reused by a newer process": _tags(socket.gethostname(), os.getpid(), now - 60, 1000.0),
    }
    ids = {
        name: mlflow_client.create_run(exp, run_name=name, tags=tags).info.run_id
        for name, tags in runs.items()
    }

    res = cli("table", "--experiment", "others")  # any command that opens the store
    assert res.code == 1 and "No finished runs" in res.err  # nothing to tabulate: still marked

    status = {name: mlflow_client.get_run(run_id) for name, run_id in ids.items()}
    assert {name: r.info.status for name, r in status.items()} == {
        "other host, silent for an hour": "FAILED",
        "other host, fresh heartbeat": "RUNNING",
        "other host, heartbeat off": "RUNNING",
        "another tool's run": "RUNNING",
        "this live process": "RUNNING",
        "this pid, reused by a newer process": "FAILED",
    }
    silent = status["other host, silent for an hour"]
    error = silent.data.tags["encoderlab.error"]
    assert error.startswith("process died (host elsewhere, pid 4242, last heartbeat ")
    assert "no heartbeat for over 600 s" in error
    assert silent.info.end_time == int(now - 3600) * 1000  # ended at its last sign of life
    assert (
        "now another process's" in status["this pid, reused by a newer process"].data.tags["encoderlab.error"]
    )


@pytest.mark.slow
def test_a_train_killed_with_sigkill_is_marked_failed_by_the_next_command(isolated, tiny_bert, cli):
    from mlflow.tracking import MlflowClient

    _, pid = train_then_signal(isolated, tiny_bert, signal.SIGKILL)
    client = MlflowClient(f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}")
    (run,) = all_runs(client)
    assert run.info.status == "RUNNING"  # nobody could mark it: the process had no chance
    assert run.data.tags["encoderlab.pid"] == str(pid)

    cli("table", "--experiment", "sst2_minilm")

    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    error = run.data.tags["encoderlab.error"]
    assert error.startswith(f"process died (host {socket.gethostname()}, pid {pid}, last heartbeat ")


@pytest.mark.slow
def test_a_run_records_its_process_and_keeps_a_heartbeat(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "trainer.max_steps=4",
        "dataset.max_train_samples=64",
        "analysis=none",
        "probes=none",
        "logger.heartbeat_s=0.1",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    tags = run.data.tags
    assert tags["encoderlab.host"] == socket.gethostname() and tags["encoderlab.pid"] == str(os.getpid())
    assert tags["encoderlab.heartbeat_s"] == "0.1"
    # the open records the first heartbeat; one over 0.1 s after it means the thread beat (a run of a few
    # steps still takes seconds: data, model, test)
    assert float(tags["encoderlab.heartbeat"]) > run.info.start_time / 1000 + 0.1
    assert not [t for t in threading.enumerate() if t.name == "encoderlab-heartbeat"]  # stopped at exit


def test_a_bad_heartbeat_setting_is_a_config_error(cli):
    res = cli("train", "logger.heartbeat_s=-1")
    assert res.code == 2 and "logger.heartbeat_s" in res.err and "seconds >= 0" in res.err


# ---- disk full, out of memory, tracking errors ---------------------------------------------------------
def _cfg(**dataset):
    return OmegaConf.create(
        {"dataset": {"batch_size": 32, "eval_batch_size": 64, "max_length": 128, **dataset}}
    )


def test_out_of_memory_names_the_settings_to_lower():
    import torch

    from encoderlab.failures import describe_failure

    cuda = describe_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), _cfg())
    assert cuda.startswith("Out of memory on the GPU (OutOfMemoryError: CUDA out of memory.")
    assert "dataset.batch_size (now 32)" in cuda and "dataset.max_length (now 128)" in cuda
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: 1 TB")
    assert describe_failure(cpu, _cfg()).startswith("Out of memory on host memory (RAM) (RuntimeError: ")
    assert "dataset.batch_size (now 32)" in describe_failure(MemoryError(), _cfg())
    assert describe_failure(ValueError("a bug")) is None  # a bug keeps its traceback


def test_disk_full_and_tracking_errors_name_their_cause(tmp_path):
    from mlflow.exceptions import MlflowException

    from encoderlab.failures import describe_failure

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.safetensors"))
    message = describe_failure(full)
    assert message.startswith(
        f"Disk full: no space left on the filesystem of {tmp_path / 'model.safetensors'} ("
    )
    assert " free of " in message
    # the store's own write failing on the full disk is still a full disk, not a tracking error
    try:
        try:
            raise full
        except OSError as ex:
            raise MlflowException("(sqlite3.OperationalError) database or disk is full") from ex
    except MlflowException as chained:
        assert describe_failure(chained).startswith("Disk full")
    down = MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/create failed")
    message = describe_failure(down, tracking_uri="http://127.0.0.1:9")
    assert message.startswith("Tracking error: the MLflow tracking store http://127.0.0.1:9 failed")


def test_a_run_ended_by_oom_is_failed_with_the_message(isolated, mlflow_client):
    from encoderlab.failures import RunFailed
    from encoderlab.tracking import TrackedRun

    cfg = OmegaConf.create(
        {
            "experiment_name": "oom",
            "run_name": "r",
            "dataset": {"name": "d", "batch_size": 32, "max_length": 128},
            "model": {"name_or_path": "m"},
            "logger": {"backend": "mlflow", "tracking_uri": None, "artifact_location": None, "tags": {}},
        }
    )
    with pytest.raises(RunFailed) as caught, TrackedRun(cfg, isolated / "run"):
        raise MemoryError
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FAILED"
    assert run.data.tags["encoderlab.error"] == str(caught.value)
    assert "dataset.batch_size (now 32)" in str(caught.value)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size (e.g. "256k"), unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _train_small(tiny_bert: Path, *overrides: str) -> list[str]:
    return tiny_train_cmd(
        tiny_bert,
        "trainer.max_epochs=1",
        "dataset.max_train_samples=64",
        "analysis=none",
        "probes=none",
        "num_threads=1",
        *overrides,
    )


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    return line


@pytest.mark.slow
def test_a_full_disk_fails_the_run_with_one_message(isolated, tiny_bert, tmpfs, mlflow_client):
    """The run directory on a 256 KiB disk: the export of the trained model fills it."""
    disk = tmpfs("256k")
    cmd = _train_small(tiny_bert, f"hydra.run.dir={disk / 'run'}")
    res = subprocess.run(cmd, cwd=isolated, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    line = _one_error_line(res.stderr)
    assert line.startswith(f"error: Disk full: no space left on the filesystem of {disk}")
    assert " free of 256.0 KiB" in line
    (run,) = all_runs(mlflow_client)  # the store is on another disk: the run is marked
    assert run.info.status == "FAILED"
    assert run.data.tags["encoderlab.error"].startswith("Disk full: no space left")
    log_file = Path(line.rsplit("The traceback is in ", 1)[1].rstrip("."))
    assert log_file.parent == disk / "run" and "Traceback" in log_file.read_text()


@pytest.mark.slow
def test_a_full_disk_under_the_store_too_is_one_message_and_the_next_command_marks_the_run(
    tiny_bert, tmpfs, cli
):
    """Everything (store, artifacts, run directory) on a disk that fills while the run logs its model:
    marking the run fails too, and is said in one line; once there is room, the next command marks it."""
    disk = tmpfs("1500k")
    # without last.ckpt, whose atomic write gives its space back when it fails: the export's files stay
    cmd = _train_small(tiny_bert, "callbacks.last=null")
    res = subprocess.run(cmd, cwd=disk, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    assert _one_error_line(res.stderr).startswith(
        f"error: Disk full: no space left on the filesystem of {disk}"
    )
    assert "Traceback" not in res.stderr  # not hundreds of lines of chained tracebacks
    assert "could not be marked FAILED (OperationalError: database or disk is full)" in res.stdout
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{disk / 'outputs' / 'mlflow.db'}"
    (run,) = all_runs(MlflowClient(uri))
    assert run.info.status == "RUNNING"

    shutil.rmtree(disk / "outputs" / "runs")  # room again
    cli("table", "--tracking-uri", uri, "--experiment", "sst2_minilm")
    run = MlflowClient(uri).get_run(run.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["encoderlab.error"].startswith("process died")


def test_a_sweeps_workers_leave_the_parent_run_to_the_sweep_process(isolated, mlflow_client):
    """Workers reopen the parent run a living sweep process owns: they neither take it over nor beat for
    it. A study resumed after its process died takes the (then FAILED) parent run back."""
    from encoderlab.tracking import ParentRun

    logger = OmegaConf.create({"tracking_uri": None, "artifact_location": None, "heartbeat_s": 30})
    find_by = {"encoderlab.study": "s"}
    opened = [ParentRun.open(logger, "exp", "s-study", {}, find_by) for _ in range(2)]
    owner, worker = opened
    try:
        assert worker.run_id == owner.run_id
        assert owner.heartbeat is not None and worker.heartbeat is None
        assert mlflow_client.get_run(owner.run_id).data.tags["encoderlab.pid"] == str(os.getpid())

        mlflow_client.set_tag(owner.run_id, "encoderlab.pid", "999999999")  # the sweep process died
        resumed = ParentRun.open(logger, "exp", "s-study", {}, find_by)
        opened.append(resumed)
        run = mlflow_client.get_run(resumed.run_id)
        assert resumed.run_id == owner.run_id and run.info.status == "RUNNING"
        assert run.data.tags["encoderlab.error"].startswith("process died")  # marked on the way in
        assert run.data.tags["encoderlab.pid"] == str(os.getpid()) and resumed.heartbeat is not None
    finally:
        for parent in opened:
            parent.stop_heartbeat()
