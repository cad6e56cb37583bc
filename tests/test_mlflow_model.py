"""Every run's model is an MLflow model: pyfunc (and transformers for HF encoders), registry, serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import FAST, SCRATCH_SMALL, free_port

TEXTS = [
    "A wonderful, moving film with a great cast.",
    "Dull.",
    "I did not like the plot at all, and the acting was flat from the first scene to the last one.",
    "fine",
    "The soundtrack is lovely but the pacing drags in the middle.",
]
SCRATCH = ["experiment=quickstart", *SCRATCH_SMALL, *FAST, "trainer.max_epochs=1", "num_threads=1"]


@pytest.fixture
def tracking_uri(isolated):
    """mlflow's default store is this test's (set_tracking_uri also exports MLFLOW_TRACKING_URI, which
    later tests' subprocesses would inherit: unset at the end)."""
    import mlflow

    uri = f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def only_run(mlflow_client):
    (run,) = mlflow_client.search_runs([e.experiment_id for e in mlflow_client.search_experiments()])
    return run


def predict_rows(cli, source: str, texts: list[str], out: Path) -> list[dict]:
    """`encoderlab predict SOURCE` in fp32, as rows."""
    result = cli("predict", source, "--precision", "32", "--no-progress", "-o", str(out), *texts)
    assert result.code == 0, result.err
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_same(frame: pd.DataFrame, rows: list[dict], labels: list[str], tol: float = 1e-5) -> None:
    assert list(frame["label"]) == [r["label"] for r in rows]
    for name in labels:
        diff = (frame[f"prob_{name}"] - pd.Series([r[f"prob_{name}"] for r in rows])).abs().max()
        assert diff <= tol, f"prob_{name} differs by {diff}"


@pytest.mark.slow
def test_scratch_model_is_a_registered_pyfunc_model(cli, isolated, mlflow_client, tracking_uri):
    import mlflow

    result = cli("train", *SCRATCH, "logger.register_model=quickstart-scratch")
    assert result.code == 0, result.err
    run = only_run(mlflow_client)
    run_id = run.info.run_id
    assert run.data.tags["encoderlab.registered_model"] == "quickstart-scratch/1"
    version = mlflow_client.get_model_version("quickstart-scratch", "1")
    assert version.run_id == run_id

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["text"]
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params == {"threshold": 0.0, "mc_dropout": 0, "batch_size": 64, "precision": "auto"}
    frame = model.predict(pd.DataFrame({"text": TEXTS}), params={"precision": "32", "batch_size": 2})
    labels = ["negative", "positive"]
    assert list(frame.columns) == ["label", "top_label", "confidence", "prob_negative", "prob_positive"]

    # the same probabilities from the run id, runs:/ and models:/ (version and alias) sources
    mlflow_client.set_registered_model_alias("quickstart-scratch", "champion", "1")
    for source in (
        run_id,
        f"runs:/{run_id}/model",
        "models:/quickstart-scratch/1",
        "models:/quickstart-scratch@champion",
    ):
        assert_same(frame, predict_rows(cli, source, TEXTS, isolated / "p.jsonl"), labels)

    # params: abstain under the threshold; MC dropout adds the spread per class
    top = float(frame["confidence"].max())
    abstained = model.predict(
        pd.DataFrame({"text": TEXTS}), params={"threshold": min(1.0, top + 1e-6), "precision": "32"}
    )
    assert set(abstained["label"]) == {"abstain"}
    mc = model.predict(pd.DataFrame({"text": TEXTS}), params={"mc_dropout": 3, "precision": "32"})
    assert {"std_negative", "std_positive"} <= set(mc.columns)

    # requirements are pinned to what saved the model
    reqs = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/requirements.txt")).read_text()
    assert "encoderlab==" in reqs and "torch==" in reqs and "transformers==" in reqs

    # a second registration of the same name is version 2
    assert cli("train", *SCRATCH, "seed=2", "logger.register_model=quickstart-scratch").code == 0
    assert {str(v.version) for v in mlflow_client.search_model_versions("name='quickstart-scratch'")} == {
        "1",
        "2",
    }

    bad = cli("predict", "models:/quickstart-scratch/9", "x")
    assert bad.code != 0 and "could not be found" in bad.err and "Traceback" not in bad.err


@pytest.mark.slow
def test_hf_model_has_pyfunc_and_transformers_flavors(cli, isolated, mlflow_client, tiny_bert, tracking_uri):
    import mlflow
    import transformers

    args = ["experiment=sst2_minilm", f"model.name_or_path={tiny_bert}", *FAST, "trainer.max_epochs=1"]
    result = cli("train", *args, "num_threads=1", "analysis=none")
    assert result.code == 0, result.err
    run_id = only_run(mlflow_client).info.run_id
    uri = f"runs:/{run_id}/model"
    frame = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}), params={"precision": "32"})
    rows = predict_rows(cli, uri, TEXTS, isolated / "p.jsonl")
    assert_same(frame, rows, ["negative", "positive"])

    pipe = mlflow.transformers.load_model(uri)
    assert isinstance(pipe, transformers.TextClassificationPipeline)
    scores = pipe(TEXTS, top_k=None)
    for row, per_label in zip(rows, scores, strict=True):
        by_label = {s["label"]: s["score"] for s in per_label}
        assert abs(by_label["positive"] - row["prob_positive"]) <= 1e-5

    # the run directory keeps one copy of the weights: the MLflow model's are hard links
    run_dir = Path(only_run(mlflow_client).data.tags["encoderlab.run_dir"])
    weights = run_dir / "mlflow_model" / "model" / "model.safetensors"
    assert weights.stat().st_ino == (run_dir / "model" / "model.safetensors").stat().st_ino


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_predict(cli, isolated, mlflow_client):
    assert cli("train", *SCRATCH).code == 0
    run_id = only_run(mlflow_client).info.run_id
    texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(100)]
    rows = predict_rows(cli, run_id, texts, isolated / "p.jsonl")

    import requests

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (isolated / "serve.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (isolated / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        body = {
            "dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]},
            "params": {"precision": "32", "batch_size": 16},
        }
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert answer.ok, answer.text
        served = pd.DataFrame(answer.json()["predictions"])
        assert len(served) == 100
        assert_same(served, rows, ["negative", "positive"])
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()
