"""`encoderlab export`: a self-contained, Hub-ready model directory with a model card generated from the
run, `--format onnx`, and `--push-to-hub` up to the upload (issue 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from helpers import FAST, SCRATCH_SMALL, CliResult, all_runs

TEXTS = ["The movie is good.", "A dull, boring and terrible film.", "Not bad at all, I liked the acting."]


def _env(mirror: Path, cache: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "ENCODERLAB_DATA_DIR": str(mirror),
        "ENCODERLAB_CACHE_DIR": str(cache / "encoderlab"),
    }
    env.update({"HF_DATASETS_CACHE": str(cache / "hf_datasets"), "HF_HUB_OFFLINE": "1"})
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _train(cwd: Path, env: dict[str, str], *args: str) -> None:
    cmd = [sys.executable, "-m", "encoderlab", "train", *args, *FAST, "num_threads=1"]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, tiny_mirror, session_cache) -> Path:
    """A quickstart-like run (small scratch encoder, one epoch): its working directory."""
    root = tmp_path_factory.mktemp("scratch_run")
    _train(
        root,
        _env(tiny_mirror, session_cache),
        "experiment=quickstart",
        *SCRATCH_SMALL,
        "trainer.max_epochs=1",
    )
    return root


@pytest.fixture(scope="module")
def bert_seeds(tmp_path_factory, tiny_mirror, session_cache, tiny_bert) -> Path:
    """A 2-seed grid of the tiny BERT on the SST-2 recipe: its working directory."""
    root = tmp_path_factory.mktemp("bert_seeds")
    _train(
        root,
        _env(tiny_mirror, session_cache),
        "-m",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=64",
        "trainer.max_steps=3",
        "optimizer.lr=1e-3",
        "seed=1,2",
    )
    return root


def _store(root: Path) -> str:
    return f"sqlite:///{root / 'outputs' / 'mlflow.db'}"


def _finished_runs(root: Path) -> list:
    from mlflow.tracking import MlflowClient

    runs = all_runs(MlflowClient(_store(root)))
    return [r for r in runs if r.info.status == "FINISHED" and "encoderlab.sweep" not in r.data.tags]


def _card(directory: Path) -> tuple[dict, str]:
    """The model card's YAML front matter (parsed) and its Markdown body."""
    text = (directory / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _predict(cli, model: str, out: Path, *extra: str) -> list[dict]:
    res = cli("predict", model, *TEXTS, "--output", str(out), "--no-progress", "--precision", "32", *extra)
    assert res.code == 0, res.err
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_scratch_export_predicts_like_the_run_and_its_card_states_the_run(scratch_run, isolated, cli):
    (run,) = _finished_runs(scratch_run)
    run_dir = Path(run.data.tags["encoderlab.run_dir"])
    res = cli("export", str(run_dir), "--tracking-uri", _store(scratch_run))
    assert res.code == 0, res.err
    out = isolated / "outputs" / "exports" / run.info.run_name  # default: named after the run
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "encoderlab.json"} <= {
        f.name for f in out.iterdir()
    }
    assert not list(out.parent.glob(".*tmp*"))  # built beside it, renamed into place

    # self-contained: the copy serves the same probabilities as the run's own model
    theirs = _predict(cli, run.info.run_id, isolated / "run.jsonl", "--tracking-uri", _store(scratch_run))
    shutil_copy = isolated / "moved"
    out.rename(shutil_copy)  # nothing in it points back at the run directory
    ours = _predict(cli, str(shutil_copy), isolated / "export.jsonl")
    for a, b in zip(theirs, ours, strict=True):
        assert a["label"] == b["label"]
        assert a["prob_positive"] == pytest.approx(b["prob_positive"], abs=1e-6)

    meta, body = _card(shutil_copy)
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "encoderlab"
    assert "base_model" not in meta  # trained from scratch
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    (result,) = meta["model-index"][0]["results"]
    reported = {m["type"]: m["value"] for m in result["metrics"]}
    assert reported["accuracy"] == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    assert result["dataset"]["name"] == "uci_sentences"
    assert run.info.run_id in body and "`quickstart`" in body  # MLflow run id and experiment
    assert f"| accuracy | {metrics['test/accuracy']:.4f} |" in body
    assert f"| f1_macro | {metrics['test/f1_macro']:.4f} |" in body
    assert "one seed (42)" in body and "Single seed" in body
    assert "Kotzias" in body  # the dataset's source, from its config
    # label distribution of every split, from the run's data summary
    train_rows = int(run.data.metrics["data/train_rows"])
    assert f"| train | {train_rows} | negative " in body
    # probe pass rates equal the run's
    rate = run.data.metrics["probes/negation/pass_rate"]
    assert f"| negation | {rate:.2f} |" in body
    assert "Truncat" in body or "truncated to 64 tokens" in body
    # the run was only read
    (again,) = _finished_runs(scratch_run)
    assert again.data.tags == run.data.tags and again.data.metrics == run.data.metrics


