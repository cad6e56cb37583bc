"""SLURM without a cluster: `train -m` grids through Hydra's submitit launcher (its local executor), and
preemption -> `scontrol requeue` -> the requeued job continuing the same MLflow run, with SLURM's
environment faked for one process and a fake `scontrol` that does what SLURM does on a requeue."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import SCRATCH_SMALL, all_runs, tiny_train_cmd

try:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401

    HAVE_SUBMITIT = True
except ImportError:
    HAVE_SUBMITIT = False


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_SUBMITIT, reason="needs hydra-submitit-launcher (pip install 'encoderlab[slurm]')"
)
def test_submitit_local_grid_is_one_parent_with_a_finished_child_per_job(isolated, tiny_bert, mlflow_client):
    cmd = tiny_train_cmd(
        tiny_bert,
        "hydra/launcher=submitit_local",
        "seed=1,2",
        "dataset.max_train_samples=32",
        "trainer.max_steps=1",
        "analysis=none",
        "probes=none",
        "num_threads=1",
    )
    cmd.insert(cmd.index("train") + 1, "-m")
    res = subprocess.run(cmd, cwd=isolated, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = all_runs(mlflow_client)
    (parent,) = [r for r in runs if r.data.tags.get("encoderlab.sweep") == "grid"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["encoderlab.launcher"].endswith("submitit_launcher.LocalLauncher")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2"]
    run_dirs = {c.data.tags["encoderlab.run_dir"] for c in children}
    assert len(run_dirs) == 2 and all((Path(d) / "model").is_dir() for d in run_dirs)
    # each job ran in its own submitit process, not in the grid's
    assert {c.data.tags["encoderlab.pid"] for c in children}.isdisjoint({parent.data.tags["encoderlab.pid"]})
    assert parent.data.metrics["sweep/children_finished"] == 2


def test_a_pickled_grid_callback_hands_the_parent_run_id_to_a_job_elsewhere(monkeypatch):
    """submitit pickles Hydra's callbacks with each job: the job gets the grid's parent run id even when
    its environment is not the submitting shell's (sbatch --export=NONE, another machine)."""
    from encoderlab.multirun import MLflowParentRun
    from encoderlab.tracking import PARENT_RUN_ENV

    class Parent:  # what on_multirun_start leaves on the callback: the open parent run
        run_id = "a" * 32

    callback = MLflowParentRun()
    callback.parent = Parent()
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    in_job = pickle.loads(pickle.dumps(callback))
    assert in_job.parent is None  # the run's client and heartbeat stay with the grid process
    in_job.on_job_start(config=None)
    assert os.environ[PARENT_RUN_ENV] == "a" * 32


