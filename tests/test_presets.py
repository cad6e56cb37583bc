"""Every experiment preset runs end to end (Lightning fast_dev_run) on tiny data with a tiny local model;
the quickstart preset trains for real on the bundled data, with no mirror and no download."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from encoderlab.paths import bundled_data_dir
from helpers import FAST, PRESETS, SCRATCH_SMALL, all_runs, artifacts

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_a_couple_of_steps(cli, tiny_bert, mlflow_client, preset):
    cfg = yaml.safe_load(cli("train", "--cfg", "job", f"experiment={preset}").out)
    if cfg["model"]["_target_"].endswith(
        "ScratchEncoder"
    ):  # shrink the from-scratch encoder and its trained tokenizer
        model = SCRATCH_SMALL
    else:  # swap the pretrained checkpoint for the tiny local BERT
        model = [f"model.name_or_path={tiny_bert}"]
    res = cli("train", f"experiment={preset}", *model, "trainer.fast_dev_run=2", *FAST)
    assert res.code == 0, res.err
    runs = all_runs(mlflow_client)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["experiment_name"] == preset
    headline = "test/f1_micro" if cfg["dataset"].get("task") == "multilabel" else "test/accuracy"
    assert headline in run.data.metrics
    assert 0.0 <= run.data.metrics[headline] <= 1.0


def test_quickstart_trains_on_the_bundled_data_without_a_mirror(cli, mlflow_client, monkeypatch, isolated):
    """`encoderlab train experiment=quickstart` as a fresh install runs it: no ENCODERLAB_DATA_DIR, the
    bundled UCI sentences, a tokenizer trained on them; one epoch instead of the preset's few."""
    monkeypatch.delenv("ENCODERLAB_DATA_DIR")
    res = cli(
        "train",
        "experiment=quickstart",
        "trainer.max_epochs=1",
        "analysis=none",
        "probes=none",
        "trainer.enable_progress_bar=false",
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset.name"] == "uci_sentences"
    # logged by name, not by this installation's path, so the config reruns on another machine
    assert run.data.params["dataset.data_files.train"] == "${bundled:uci_sentences/train.parquet}"
    logged = Path(mlflow_client.download_artifacts(run.info.run_id, "config/config.yaml", str(isolated)))
    data_files = OmegaConf.load(logged).dataset.data_files
    assert Path(data_files.test) == bundled_data_dir() / "uci_sentences" / "test.parquet"
    m = run.data.metrics
    assert (m["data/train_rows"], m["data/validation_rows"], m["data/test_rows"]) == (2160, 240, 600)
    assert m["test/accuracy"] > 0.6  # one epoch on 2,160 sentences already beats chance (0.5) clearly
    assert {"test/f1_macro", "test/auroc", "test/loss"} <= set(m)
    arts = artifacts(mlflow_client, run.info.run_id)
    assert {"model/model/config.json", "model/model/model.safetensors", "model/model/tokenizer.json"} <= arts