def test_hf_export_loads_with_a_transformers_pipeline_and_reports_the_seeds(bert_seeds, isolated, cli):
    runs = sorted(_finished_runs(bert_seeds), key=lambda r: r.data.params["seed"])
    assert [r.data.params["seed"] for r in runs] == ["1", "2"]
    run = runs[0]
    out = isolated / "card-bert"
    res = cli("export", run.info.run_id, "--output", str(out), "--tracking-uri", _store(bert_seeds))
    assert res.code == 0, res.err

    from transformers import pipeline

    ours = _predict(cli, str(out), isolated / "export.jsonl")
    classifier = pipeline("text-classification", model=str(out), top_k=None)
    for text, row in zip(TEXTS, ours, strict=True):
        scores = {s["label"]: s["score"] for s in classifier([text])[0]}
        assert scores["positive"] == pytest.approx(row["prob_positive"], abs=1e-5)

    meta, body = _card(out)
    assert meta["library_name"] == "transformers"
    assert "base_model" not in meta  # a local directory is not a Hub id
    assert meta["datasets"] == ["nyu-mll/glue"]
    assert run.info.run_id in body
    values = [r.data.metrics["test/accuracy"] for r in runs]
    mean = sum(values) / 2
    std = abs(values[0] - values[1]) / 2**0.5  # sample std of two values
    assert f"| accuracy | {values[0]:.4f} | {mean:.4f} ± {std:.4f} (n=2) |" in body
    assert "differ only in seed (1, 2)" in body
    assert runs[1].info.run_id in body and "Single seed" not in body
    assert 'pipeline("text-classification"' in body


def test_export_never_overwrites_without_overwrite(scratch_run, isolated, cli):
    (run,) = _finished_runs(scratch_run)
    out = isolated / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = cli("export", run.info.run_id, "--output", str(out), "--tracking-uri", _store(scratch_run))
    assert res.code == 2
    assert "--overwrite" in res.err and str(out) in res.err and "Traceback" not in res.err
    assert [f.name for f in out.iterdir()] == ["notes.txt"]

    res = cli(
        "export", run.info.run_id, "--output", str(out), "--overwrite", "--tracking-uri", _store(scratch_run)
    )
    assert res.code == 0, res.err
    assert (out / "README.md").is_file() and not (out / "notes.txt").exists()
    assert sorted(p.name for p in isolated.iterdir()) == ["taken"]  # no temporary or old directory left


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["nowhere/model"], 1, "neither an existing directory nor an MLflow run id"),
        (["0123456789abcdef0123456789abcdef"], 1, "No MLflow run with id 0123456789abcdef0123456789abcdef"),
        (["{model}", "--quantize", "int8"], 2, "--quantize int8 needs --format onnx"),
        (["{model}", "--private"], 2, "--private and --token go with --push-to-hub"),
        (["{model}", "--format", "tflite"], 2, "invalid choice: 'tflite'"),
    ],
)
def test_bad_export_requests_say_what_is_wrong(tiny_bert, isolated, args, code, says):
    args = [a.replace("{model}", str(tiny_bert)) for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "encoderlab", "export", *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == code, res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr
    assert not (isolated / "outputs" / "exports").exists()


class _Hub(BaseHTTPRequestHandler):
    """A stand-in Hub endpoint answering every request with one status; records what it was asked."""

    status = 401
    seen: list[tuple[str, str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        type(self).seen.append((self.command, self.path, body))
        payload = json.dumps({"error": "Invalid credentials" if self.status == 401 else "boom"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, says", [(401, "HTTP 401 Unauthorized"), (500, "HTTP 500")])
def test_push_to_hub_failure_is_one_line_and_keeps_the_export(scratch_run, isolated, status, says):
    handler = type("Hub", (_Hub,), {"status": status, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")  # the Hub calls are made
        env = {k: v for k, v in os.environ.items() if k not in offline}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_DISABLE_TELEMETRY="1")
        (run,) = _finished_runs(scratch_run)
        out = isolated / "to-push"
        cmd = [sys.executable, "-m", "encoderlab", "export", run.info.run_id, "--output", str(out)]
        cmd += ["--tracking-uri", _store(scratch_run), "--push-to-hub", "me/tiny-sentiment"]
        cmd += ["--token", "hf_not_a_real_token"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        res = CliResult(proc.returncode, proc.stdout, proc.stderr)
    finally:
        server.shutdown()
        server.server_close()
    assert res.code == 1
    (line,) = [x for x in res.err.splitlines() if x.startswith("error:")]
    assert says in line and "could not create the repo me/tiny-sentiment" in line
    assert f"kept in {out}" in line and "Traceback" not in res.err
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    # the request reached the endpoint, naming the repo, with the token
    assert any("tiny-sentiment" in body and method == "POST" for method, _, body in handler.seen)


def test_onnx_export_puts_the_graph_beside_the_card(scratch_run, isolated, cli):
    pytest.importorskip("encoderlab.onnx_export", reason="needs encoderlab.onnx_export (ONNX export)")
    (run,) = _finished_runs(scratch_run)
    out = isolated / "onnx-export"
    res = cli(
        "export", run.info.run_id, "--output", str(out), "--format", "onnx", "--quantize", "int8",
        "--tracking-uri", _store(scratch_run),
    )  # fmt: skip
    assert res.code == 0, res.err
    names = {f.name for f in out.iterdir()}
    assert {"README.md", "model.onnx", "model_quantized.onnx", "onnx_parity.json", "tokenizer.json"} <= names
    parity = json.loads((out / "onnx_parity.json").read_text())
    meta, body = _card(out)
    assert "onnx" in meta["tags"]
    diff = parity["files"]["model.onnx"]["max_abs_logit_diff"]
    assert diff <= 1e-3 and f"max |logit difference| {diff:.2e}" in body
    assert "onnxruntime" in body and "--backend onnxruntime" in body
