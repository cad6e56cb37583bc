"""`encoderlab resume`: a train run killed mid-training (kill -9, SIGTERM) continues from its last.ckpt
into the same MLflow run and ends with the metrics of the run that was left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import SCRATCH_SMALL, all_runs

# the quickstart recipe, shrunk: 4 epochs of ~2 s, validation at each epoch end, fixed seed
RECIPE = [
    "experiment=quickstart",
    *SCRATCH_SMALL,
    "trainer.max_epochs=4",
    "trainer.log_every_n_steps=5",
    "trainer.enable_progress_bar=false",
    "analysis=none",
    "probes=none",
    "num_threads=1",
]


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "encoderlab", "train", *RECIPE, *overrides]


class Uninterrupted:
    """The recipe trained start to end in its own directory, started once (in the background) for the module."""

    def __init__(self, where: Path) -> None:
        self.where = where
        env = {**os.environ, "ENCODERLAB_CACHE_DIR": str(where / "cache"), "HF_DATASETS_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            train_cmd(), cwd=where, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._run = None

    def run(self):
        """(client, run) once it finished."""
        from mlflow.tracking import MlflowClient

        if self._run is None:
            out = self.proc.communicate(timeout=600)[0]
            assert self.proc.returncode == 0, out[-3000:]
            client = MlflowClient(f"sqlite:///{self.where / 'outputs' / 'mlflow.db'}")
            (self._run,) = all_runs(client)
            self.client = client
        return self.client, self._run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ref = Uninterrupted(tmp_path_factory.mktemp("uninterrupted"))
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a last.ckpt was saved in (None while there is none); the file is replaced atomically."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def train_until(isolated: Path, stop) -> tuple[subprocess.Popen, Path]:
    """`encoderlab train` in a subprocess, `stop(proc, last_ckpt)` polled until it returns True."""
    proc = subprocess.Popen(
        train_cmd(), cwd=isolated, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    try:
        while True:
            ckpts = list((isolated / "outputs" / "runs").glob("*/*/checkpoints/last.ckpt"))
            if ckpts and stop(proc, ckpts[0]):
                return proc, ckpts[0]
            assert proc.poll() is None, f"train ended before the signal: {proc.communicate()[0][-3000:]}"
            assert time.time() < deadline, "train did not reach the point of the signal"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def assert_same_training(client, resumed, ref_client, ref) -> None:
    """Same final val/test metrics (1e-6), same validation history, and every training step the left-alone
    run logged is there once with its value (a step logged before the kill and again after is equal)."""
    finals = {k: v for k, v in ref.data.metrics.items() if k.startswith(("val/", "test/"))}
    assert finals and {k: resumed.data.metrics.get(k) for k in finals} == pytest.approx(finals, abs=1e-6)
    for key in [k for k in ref.data.metrics if k.startswith("val/")] + ["train/loss_step"]:
        want = {m.step: m.value for m in ref_client.get_metric_history(ref.info.run_id, key)}
        got = client.get_metric_history(resumed.info.run_id, key)
        assert {m.step for m in got} == set(want), key
        for m in got:
            assert m.value == pytest.approx(want[m.step], abs=1e-6), (key, m.step)
        if key.startswith("val/"):
            # one point per epoch, none twice and none missing (a value equal to an earlier one included)
            assert len(got) == len(want) == 4, key


@pytest.mark.slow  # trains a tiny from-scratch encoder in subprocesses
def test_kill_9_after_the_second_validation_then_resume_ends_like_the_run_left_alone(
    isolated, cli, mlflow_client, uninterrupted
):
    def second_validation_saved(proc, ckpt) -> bool:
        if checkpoint_epoch(ckpt) == 1:  # saved at the end of the second epoch's validation
            proc.send_signal(signal.SIGKILL)
            return True
        return False

    proc, ckpt = train_until(isolated, second_validation_saved)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (killed,) = all_runs(mlflow_client)
    assert killed.info.status == "RUNNING"  # nothing could mark it
    assert checkpoint_epoch(ckpt) == 1  # a complete last.ckpt

    res = cli("resume", killed.info.run_id)
    assert res.code == 0, res.err
    (resumed,) = all_runs(mlflow_client)  # the same run, no new one
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["encoderlab.resumed"] == "1"
    assert (Path(resumed.data.tags["encoderlab.run_dir"]) / "model" / "model.safetensors").is_file()
    assert_same_training(mlflow_client, resumed, *uninterrupted.run())


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_last_ckpt_marks_killed_and_resume_finishes_it(
    isolated, cli, mlflow_client, uninterrupted
):
    def first_validation_saved(proc, ckpt) -> bool:
        if checkpoint_epoch(ckpt) == 0:  # training the second epoch now
            time.sleep(0.3)  # into the epoch
            proc.send_signal(signal.SIGTERM)
            return True
        return False

    proc, ckpt = train_until(isolated, first_validation_saved)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    (killed,) = all_runs(mlflow_client)
    assert killed.info.status == "KILLED" and killed.data.tags["encoderlab.error"] == "killed by SIGTERM"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # loadable, the full training state
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(state)
    assert "rng" in state["callbacks"]["LastCheckpoint"]
    in_epoch = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert state["epoch"] == 1 and 0 < in_epoch < 68  # saved mid-epoch (68 batches), at the signal

    res = cli("resume", killed.data.tags["encoderlab.run_dir"])  # by run directory this time
    assert res.code == 0, res.err
    (resumed,) = all_runs(mlflow_client)
    assert resumed.info.status == "FINISHED" and "encoderlab.error" not in resumed.data.tags
    assert resumed.data.tags["encoderlab.resumed_from"] == "KILLED: killed by SIGTERM"
    assert_same_training(mlflow_client, resumed, *uninterrupted.run())


# ---- what cannot be resumed: a clear error, exit 1, the run left as it was -----------------------------
def logged_run(client, isolated: Path, status: str, last_ckpt: bool = False) -> tuple[str, Path]:
    """An MLflow run with a run directory holding a composed train config (no training), ended `status`."""
    from omegaconf import OmegaConf

    from encoderlab.compose import compose

    run_dir = isolated / "outputs" / "runs" / "2026-01-01" / "12-00-00-quickstart-abcdef"
    cfg, _ = compose(["experiment=quickstart"], run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    if last_ckpt:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not read: the run is refused before")
    run = client.create_run(client.create_experiment("quickstart"), tags={"encoderlab.run_dir": str(run_dir)})
    client.set_tag(run.info.run_id, "encoderlab.error", "killed by SIGTERM")
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id, run_dir


@pytest.mark.parametrize(
    ("status", "last_ckpt", "says"),
    [
        ("FINISHED", True, ["is FINISHED: there is nothing to resume", "encoderlab reproduce"]),
        ("KILLED", False, ["has no checkpoints/last.ckpt", "callbacks.last=null", "before encoderlab kept"]),
    ],
)
def test_a_run_that_cannot_be_resumed_is_refused_and_left_as_it_was(
    cli, isolated, mlflow_client, status, last_ckpt, says
):
    run_id, run_dir = logged_run(mlflow_client, isolated, status, last_ckpt)
    before = mlflow_client.get_run(run_id)
    for target in (run_id, str(run_dir)):
        res = cli("resume", target)
        assert res.code == 1 and res.err.startswith("error: ")
        assert all(s in res.err for s in says), res.err
        assert "Traceback" not in res.err
    after = mlflow_client.get_run(run_id)
    assert (after.info.status, after.info.end_time, after.data.tags) == (
        before.info.status,
        before.info.end_time,
        before.data.tags,
    )
    assert not (run_dir / "train.log").exists()  # nothing written to the run directory


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("0123456789abcdef0123456789abcdef", "No MLflow run with id 0123456789abcdef0123456789abcdef"),
        ("no/such/run-dir", "'no/such/run-dir' is neither a run directory nor an MLflow run id"),
        (".", "has no .hydra/config.yaml: not the run directory of an `encoderlab train` run"),
    ],
)
def test_resume_of_something_that_is_not_a_run_says_so(cli, target, says):
    res = cli("resume", target)
    assert res.code == 1 and says in res.err and "Traceback" not in res.err, res.err