# ---- preemption -> requeue -> resume ------------------------------------------------------------------
JOB_ID = "4242"
# one SLURM task on one node, as `srun` would describe it to the process
SLURM_ENV = {
    "SLURM_JOB_ID": JOB_ID,
    "SLURM_JOB_NAME": "encoderlab",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
    "SLURM_JOB_NUM_NODES": "1",
}
# what SLURM does on `scontrol requeue` of a running job: it ends the job with SIGTERM (then requeues it)
FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "$FAKE_SCONTROL_LOG"
kill -TERM $PPID
"""
# the quickstart recipe shrunk: 3 epochs of 20 batches, validation at each epoch end
RECIPE = [
    "experiment=quickstart",
    *SCRATCH_SMALL,
    "dataset.max_train_samples=640",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=5",
    "trainer.enable_progress_bar=false",
    "analysis=none",
    "probes=none",
    "num_threads=1",
]
TRAIN = [sys.executable, "-m", "encoderlab", "train", *RECIPE]


def fake_scontrol(where: Path, script: str = FAKE_SCONTROL) -> Path:
    bin_dir = where / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "scontrol"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def checkpoint_epoch(path: Path) -> int | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


@pytest.mark.slow  # three tiny trainings in subprocesses (one in the background)
def test_sigusr1_requeues_the_job_and_the_requeued_job_finishes_the_same_run(
    isolated, tmp_path_factory, mlflow_client
):
    from mlflow.tracking import MlflowClient

    # the same command left alone, outside SLURM, for the metrics to compare with
    ref_dir = tmp_path_factory.mktemp("uninterrupted")
    ref_env = {**os.environ, "ENCODERLAB_CACHE_DIR": str(ref_dir / "cache")}
    ref = subprocess.Popen(
        TRAIN, cwd=ref_dir, env=ref_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log_file = isolated / "scontrol.log"
    env = {
        **os.environ,
        **SLURM_ENV,
        "PATH": f"{fake_scontrol(isolated)}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SCONTROL_LOG": str(log_file),
    }
    try:
        proc = subprocess.Popen(
            TRAIN, cwd=isolated, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 300
        while True:  # SIGUSR1 (sbatch --signal=USR1@90) once the first validation saved last.ckpt
            ckpts = list((isolated / "outputs" / "runs").glob("*/*/checkpoints/last.ckpt"))
            saved = checkpoint_epoch(ckpts[0]) if ckpts else None
            if saved is not None and saved < 2:  # a validation saved it, an epoch is left to train
                proc.send_signal(signal.SIGUSR1)
                break
            assert proc.poll() is None, f"train ended before the signal: {proc.communicate()[1][-3000:]}"
            assert time.time() < deadline, "train did not reach its first validation"
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        for p in (ref, proc):
            if p.poll() is None and p is not ref:
                p.kill()
                p.wait()

    # the requeue: last.ckpt saved at a batch boundary, `scontrol requeue <job>`, SLURM's SIGTERM ends it
    assert proc.returncode == 143, err[-3000:]
    assert log_file.read_text() == f"requeue {JOB_ID}\n"
    (killed,) = all_runs(mlflow_client)
    assert killed.info.status == "KILLED" and killed.data.tags["encoderlab.error"] == "killed by SIGTERM"
    assert killed.data.tags["encoderlab.slurm_job"] == JOB_ID
    assert f"Requeued SLURM job {JOB_ID}" in out and "Traceback" not in err
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    in_epoch = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert state["epoch"] == saved + 1 and 0 < in_epoch < 20  # saved mid-epoch (20 batches), at the signal
    assert not list((isolated / "outputs" / "runs").glob("*/*/hpc_ckpt_*.ckpt"))  # Lightning's did not run

    # the requeued job: the same batch script, the same job id, SLURM_RESTART_COUNT=1
    res = subprocess.run(
        TRAIN,
        cwd=isolated,
        env={**env, "SLURM_RESTART_COUNT": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (resumed,) = all_runs(mlflow_client)  # the same run, no new one
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["encoderlab.resumed"] == "1"
    assert resumed.data.tags["encoderlab.resumed_from"] == "KILLED: killed by SIGTERM"
    assert (Path(resumed.data.tags["encoderlab.run_dir"]) / "model" / "model.safetensors").is_file()

    # ... ending with the metrics of the run left alone (CPU, num_workers=0: equal to 1e-6)
    assert ref.wait(timeout=600) == 0, ref.stdout.read()[-3000:]
    ref_client = MlflowClient(f"sqlite:///{ref_dir / 'outputs' / 'mlflow.db'}")
    (reference,) = all_runs(ref_client)
    finals = {k: v for k, v in reference.data.metrics.items() if k.startswith(("val/", "test/"))}
    assert finals and {k: resumed.data.metrics.get(k) for k in finals} == pytest.approx(finals, abs=1e-6)
    want = {m.step: m.value for m in ref_client.get_metric_history(reference.info.run_id, "train/loss_step")}
    got = {m.step: m.value for m in mlflow_client.get_metric_history(resumed.info.run_id, "train/loss_step")}
    assert got == pytest.approx(want, abs=1e-6)


# ---- scontrol missing or refusing: one clear log line, training goes on ------------------------------
@pytest.mark.parametrize(
    ("script", "says"),
    [
        (None, "`scontrol` is not on PATH"),
        (
            "#!/bin/sh\necho 'scontrol: error: Requeue of job 4242 not allowed' >&2\nexit 1\n",
            "exited with 1 (scontrol: error: Requeue of job 4242 not allowed; a job is requeued only when",
        ),
    ],
)
def test_a_missing_or_failing_scontrol_is_one_log_line_not_a_crash(
    tmp_path, monkeypatch, caplog, script, says
):
    from encoderlab.slurm import SlurmJob, requeue

    bin_dir = fake_scontrol(tmp_path, script) if script else tmp_path
    monkeypatch.setenv("PATH", str(bin_dir))
    with caplog.at_level(logging.INFO, logger="encoderlab.slurm"):
        assert requeue(SlurmJob(JOB_ID), "/runs/x/checkpoints/last.ckpt") is False
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and f"SLURM job {JOB_ID} not requeued" in record.getMessage()
    assert says in record.getMessage() and "Training goes on" in record.getMessage()


def test_an_array_task_is_requeued_and_found_by_its_array_id():
    from encoderlab.slurm import SlurmJob

    env = {**SLURM_ENV, "SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"}
    job = SlurmJob.from_env({**env, "SLURM_RESTART_COUNT": "2"})
    assert job.requeue_id == "4242_3" and job.requeued
    assert job.tags(grid_job=1) == {
        "encoderlab.slurm_job": "4242_3#1",
        "encoderlab.slurm_job_id": "4250",
        "encoderlab.slurm_restart_count": "2",
        "encoderlab.slurm_array_task_id": "3",
    }
    assert not SlurmJob.from_env(env).requeued and SlurmJob.from_env({}) is None
