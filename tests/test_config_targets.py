"""The trainer, callbacks, optimizer and scheduler groups are `_target_` configs: a user swaps the optimizer,
adds a Trainer flag or a callback in YAML alone, and a wrong key is a config error naming what the target
takes, before any run starts."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from helpers import FAST, all_runs


class Recorder(L.Callback):
    """A user's own callback (named in YAML): writes what the fit ran with to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        opt = trainer.optimizers[0]
        seen = {
            "optimizer": type(opt).__name__,
            "momentum": opt.defaults.get("momentum"),
            "callbacks": [type(c).__name__ for c in trainer.callbacks],
        }
        Path(self.path).write_text(json.dumps(seen))


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


@pytest.mark.slow
def test_optimizer_trainer_flag_and_callback_from_yaml_alone(cli, tiny_bert, mlflow_client, isolated):
    own = isolated / "my_conf"
    _write(own, "optimizer/sgd.yaml", "_target_: torch.optim.SGD\n_partial_: true\nlr: 0.05\nmomentum: 0.9\n")
    # max_time: a Trainer flag encoderlab's YAML does not list; Lightning enforces it with a Timer callback
    _write(own, "trainer/mine.yaml", "defaults:\n  - cpu\n  - _self_\nmax_time: '00:00:30:00'\n")
    _write(
        own,
        "callbacks/mine.yaml",
        "defaults:\n  - default\n  - _self_\n"
        f"recorder:\n  _target_: test_config_targets.Recorder\n  path: {isolated / 'seen.json'}\n",
    )
    res = cli(
        "train",
        "--config-dir",
        str(own),
        "model=hf",
        f"model.name_or_path={tiny_bert}",
        "optimizer=sgd",
        "trainer=mine",
        "callbacks=mine",
        "dataset.max_train_samples=32",
        "trainer.max_steps=2",
        "analysis=none",
        "probes=none",
        *FAST,
    )
    assert res.code == 0, res.err
    seen = json.loads((isolated / "seen.json").read_text())
    assert seen["optimizer"] == "SGD" and seen["momentum"] == 0.9
    assert "Timer" in seen["callbacks"]  # max_time reached the Trainer
    assert {"ModelCheckpoint", "LearningRateMonitor", "Throughput", "Recorder"} <= set(seen["callbacks"])
    (run,) = all_runs(mlflow_client)
    assert run.data.tags["encoderlab.optimizer"] == "SGD"
    assert run.data.params["optimizer._target_"] == "torch.optim.SGD"
    assert run.data.metrics["perf/train_samples_seen"] == 32  # 2 steps of 16: the Throughput callback


@pytest.mark.parametrize(
    ("override", "words"),
    [
        # a typo of an argument in the YAML: composition fails, with what the target takes
        (
            "trainer.max_epoch=3",
            ["'trainer.max_epoch'", "Did you mean 'max_epochs'", "lightning.pytorch.Trainer"],
        ),
        ("optimizer.lrr=1", ["'optimizer.lrr'", "torch.optim.AdamW", "weight_decay", "Did you mean 'lr'"]),
        # added with '+': composition passes, the signature check catches it before the run
        (
            "+trainer.max_epoch=3",
            ["'trainer.max_epoch'", "Did you mean 'max_epochs'", "accumulate_grad_batches"],
        ),
        ("+optimizer.lrr=1", ["'optimizer.lrr'", "torch.optim.AdamW", "betas"]),
        (
            "+callbacks.checkpoint.monitr=val/loss",
            ["'callbacks.checkpoint.monitr'", "ModelCheckpoint", "monitor"],
        ),
        ("scheduler.warmup_step=5", ["'scheduler.warmup_step'", "warmup_steps", "warmup_ratio"]),
        # a real argument the YAML does not list: how to add it
        ("trainer.benchmark=true", ["'trainer.benchmark'", "+trainer.benchmark="]),
        ("trainer.max_steps=1.5", ["'trainer.max_steps'", "1.5", "int"]),
        # encoderlab's own arguments: where they come from instead
        ("+trainer.callbacks=[]", ["'trainer.callbacks'", "callbacks group"]),
        (
            "optimizer._target_=torch.optim.Adamm",
            ["'optimizer._target_'", "torch.optim.Adamm", "could not be imported"],
        ),
    ],
)
def test_wrong_target_keys_are_config_errors_before_the_run(cli, tiny_bert, isolated, override, words):
    res = cli("train", "experiment=sst2_minilm", f"model.name_or_path={tiny_bert}", override, *FAST)
    assert res.code == 2, res.err
    (line,) = [x for x in res.err.splitlines() if x.startswith("error:")]
    for word in ["Config error", *words]:
        assert word in line, f"{word!r} missing from: {line}"
    assert not (isolated / "outputs" / "mlflow.db").exists(), "a run was started"
