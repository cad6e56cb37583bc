"""A run whose training loss becomes NaN/inf stops with a clear error and exports nothing; a model whose
weights hold NaN/inf is refused by predict (and evaluate, which loads the same way)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import FAST, all_runs, artifacts


@pytest.mark.slow
def test_nan_loss_stops_the_run_failed_with_nothing_exported(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=160",
        "optimizer.lr=1e6",
        "trainer.gradient_clip_val=null",
        *FAST,
    )
    assert res.code == 1, res.err
    for words in ("Training diverged", "NaN", "global step", "16 sequences x", "optimizer.lr=1e+06"):
        assert words in res.err, res.err
    assert "optimizer.lr" in res.err and "gradient_clip_val" in res.err
    assert "Traceback" not in res.err
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FAILED"
    assert "Training diverged" in run.data.tags["encoderlab.error"]
    assert not any(a.startswith("model/") for a in artifacts(mlflow_client, run.info.run_id))
    run_dir = run.data.tags["encoderlab.run_dir"]
    assert not (Path(run_dir) / "model").exists()


def _nan_copy(src, dst, tensor: str | None):
    """An exported-model copy of a save_pretrained directory with one tensor of its safetensors set to
    NaN (None: left intact)."""
    from safetensors.torch import load_file, save_file

    from encoderlab.models.trained import write_metadata

    shutil.copytree(src, dst)
    write_metadata(dst, ["negative", "positive"], 64, "hf")
    if tensor is not None:
        weights = load_file(dst / "model.safetensors")
        weights[tensor][0] = float("nan")
        save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_predict_and_evaluate_refuse_a_model_with_nan_weights(cli, tiny_bert, isolated):
    from safetensors.torch import load_file

    name = next(k for k in load_file(tiny_bert / "model.safetensors") if "word_embeddings" in k)
    good = _nan_copy(tiny_bert, isolated / "good", None)
    res = cli("predict", str(good), "The movie is good.")
    assert res.code == 0, res.err  # the same model with finite weights predicts

    bad = _nan_copy(tiny_bert, isolated / "diverged", name)
    res = cli("predict", str(bad), "The movie is good.")
    assert res.code == 1
    assert "\nerror: " in "\n" + res.err and "Traceback" not in res.err, res.err
    assert str(bad) in res.err and "non-finite weights" in res.err
    assert name in res.err  # the first bad tensor, by name

    res = cli("evaluate", f"source={bad}", "dataset=sst2")  # loads the same way: refused too
    assert res.code == 1 and "non-finite weights" in res.err and "Traceback" not in res.err


def _fake_trainer(step: int):
    from types import SimpleNamespace

    import torch

    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD(params, lr=0.5)
    return SimpleNamespace(
        global_step=step, optimizers=[optimizer], gradient_clip_val=1.0, precision="bf16-mixed"
    )


@pytest.mark.parametrize("defer", [False, True])
def test_guard_names_the_step_of_the_bad_loss_checked_at_once_or_a_step_later(defer):
    """On CPU the bad loss raises at its own step; deferred (a GPU's way, no sync per step) it raises at
    the next step, or when training ends, still naming the step that produced it."""
    import torch

    from encoderlab.callbacks import DivergenceGuard
    from encoderlab.errors import DivergedError, EncoderlabError

    batch = {"input_ids": torch.zeros(4, 7, dtype=torch.long), "labels": torch.zeros(4)}
    guard = DivergenceGuard(defer=defer)
    for step, loss in enumerate([0.7, 0.6]):  # finite losses pass
        guard.on_train_batch_start(_fake_trainer(step), None, batch, step)
        guard.on_train_batch_end(_fake_trainer(step), None, {"loss": torch.tensor(loss)}, batch, step)
    guard.on_train_batch_start(_fake_trainer(2), None, batch, 2)
    bad = {"loss": torch.tensor(float("inf"))}
    if defer:
        guard.on_train_batch_end(_fake_trainer(2), None, bad, batch, 2)  # not read yet
        with pytest.raises(DivergedError) as caught:
            guard.on_train_end(_fake_trainer(3), None)
    else:
        with pytest.raises(DivergedError) as caught:
            guard.on_train_batch_end(_fake_trainer(2), None, bad, batch, 2)
    message = str(caught.value)
    assert isinstance(caught.value, EncoderlabError)  # reported without a traceback, exit code 1
    assert "became inf at global step 2" in message
    assert "4 sequences x 7 tokens" in message and "learning rate 0.5" in message
    assert "trainer.precision=32" in message  # bf16-mixed: full precision is worth a try
    assert "gradient_clip_val, now 1.0" in message
