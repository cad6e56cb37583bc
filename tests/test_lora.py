"""LoRA (model.peft=lora, the peft library): a frozen encoder with trained adapters and head, exported
merged so that every loader reads a plain transformers model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST, all_runs, artifacts, isolated_env, tiny_train_cmd, training_started

LORA = ["model.peft=lora", "model.lora.r=4", "model.lora.alpha=8"]
TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "not bad at all"]
PEFT_PREFIX = "model.hf_model.base_model.model."  # a LoRA run's checkpoint keys


def lora_net(tiny_bert: Path, **lora):
    from encoderlab.models.hf_encoder import HFEncoderClassifier

    settings = {"r": 4, "alpha": 8, **lora}
    return HFEncoderClassifier(str(tiny_bert), 2, {0: "negative", 1: "positive"}, peft="lora", lora=settings)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_mirror, session_cache, tiny_bert):
    """One LoRA run of the tiny BERT on the SST-2 recipe (2 epochs, validated each): (run dir, run, client,
    console output)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("lora_run")
    cmd = tiny_train_cmd(
        tiny_bert,
        *LORA,
        "dataset.max_train_samples=128",
        "trainer.max_epochs=2",
        "trainer.val_check_interval=8",
        "optimizer.lr=5e-3",
        "num_threads=1",
    )
    env = isolated_env(tiny_mirror, session_cache)
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    (run,) = all_runs(client)
    return Path(run.data.tags["encoderlab.run_dir"]), run, client, res.stdout + res.stderr


def best_state(run_dir: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def encode(directory: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(directory)(TEXTS, padding=True, return_tensors="pt"))


def test_trainable_parameters_are_the_adapters_and_head_as_peft_counts_them(lora_run, tiny_bert):
    _, run, _, output = lora_run
    trainable, total = lora_net(tiny_bert).hf_model.get_nb_trainable_parameters()
    assert run.data.metrics["model/trainable_parameters"] == trainable
    assert run.data.metrics["model/parameters"] == total
    assert trainable < 0.05 * total  # adapters of rank 4 on query/value + the 2-class head
    assert f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)" in output
    assert run.data.params["model.peft"] == "lora" and run.data.params["model.lora.r"] == "4"


def test_training_changes_only_the_adapters_and_the_head(lora_run, tiny_bert):
    run_dir = lora_run[0]
    initial = load_file(tiny_bert / "model.safetensors")
    state = {
        k.removeprefix(PEFT_PREFIX): v for k, v in best_state(run_dir).items() if k.startswith(PEFT_PREFIX)
    }
    trained = {k for k in state if ".lora_" in k or ".modules_to_save." in k}
    assert trained and any("lora_B" in k for k in trained)
    for key, value in state.items():
        if key in trained:
            continue
        name = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        assert torch.equal(value, initial[name]), f"{name} changed in training"
    assert all(state[k].abs().sum() > 0 for k in trained if "lora_B" in k)  # B starts at zero
    head = state["classifier.modules_to_save.default.weight"]
    assert not torch.allclose(head, initial["classifier.weight"])  # the head trains in full


