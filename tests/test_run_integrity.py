"""Runs started together keep their own run directory, store and model (issue 23)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import all_runs, tiny_train_cmd


def _hydra_dirs(config_name: str, overrides: list[str]) -> tuple[str, str]:
    """hydra.run.dir and hydra.sweep.dir of one composition of conf/<config_name>.yaml."""
    from hydra import compose, initialize_config_dir

    from encoderlab.config import conf_dir, register_configs

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


@pytest.fixture
def frozen_clock(monkeypatch):
    """Hydra's ${now:...} sees one fixed time: every composition happens 'in the same second'."""
    import hydra.core.utils

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)


@pytest.mark.parametrize(
    "config_name, overrides",
    [("train", []), ("evaluate", ["source=0123456789abcdef0123456789abcdef"])],
)
def test_configs_composed_in_the_same_second_get_different_run_dirs(frozen_clock, config_name, overrides):
    (run_a, sweep_a), (run_b, sweep_b) = (_hydra_dirs(config_name, overrides) for _ in range(2))
    assert "2026-01-01/12-00-00" in run_a and "2026-01-01/12-00-00" in run_b  # the clock is frozen
    assert run_a != run_b and sweep_a != sweep_b
    # the suffix is drawn once per composition: reading the key again gives the same directory
    assert run_a.rsplit("-", 1)[1] == sweep_a.rsplit("-", 1)[1]


@pytest.mark.slow
def test_three_trains_started_together_keep_their_own_dirs_store_and_models(tiny_bert, isolated, cli):
    """Three `encoderlab train` processes in a fresh directory (no store yet): each finishes, in its own
    run directory, and `predict <run id>` serves each run's own model."""
    from mlflow.tracking import MlflowClient

    procs = [
        subprocess.Popen(
            tiny_train_cmd(
                tiny_bert,
                "dataset.max_train_samples=64",
                "trainer.max_steps=3",
                "optimizer.lr=1e-3",
                "analysis=none",
                "probes=none",
                f"seed={seed}",  # different weights, so serving another run's model shows
            ),
            cwd=isolated,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2, 3)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out[-3000:]

    uri = f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = all_runs(client)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    run_dirs = {Path(r.data.tags["encoderlab.run_dir"]) for r in runs}
    assert len(run_dirs) == 3
    assert run_dirs == set((isolated / "outputs" / "runs").glob("*/*"))  # Hydra's dirs are the runs' dirs
    for d in run_dirs:
        assert (d / ".hydra" / "config.yaml").is_file() and (d / "model" / "config.json").is_file()

    def predict(run_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(what `predict <run id>` serves, what the run logged) on the first test texts."""
        dst = isolated / "downloads" / run_id  # not ./<run id>: predict would take that for a directory
        dst.mkdir(parents=True, exist_ok=True)
        logged = client.download_artifacts(run_id, "predictions/test_predictions.csv", str(dst))
        logged = pd.read_csv(logged).head(8)
        out = isolated / f"{run_id}.csv"
        args = ["--output", str(out), "--tracking-uri", uri, "--precision", "32"]
        res = cli("predict", run_id, *logged["text"], *args)
        assert res.code == 0, res.err
        return pd.read_csv(out)["prob_positive"].to_numpy(), logged["prob_positive"].to_numpy()

    served = []
    for run in runs:
        got, logged = predict(run.info.run_id)
        np.testing.assert_allclose(got, logged, atol=1e-5)
        served.append(got)
    # the three models differ, so the comparison above tells them apart
    assert not np.allclose(served[0], served[1], atol=1e-4) and not np.allclose(
        served[1], served[2], atol=1e-4
    )

    # a run directory that now holds another run's model (a shared or reused directory) is not trusted
    first, second = (Path(r.data.tags["encoderlab.run_dir"]) for r in runs[:2])
    shutil.rmtree(first / "model")
    shutil.copytree(second / "model", first / "model")
    got, logged = predict(runs[0].info.run_id)
    np.testing.assert_allclose(got, logged, atol=1e-5)
