"""Shared fixtures: a tiny BERT and a tiny offline data mirror (built once per session from the bundled
quickstart data and generated text), an isolated working directory per test (outputs/ and the MLflow
store land there), and an in-process CLI runner. Shared helpers live in helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import REAL_MIRROR, CliResult  # noqa: E402  (reads ENCODERLAB_DATA_DIR before any test)
from tiny import build_tiny_bert, build_tiny_mirror, corpus  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `mirror` need the real offline mirror: skip them, saying why, when there is none."""
    if REAL_MIRROR is not None:
        return
    skip = pytest.mark.skip(
        reason="needs the real offline data mirror: set ENCODERLAB_DATA_DIR to it (e.g. ../shared/data)"
    )
    for item in items:
        if "mirror" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory) -> Path:
    return build_tiny_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_mirror) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), corpus(tiny_mirror))


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
    # an in-process mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: later subprocesses would log
    # into this test's store
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)
    # in-process Hydra runs attach console handlers to the captured (then closed) streams: drop them
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


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