def test_saved_model_is_a_plain_merged_bert_that_answers_like_the_adapted_one(lora_run, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    run_dir = lora_run[0]
    model_dir = run_dir / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert not (model_dir / "adapter_config.json").exists()
    keys = set(load_file(model_dir / "model.safetensors"))
    assert keys == set(load_file(tiny_bert / "model.safetensors"))  # same layout as the base checkpoint

    adapted = lora_net(tiny_bert)
    own = {k.removeprefix("model."): v for k, v in best_state(run_dir).items() if k.startswith("model.")}
    adapted.load_state_dict(own)
    adapted.eval()
    plain = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = encode(model_dir)
    with torch.no_grad():
        expected = adapted(batch)
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        merged_weight = plain.bert.encoder.layer[0].attention.self.query.weight
        base_weight = load_file(tiny_bert / "model.safetensors")[
            "bert.encoder.layer.0.attention.self.query.weight"
        ]
        assert not torch.equal(merged_weight, base_weight)  # the adapter is in the weights


def test_predict_pipeline_and_pyfunc_load_the_merged_model(lora_run, cli, tmp_path):
    import mlflow.pyfunc
    import pandas as pd
    from transformers import pipeline

    run_dir, run, client, _ = lora_run
    out = tmp_path / "p.jsonl"
    res = cli("predict", str(run_dir), *TEXTS, "--output", str(out), "--no-progress", "--precision", "32")
    assert res.code == 0, res.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] in ("negative", "positive") for r in rows] == [True] * 3
    pipe = pipeline("text-classification", model=str(run_dir / "model"))
    assert [p["label"] for p in pipe(TEXTS)] == [r["label"] for r in rows]
    frame = mlflow.pyfunc.load_model(str(run_dir / "mlflow_model")).predict(pd.DataFrame({"text": TEXTS}))
    assert list(frame["label"]) == [r["label"] for r in rows]
    logged = artifacts(client, run.info.run_id)
    assert {"model/MLmodel", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= logged


def test_the_adapter_alone_loads_with_peft_on_the_base_model(lora_run, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_dir = lora_run[0]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    with_adapter = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    batch = encode(run_dir / "model")
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-4)


def test_default_targets_follow_the_architecture_naming(tiny_bert):
    from torch import nn

    from encoderlab.models.lora import default_targets

    bert = lora_net(tiny_bert).hf_model.base_model.model
    assert default_targets(bert) == ["query", "value"]

    class DistilLike(nn.Module):  # DistilBERT's attention names; peft has no default for its model_type
        def __init__(self) -> None:
            super().__init__()
            self.q_lin, self.k_lin, self.v_lin, self.out_lin = (nn.Linear(4, 4) for _ in range(4))

    assert default_targets(DistilLike()) == ["q_lin", "v_lin"]


# ---- bad input: one paragraph, no traceback, no run left RUNNING ------------------------------------
def test_lora_on_the_scratch_encoder_says_it_needs_a_pretrained_one(cli, isolated):
    res = cli("train", "experiment=quickstart", "model.peft=lora", *FAST)
    assert res.code == 2 and "Traceback" not in res.err
    assert "LoRA (model.peft=lora) applies to pretrained Hugging Face encoders" in res.err
    assert not (isolated / "outputs" / "mlflow.db").exists()


def test_an_unknown_target_module_names_the_linear_layers(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        *LORA,
        "model.lora.target_modules=[qkv]",
        "num_threads=1",
        *FAST,
    )
    assert res.code == 1 and "Traceback" not in res.err
    assert "model.lora.target_modules=['qkv']" in res.err
    assert "are named: classifier, dense, key, query, value;" in res.err  # its nn.Linear layers
    assert all(r.info.status != "RUNNING" for r in all_runs(mlflow_client))


def test_without_peft_installed_the_error_names_the_extra(cli, tiny_bert, isolated, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    res = cli("train", "experiment=sst2_minilm", f"model.name_or_path={tiny_bert}", *LORA, *FAST)
    assert res.code == 2 and "Traceback" not in res.err
    assert "'peft'" in res.err and "pip install 'encoderlab[peft]'" in res.err
    assert not (isolated / "outputs" / "mlflow.db").exists()


@pytest.mark.slow  # a tiny BERT trained, stopped by SIGTERM and resumed, in subprocesses
def test_a_lora_run_stopped_by_sigterm_resumes_and_exports_merged(cli, tiny_bert, isolated, mlflow_client):
    cmd = tiny_train_cmd(
        tiny_bert,
        *LORA,
        "dataset.max_train_samples=64",
        "trainer.max_epochs=15",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "analysis=none",
        "num_threads=1",
    )
    proc = subprocess.Popen(cmd, cwd=isolated, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not training_started(isolated / "outputs" / "mlflow.db"):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "train did not start training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    (killed,) = all_runs(mlflow_client)
    run_dir = Path(killed.data.tags["encoderlab.run_dir"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(".lora_A." in k for k in state["state_dict"])  # the checkpoint holds the adapted model

    res = cli("resume", killed.info.run_id)
    assert res.code == 0, res.err
    (resumed,) = all_runs(mlflow_client)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["encoderlab.resumed"] == "1"
    keys = set(load_file(run_dir / "model" / "model.safetensors"))
    assert keys and not any("lora" in k or "base_layer" in k for k in keys)
