"""Shared fixtures: a tiny BERT and a tiny offline data mirror (built once per session), an isolated
working directory per test (outputs/ and the MLflow store land there), and an in-process CLI runner."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import SHARED_DATA, build_tiny_bert, build_tiny_mirror  # noqa: E402

# keep every run small and quiet
FAST = ["trainer.enable_progress_bar=false", "dataset.batch_size=16", "dataset.eval_batch_size=64"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    sst2 = pd.read_parquet(SHARED_DATA / "sst2/train.parquet")["sentence"].tolist()[:20000]
    imdb = pd.read_parquet(SHARED_DATA / "imdb/train.parquet")["text"].tolist()[:1000]
    trec = pd.read_parquet(SHARED_DATA / "trec/train.parquet")["text"].tolist()
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), sst2 + imdb + trec)


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory) -> Path:
    return build_tiny_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, tiny_mirror, session_cache):
    """Each test runs in its own directory, offline, against the tiny mirror."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENCODERLAB_DATA_DIR", str(tiny_mirror))
    monkeypatch.setenv("ENCODERLAB_CACHE_DIR", str(session_cache / "encoderlab"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(session_cache / "hf_datasets"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    yield tmp_path
    # in-process Hydra runs attach console handlers to the captured (then closed) streams: drop them
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `encoderlab ...` in-process (no interpreter start-up per call); returns code, stdout, stderr."""
    from encoderlab.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as ex:  # argparse-style exits from Hydra flags
            code = ex.code if isinstance(ex.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def mlflow_client(isolated):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}")


def all_runs(client) -> list:
    """Every run in every experiment of the store."""
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []
