"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import sys
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


def tiny_train_cmd(tiny_bert: Path, *overrides: str) -> list[str]:
    """`encoderlab train` as a subprocess command: the SST-2 recipe on the tiny BERT, small and quiet."""
    model = f"model.name_or_path={tiny_bert}"
    return [sys.executable, "-m", "encoderlab", "train", "experiment=sst2_minilm", model, *overrides, *FAST]
