"""The MLflow UI as users compare runs: encoderlab experiments are training experiments, each split is a
dataset input, params hold the hyperparameters (bookkeeping goes to tags), and a 2-seed grid's runs
table and compare page render in a real browser (headless Chromium) with the runs, the metrics, the
Dataset column and the differing param."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from encoderlab.compose import compose
from encoderlab.data.datamodule import TextClassificationDataModule
from encoderlab.data.inputs import split_inputs
from encoderlab.tracking import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    flatten,
    open_experiment,
    resolved_config,
    split_config,
)
from encoderlab.tracking_journal import Journal
from helpers import FAST, SCRATCH_SMALL, MlflowServer, isolated_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GRID = [
    "experiment=quickstart",
    *SCRATCH_SMALL,
    "dataset.max_train_samples=300",
    "trainer.max_epochs=1",
    "analysis=none",
    "num_threads=1",
    *FAST,
]


def test_experiments_open_as_training_experiments(isolated):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{isolated / 'mlflow.db'}"
    client = MlflowClient(uri)
    new = open_experiment(client, "fresh", None, uri)
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    older = client.create_experiment("made-before")  # an experiment encoderlab used before, no kind
    assert open_experiment(client, "made-before", None, uri) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    mine = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    open_experiment(client, "mine", None, uri)  # a kind the user chose is theirs
    assert client.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_bookkeeping_config_keys_are_tags_not_params():
    cfg, _ = compose(["experiment=quickstart", "num_threads=1"])
    flat = flatten(resolved_config(cfg))
    params, tags = split_config(flat)
    for key in ("output_dir", "run_name", "num_threads", "logger.tracking_uri", "logger.heartbeat_s"):
        assert key not in params and tags[f"encoderlab.config.{key}"] == flat[key]
    assert "callbacks.checkpoint.dirpath" not in params and "dataset.cache_dir" not in params
    for key in ("seed", "optimizer.lr", "model.d_model", "dataset.name", "trainer.max_epochs"):
        assert params[key] == flat[key], key
    assert len(params) + len(tags) == len(flat)  # nothing dropped


def _prepared(*overrides: str):
    cfg, _ = compose(list(overrides))
    return cfg.dataset, TextClassificationDataModule(cfg.dataset, seed=cfg.seed).prepare()


def test_each_split_is_a_dataset_input_replayed_after_an_outage(isolated):
    from mlflow.tracking import MlflowClient

    ds_cfg, prepared = _prepared("experiment=quickstart")
    inputs = split_inputs(ds_cfg, prepared)
    assert [i["context"] for i in inputs] == ["train", "validation", "test"]
    train = inputs[0]
    assert train["name"] == "uci_sentences" and train["digest"] == prepared.splits["train"]._fingerprint
    assert json.loads(train["profile"]) == {"num_rows": len(prepared.splits["train"])}
    columns = {c["name"]: c["type"] for c in json.loads(train["schema"])["mlflow_colspec"]}
    assert columns == {"text": "string", "labels": "long"}
    assert json.loads(inputs[2]["source"])["uri"].endswith("uci_sentences/test.parquet")
    # GLUE SST-2 (test stage on validation, Hub source): the validation rows once, not twice
    sst2 = split_inputs(*_prepared("dataset=sst2"))
    assert [i["context"] for i in sst2] == ["train", "validation"]

    # the server was away: the call was journaled, then replayed like the others
    uri = f"sqlite:///{isolated / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(open_experiment(client, "e", None, uri))
    journal = Journal(isolated / "run")
    journal.append({"op": "inputs", "datasets": inputs})
    assert journal.pending_counts().inputs == 3
    journal.replay(client, run.info.run_id)
    logged = client.get_run(run.info.run_id).inputs.dataset_inputs
    got = {i.tags[0].value: (i.dataset.name, i.dataset.digest) for i in logged}
    assert got == {i["context"]: (i["name"], i["digest"]) for i in inputs}


# ---- a 2-seed grid, its store, and the UI in a real browser ------------------------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_mirror, session_cache) -> Path:
    """`encoderlab train -m seed=1,2` (tiny scratch encoder, bundled data) in its own directory."""
    root = tmp_path_factory.mktemp("grid")
    env = isolated_env(tiny_mirror, session_cache)
    cmd = [sys.executable, "-m", "encoderlab", "train", "-m", *GRID, "seed=1,2"]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def _grid_runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    children = sorted(
        (r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.data.params["seed"]
    )
    return exp, children


@pytest.mark.slow
def test_parallel_runs_on_one_dataset_all_get_their_inputs(isolated):
    """Runs of one experiment started together (a grid's parallel jobs, sweep workers) log the same
    dataset at once; the store's lookup-then-insert races, and no run may fail on it."""
    import threading

    from mlflow.tracking import MlflowClient

    from encoderlab.tracking_journal import send

    uri = f"sqlite:///{isolated / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment("parallel")
    entries = [
        {
            "op": "inputs",
            "datasets": [
                {
                    "name": "sst2",
                    "digest": f"round{i}",
                    "source_type": "local",
                    "source": "{}",
                    "context": "train",
                }
            ],
        }
        for i in range(4)
    ]
    failures: list[str] = []
    for entry in entries:
        runs = [MlflowClient(uri).create_run(experiment).info.run_id for _ in range(6)]
        start = threading.Barrier(len(runs))

        def log(run_id: str, entry: dict = entry, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                send(MlflowClient(uri), run_id, entry)
            except Exception as ex:  # noqa: BLE001 - the assertion below shows it
                failures.append(str(ex)[:300])

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures
        for run_id in runs:
            (linked,) = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
            assert linked.dataset.digest == entry["datasets"][0]["digest"]


def test_grid_children_differ_in_seed_only(grid):
    exp, children = _grid_runs(grid)
    assert exp.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    assert [c.data.params["seed"] for c in children] == ["1", "2"]
    a, b = (c.data.params for c in children)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == ["seed"]
    # the per-job values are still there, as tags
    dirs = {c.data.tags["encoderlab.config.output_dir"] for c in children}
    assert len(dirs) == 2 and all(Path(d).is_dir() for d in dirs)
    for child in children:
        contexts = sorted(i.tags[0].value for i in child.inputs.dataset_inputs)
        assert contexts == ["test", "train", "validation"]


def _page(url: str, out: Path, name: str, screenshot: bool = True) -> str:
    """The page's text after its scripts ran (headless Chromium), and a screenshot <out>/<name>.png."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    base += ["--window-size=1400,900", "--virtual-time-budget=20000", f"--user-data-dir={out / 'profile'}"]
    shot = [f"--screenshot={out / name}.png"] if screenshot else []
    dom = subprocess.run(
        [*base, *shot, "--dump-dom", url], capture_output=True, text=True, timeout=180
    ).stdout
    (out / f"{name}.html").write_text(dom)
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium on PATH (Debian package `chromium`)")
def test_runs_table_and_compare_page_in_chromium(grid, tmp_path):
    exp, children = _grid_runs(grid)
    server = MlflowServer(tmp_path / "server", backend=f"sqlite:///{grid / 'outputs' / 'mlflow.db'}")
    server.start()
    try:
        ml = "workflowType=machine_learning"  # the UI's "Model training" switch (docs/mlflow-ui.md)
        # sorted by name: the grid's children as rows of their own (by date they nest under the parent)
        runs_url = f"{server.uri}/#/experiments/{exp.experiment_id}/runs?{ml}&orderByKey=attributes.run_name"
        table = _page(runs_url, tmp_path, "runs")
        charts = _page(f"{runs_url}&compareRunsMode=CHART", tmp_path, "charts", screenshot=False)
        ids = urllib.parse.quote(json.dumps([c.info.run_id for c in children]))
        compare_url = (
            f"{server.uri}/#/compare-runs?runs={ids}&experiments=%5B%22{exp.experiment_id}%22%5D&{ml}"
        )
        compare = _page(compare_url, tmp_path, "compare")
    finally:
        server.kill()
    # the training-runs view, not the GenAI traces overview
    assert "Runs - Experiment" in table and "Detect Issues" not in table and "Token Usage" not in table
    for child in children:
        assert child.info.run_name in table and child.info.run_id in compare
    # the Dataset column: name (digest) and split of every input
    for i in children[0].inputs.dataset_inputs:
        assert f"{i.dataset.name} ({i.dataset.digest}) {i.tags[0].value}" in table
    # compare page: the parallel coordinates pick the one param that differs (no output_dir, run name or
    # logger setting among the params); the metrics are listed (the table renders its first rows)
    assert "Parameters: seed" in compare
    params = compare.split("Parameters Show diff only", 1)[1].split("Metrics Show diff only", 1)[0]
    assert " seed 1 2 " in params or " seed 2 1 " in params
    assert "output_dir" not in params and "logger." not in params and "optimizer.lr 0.002 0.002" in params
    metrics = compare.split("Metrics Show diff only", 1)[1]
    assert "best/val/f1_macro" in metrics and "model/parameters" in metrics
    # the chart view groups every logged metric: test/*, val/*, train/*
    assert re.search(r"test \(\d+\) Add chart", charts) and re.search(r"val \(\d+\) Add chart", charts)
    assert (tmp_path / "runs.png").stat().st_size > 10_000 and (
        tmp_path / "compare.png"
    ).stat().st_size > 10_000
