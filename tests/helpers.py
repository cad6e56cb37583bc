"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from encoderlab.config import conf_dir

# keep every run small and quiet
FAST = ["trainer.enable_progress_bar=false", "dataset.batch_size=16", "dataset.eval_batch_size=64"]

# a from-scratch encoder and its trained tokenizer, shrunk for runs that only check the plumbing
SCRATCH_SMALL = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ff=64",
    "model.n_layers=1",
    "tokenizer.vocab_size=500",
]

PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def _real_mirror() -> Path | None:
    # read at import, before conftest points ENCODERLAB_DATA_DIR at the tiny mirror for every test
    root = os.environ.get("ENCODERLAB_DATA_DIR")
    return Path(root).expanduser().resolve() if root and Path(root).expanduser().is_dir() else None


# the real offline mirror for tests marked `mirror` (conftest skips them without it); .ci/run sets it
REAL_MIRROR = _real_mirror()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def all_runs(client) -> list:
    """Every run in every experiment of the store."""
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []


def artifacts(client, run_id: str, path: str = "") -> set[str]:
    """Every artifact path of a run, recursively."""
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


SERVER_START_S = 180  # `mlflow server` imports its web stack: tens of seconds on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 serving its artifacts from <root>/art, in its own process group
    so that a kill takes its web workers too; the store (`backend`, default SQLite <root>/server.db) and
    artifacts outlive restarts on the same port. Its output goes to <root>/server.log."""

    def __init__(self, root: Path, backend: str | None = None, workers: int = 1) -> None:
        self.root, self.port = root, free_port()
        self.backend, self.workers = backend or f"sqlite:///{root / 'server.db'}", workers
        self.proc: subprocess.Popen | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.root / "server.db"

    @property
    def artifacts_destination(self) -> Path:
        return self.root / "art"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--backend-store-uri", self.backend, "--workers", str(self.workers)]
        cmd += ["--serve-artifacts", "--artifacts-destination", str(self.artifacts_destination)]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def healthy(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.uri}/health", timeout=1).ok
        except requests.RequestException:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


def tiny_train_cmd(tiny_bert: Path, *overrides: str) -> list[str]:
    """`encoderlab train` as a subprocess command: the SST-2 recipe on the tiny BERT, small and quiet."""
    model = f"model.name_or_path={tiny_bert}"
    return [sys.executable, "-m", "encoderlab", "train", "experiment=sst2_minilm", model, *overrides, *FAST]


def training_started(db) -> bool:
    """A RUNNING run has logged a training step (read-only: the MLflow store belongs to the subprocess)."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute(
                "SELECT 1 FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                "WHERE m.key = 'train/loss_step' AND r.status = 'RUNNING' LIMIT 1"
            ).fetchall()
    except sqlite3.Error:  # tables not created yet, or locked by a write
        return False
    return bool(rows)


def train_then_signal(
    isolated: Path, tiny_bert: Path, signum: int, *grid: str
) -> tuple[subprocess.CompletedProcess, int]:
    """`encoderlab train` (`train -m` with grid overrides) on the tiny BERT, sent `signum` once it trained a
    step: its result and its pid."""
    cmd = tiny_train_cmd(
        tiny_bert, "trainer.max_epochs=200", "trainer.log_every_n_steps=1", "analysis=none", *grid
    )
    if grid:  # `encoderlab train -m ...`
        cmd.insert(cmd.index("train") + 1, "-m")
    proc = subprocess.Popen(cmd, cwd=isolated, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not training_started(isolated / "outputs" / "mlflow.db"):
            assert proc.poll() is None, f"train exited before it trained: {proc.communicate()[1][-3000:]}"
            assert time.time() < deadline, "train did not start training"
            time.sleep(0.3)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.pid


def isolate(mp, workdir: Path, tiny_mirror: Path, session_cache: Path) -> None:
    """What the `isolated` fixture does for one test, for a module-scoped fixture's MonkeyPatch context:
    run in `workdir`, offline, against the tiny mirror, with the session's caches and the default store."""
    mp.chdir(workdir)
    mp.setenv("ENCODERLAB_DATA_DIR", str(tiny_mirror))
    mp.setenv("ENCODERLAB_CACHE_DIR", str(session_cache / "encoderlab"))
    mp.setenv("HF_DATASETS_CACHE", str(session_cache / "hf_datasets"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


def isolated_env(mirror: Path, cache: Path) -> dict[str, str]:
    """The environment of a subprocess started by a module-scoped fixture: offline, against `mirror`, with
    the session's caches and the default store."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(
        ENCODERLAB_DATA_DIR=str(mirror),
        ENCODERLAB_CACHE_DIR=str(cache / "encoderlab"),
        HF_DATASETS_CACHE=str(cache / "hf_datasets"),
        HF_HUB_OFFLINE="1",
    )
    return env
