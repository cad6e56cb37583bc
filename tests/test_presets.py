"""Every experiment preset runs end to end (Lightning fast_dev_run) on tiny data with a tiny local model."""

from __future__ import annotations

import pytest

from conftest import FAST, all_runs
from test_cli import PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_a_couple_of_steps(cli, tiny_bert, mlflow_client, preset):
    if preset.endswith("_scratch"):  # shrink the from-scratch encoder and its trained tokenizer
        model = [
            "model.d_model=32",
            "model.n_heads=2",
            "model.d_ff=64",
            "model.n_layers=1",
            "tokenizer.vocab_size=500",
        ]
    else:  # swap the pretrained checkpoint for the tiny local BERT
        model = [f"model.name_or_path={tiny_bert}"]
    res = cli("train", f"experiment={preset}", *model, "trainer.fast_dev_run=2", *FAST)
    assert res.code == 0, res.err
    runs = all_runs(mlflow_client)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["experiment_name"] == preset
    assert "test/accuracy" in run.data.metrics
    assert 0.0 <= run.data.metrics["test/accuracy"] <= 1.0
