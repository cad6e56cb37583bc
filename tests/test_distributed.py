"""Distributed fits (Lightning DDP on CPU processes, gloo): one run directory and one MLflow run however
many processes train it, each process a disjoint share of every global batch, validation and test metrics
exact over the whole split, and the same numbers as one process with the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from encoderlab.data.sampler import EpochShuffleSampler, LengthGroupedBatchSampler, eval_batches
from encoderlab.paths import bundled_data_dir
from helpers import SCRATCH_SMALL, all_runs, isolated_env

# the bundled quickstart data, a small scratch encoder, no dropout: one process and two then train the
# same model up to float summation order (dropout masks would be drawn per process)
RUN = [
    "experiment=quickstart",
    *SCRATCH_SMALL,
    "model.dropout=0",
    "dataset.max_train_samples=651",  # 651 = 20 x 32 + 11: the last global batch splits 5 + 6
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "analysis=none",
    "num_threads=1",
]
DDP = ["trainer=ddp_cpu", "dataset.batch_size=16"]  # 2 processes x 16 rows = a global batch of 32
ONE = ["dataset.batch_size=32"]
COMPARED = (
    "val/accuracy",
    "val/loss",
    "val/auroc",
    "test/accuracy",
    "test/loss",
    "test/f1_macro",
    "test/auroc",
)


def _encoderlab(cwd: Path, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "encoderlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


def _metrics(run) -> dict[str, float]:
    return {k: run.data.metrics[k] for k in COMPARED}


@pytest.fixture(scope="module")
def env(tiny_mirror, session_cache) -> dict[str, str]:
    return isolated_env(tiny_mirror, session_cache)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env) -> dict:
    """The same training as 2 DDP processes and as 1 process, in one store."""
    cwd = tmp_path_factory.mktemp("ddp")
    _encoderlab(cwd, env, "train", *RUN, *DDP, "run_name=ddp")
    _encoderlab(cwd, env, "train", *RUN, *ONE, "run_name=one")
    by_name = {r.info.run_name: r for r in all_runs(_client(cwd))}
    return {"cwd": cwd, "env": env, **by_name}


# ---- samplers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("grouped", [False, True])
def test_each_process_gets_its_share_of_the_one_process_batches(grouped):
    lengths = [(7 * i) % 31 + 1 for i in range(103)]

    def make(batch_size, replicas=1, rank=0):
        if grouped:
            return LengthGroupedBatchSampler(
                lengths, batch_size, seed=5, group_size=4, num_replicas=replicas, rank=rank
            )
        return EpochShuffleSampler(len(lengths), batch_size, 5, replicas, rank)

    for epoch in range(2):
        one = make(12)
        one.set_epoch(epoch)
        shares = [make(4, 3, r) for r in range(3)]
        for s in shares:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in shares]
        assert len({len(p) for p in per_rank}) == 1  # the same number of batches in every process
        for k, batch in enumerate(one):  # global batch k = the processes' batch k, in rank order
            joined = [i for p in per_rank for i in p[k]]
            assert joined == batch or (len(batch) < 3 and set(joined) == set(batch))


def test_a_resumed_process_skips_the_batches_it_trained_on():
    s = EpochShuffleSampler(50, 4, seed=1, num_replicas=2, rank=1)
    full = list(s)
    s.set_epoch(0)
    s.resume_at(0, 3)
    assert list(s) == full[3:]


def test_eval_batches_give_every_row_to_exactly_one_process():
    lengths = [(5 * i) % 17 for i in range(101)]
    for replicas in (1, 2, 3):
        rows = [i for r in range(replicas) for b in eval_batches(101, 8, lengths, replicas, r) for i in b]
        assert sorted(rows) == list(range(101))
    assert [len(eval_batches(3, 8, None, 2, r)) for r in range(2)] == [1, 1]  # fewer batches than processes


# ---- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_are_one_run_with_the_metrics_of_one_process(runs):
    cwd, ddp, one = runs["cwd"], runs["ddp"], runs["one"]
    assert len(all_runs(_client(cwd))) == 2  # no run opened by the second process
    assert len(list((cwd / "outputs" / "runs").glob("*/*"))) == 2  # nor a run directory
    assert ddp.info.status == "FINISHED" and ddp.data.tags["encoderlab.processes"] == "2"
    assert one.data.tags["encoderlab.processes"] == "1"
    assert _metrics(ddp) == pytest.approx(_metrics(one), abs=1e-5)
    assert ddp.data.metrics["perf/train_samples_seen"] == 2 * 651  # both processes' rows, 2 epochs
    # every test row once, in the split's order, with the probabilities the metrics were computed from
    preds = pd.read_csv(Path(ddp.data.tags["encoderlab.run_dir"]) / "predictions" / "test_predictions.csv")
    test = pd.read_parquet(bundled_data_dir() / "uci_sentences" / "test.parquet")
    assert preds["text"].tolist() == test["text"].tolist()
    assert preds["correct"].mean() == pytest.approx(ddp.data.metrics["test/accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_into_the_same_run_and_metrics(runs, tmp_path):
    env = runs["env"]
    cmd = [sys.executable, "-m", "encoderlab", "train", *RUN, *DDP, "run_name=ddp"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not list(tmp_path.glob("outputs/runs/*/*/checkpoints/last.ckpt")):  # after epoch 1's validation
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no last.ckpt"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # every process of the run, as a node failure would
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (killed,) = all_runs(_client(tmp_path))
    _encoderlab(tmp_path, env, "resume", killed.info.run_id)
    (resumed,) = all_runs(_client(tmp_path))
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["encoderlab.resumed"] == "1"
    assert _metrics(resumed) == pytest.approx(_metrics(runs["ddp"]), abs=1e-5)


@pytest.mark.slow
def test_torchrun_processes_are_one_run_too(runs, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args = [
        *RUN,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "dataset.batch_size=16",
    ]
    res = subprocess.run([*torchrun, "-m", "encoderlab", "train", *args], cwd=tmp_path, env=runs["env"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    (run,) = all_runs(_client(tmp_path))
    assert len(list((tmp_path / "outputs" / "runs").glob("*/*"))) == 1
    assert _metrics(run) == pytest.approx(_metrics(runs["ddp"]), abs=1e-5)
    # a config error on rank 0: every process ends (none waits for a hand-off that never comes)
    bad = subprocess.run([*torchrun, "-m", "encoderlab", "train", *args, "optimizer.lr=-1"], cwd=tmp_path,
                         env=runs["env"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0
    assert "optimizer.lr" in bad.stderr and "rank 0 stopped" in bad.stderr


@pytest.mark.slow
def test_sweep_trials_can_each_be_a_ddp_run(env, tmp_path):
    """Each trial starts its processes again (the previous trial's are gone, its environment put back)."""
    import yaml

    space = {
        "base": [a for a in RUN if a != "trainer.max_epochs=2"] + ["trainer.max_epochs=1", *DDP],
        "study": {"n_trials": 2, "sampler": "random", "pruner": "none"},
        "params": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
    }
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "ddp_trials.yaml").write_text(yaml.safe_dump(space))
    _encoderlab(tmp_path, env, "sweep", "sweep=ddp_trials")
    trials = [r for r in all_runs(_client(tmp_path)) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2
    assert {(r.info.status, r.data.tags["encoderlab.processes"]) for r in trials} == {("FINISHED", "2")}
