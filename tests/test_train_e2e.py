"""A tiny BERT trained and tested end to end through the CLI, checked in MLflow like a user would."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import FAST, all_runs, artifacts

pytestmark = pytest.mark.slow  # every test trains through the CLI (or reads a module-scoped run)


@pytest.fixture
def trained(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=400",
        "trainer.val_check_interval=10",
        "optimizer.lr=1e-3",
        "trainer.log_every_n_steps=2",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    return run


def test_run_is_recorded_in_mlflow(trained, mlflow_client, isolated):
    run = trained
    assert run.info.status == "FINISHED"
    # params: the flattened resolved config
    p = run.data.params
    assert (
        p["optimizer.lr"] == "0.001"
        and p["dataset.name"] == "sst2"
        and p["trainer.val_check_interval"] == "10"
    )
    # per-step training metrics and periodic validation
    steps = [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "train/loss_step")]
    assert len(steps) >= 5 and steps == sorted(steps)
    val = mlflow_client.get_metric_history(run.info.run_id, "val/accuracy")
    assert len(val) >= 2  # every 10 optimizer steps over 25 steps
    for name in (
        "test/accuracy",
        "test/f1_macro",
        "test/f1_weighted",
        "test/precision_macro",
        "test/recall_macro",
        "test/f1",
        "test/auroc",
        "val/f1_macro",
        "val/loss",
    ):
        assert name in run.data.metrics, name
    assert run.data.metrics["perf/train_samples_seen"] == 400  # one epoch of max_train_samples
    m = run.data.metrics
    assert m["perf/train_samples_per_second"] > 0 and m["perf/train_tokens_per_second"] > 0
    assert 0 <= m["perf/padding_fraction"] < 1 and m["perf/val_samples_per_second"] > 0
    assert 0 < m["perf/seconds_to_first_step"] < m["perf/fit_seconds"] + 600 and m["perf/peak_rss_mb"] > 100
    assert m["perf/train_seconds"] < m["perf/fit_seconds"]  # periodic validation is not training time
    # tags
    tags = run.data.tags
    assert tags["encoderlab.version"] and tags["encoderlab.dataset_fingerprint"]
    assert "experiment=sst2_minilm" in tags["encoderlab.command"]
    assert tags["encoderlab.test_split"] == "validation"
    # artifacts
    arts = artifacts(mlflow_client, run.info.run_id)
    for expected in (
        "config/config.yaml",
        "config/hydra/overrides.yaml",
        "environment/pip_freeze.txt",
        "report/confusion_matrix.png",
        "report/report.html",
        "predictions/test_predictions.csv",
        "model/MLmodel",
        "model/model/config.json",
        "model/model/model.safetensors",
        "data/summary.json",
    ):
        assert expected in arts, expected
    assert any(a.startswith("model/model/tokenizer") for a in arts)
    # the config artifact is the composed config
    cfg_text = mlflow_client.download_artifacts(run.info.run_id, "config/config.yaml", str(isolated))
    assert yaml.safe_load(Path(cfg_text).read_text())["experiment_name"] == "sst2_minilm"


def test_training_learns_and_predictions_are_consistent(trained, mlflow_client, isolated):
    run = trained
    # 25 steps of a randomly initialised tiny BERT do not reliably beat chance on any data (measured on
    # 120 held-out rows: 0.50 on the generated stand-in, 0.55 on real SST-2, 0.56 on templated sentences);
    # that training learns is checked by the quickstart test in test_presets.py
    assert 0.0 <= run.data.metrics["test/accuracy"] <= 1.0
    local = mlflow_client.download_artifacts(
        run.info.run_id, "predictions/test_predictions.csv", str(isolated)
    )
    preds = pd.read_csv(local)
    assert len(preds) == int(run.data.metrics["data/test_rows"])
    assert {"text", "label", "prediction", "confidence", "prob_negative", "prob_positive"} <= set(
        preds.columns
    )
    assert (preds[["prob_negative", "prob_positive"]].sum(axis=1) - 1).abs().max() < 1e-4
    assert abs(preds["correct"].mean() - run.data.metrics["test/accuracy"]) < 1e-6


def test_logged_model_loads_with_pipeline(trained, mlflow_client, isolated):
    from transformers import pipeline

    model_dir = mlflow_client.download_artifacts(trained.info.run_id, "model/model", str(isolated / "dl"))
    clf = pipeline("text-classification", model=model_dir)
    out = clf(["a moving and beautiful film", "dull , lifeless and far too long"])
    assert {o["label"] for o in out} <= {"negative", "positive"}
    # the tokenizer file is saved as loaded, not with the padding the analyses' last call left on it
    saved = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None


def test_precision_auto_picks_bf16_only_where_the_cpu_has_it(cli, tiny_bert, mlflow_client):
    import torch

    from encoderlab.inference import cpu_supports_bf16

    threads = torch.get_num_threads()
    res = cli(
        "train",
        "model=hf",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=32",
        "dataset.group_by_length=true",
        "trainer.max_steps=2",
        "trainer.precision=auto",
        "num_threads=1",
        "analysis=none",
        "probes=none",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    assert run.data.tags["encoderlab.precision"] == ("bf16-mixed" if cpu_supports_bf16() else "32-true")
    assert run.data.tags["encoderlab.num_threads"] == "1"
    torch.set_num_threads(threads)  # the setting is process-wide: give the other tests their cores back


def test_second_run_loads_tokenization_from_cache(cli, tiny_bert, mlflow_client):
    args = (
        "train",
        "experiment=trec_minilm",
        f"model.name_or_path={tiny_bert}",
        "trainer.fast_dev_run=1",
        "dataset.cache_dir=tok_cache",
        *FAST,
    )
    assert cli(*args).code == 0
    assert cli(*args).code == 0
    first, second = sorted(all_runs(mlflow_client), key=lambda r: r.info.start_time)
    assert first.data.tags["encoderlab.tokenization_cache"] == "miss"
    assert second.data.tags["encoderlab.tokenization_cache"] == "hit"
    assert (
        first.data.tags["encoderlab.dataset_fingerprint"]
        == second.data.tags["encoderlab.dataset_fingerprint"]
    )


def test_multirun_makes_one_mlflow_run_per_job(cli, tiny_bert, mlflow_client):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cli(
            "train",
            "-m",
            "experiment=sst2_minilm",
            f"model.name_or_path={tiny_bert}",
            "optimizer.lr=1e-5,3e-5",
            "trainer.fast_dev_run=1",
            *FAST,
        )
    assert res.code == 0, res.err
    runs = [r for r in all_runs(mlflow_client) if "mlflow.parentRunId" in r.data.tags]  # the jobs
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["1e-05", "3e-05"]
    assert all(r.info.status == "FINISHED" for r in runs)
    names = [r.info.run_name for r in runs]
    assert len(set(names)) == 2 and all(n.startswith("sst2_minilm-") for n in names)
    assert sorted(n[-4:] for n in names) == ["job0", "job1"]
    # the second job times its own start-up, not the first job's run before it
    first, second = sorted(runs, key=lambda r: r.info.run_name[-4:])  # job0, job1
    took_before = (second.info.start_time - first.info.start_time) / 1000
    assert 0 < second.data.metrics["perf/seconds_to_first_step"] < took_before
    assert "Lightning Experiments platform" not in res.out + res.err  # no logger advert per job
    assert not [w for w in caught if "LeafSpec" in str(w.message)]  # torch/Lightning internals


def test_crash_marks_run_failed(cli, tiny_bert, mlflow_client):
    """A failure after the run started (here: 16-bit autocast requested on CPU) leaves a FAILED run."""
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "trainer.precision=16-mixed",
        *FAST,
    )
    assert res.code != 0
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FAILED"
    assert "16-mixed" in run.data.tags["encoderlab.error"]


def test_multirun_grid_is_one_parent_run_with_a_child_per_job(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "-m",
        "model=hf",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=64",
        "trainer.max_steps=2",
        "analysis=none",
        "probes=none",
        "seed=1,2",
        "optimizer.lr=1e-4,1e-3",
        *FAST,
    )
    assert res.code == 0, res.err
    runs = all_runs(mlflow_client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert "seed=1,2" in parent.data.tags["encoderlab.sweep_overrides"]
    assert parent.data.metrics["sweep/children"] == 4 and parent.data.metrics["sweep/children_finished"] == 4
    combos = {(c.data.params["seed"], c.data.params["optimizer.lr"]) for c in children}
    assert combos == {("1", "0.0001"), ("1", "0.001"), ("2", "0.0001"), ("2", "0.001")}
    assert {c.data.tags["encoderlab.sweep_job"] for c in children} == {"0", "1", "2", "3"}
    # the results table: one row per learning rate, mean ± std over the two seeds
    res = cli(
        "table",
        "--experiment",
        "encoderlab",
        "--metrics",
        "test/accuracy",
        "--format",
        "csv",
        "--baseline",
        "optimizer.lr=0.0001",
        "--plot",
        "table.png",
    )
    assert res.code == 0, res.err
    import io

    table = pd.read_csv(io.StringIO(res.out))
    assert sorted(table["group"]) == ["optimizer.lr=0.0001", "optimizer.lr=0.001"]
    assert table["n"].tolist() == [2, 2]
    for _, row in table.iterrows():
        lr = row["group"].split("=")[1]
        accs = [c.data.metrics["test/accuracy"] for c in children if c.data.params["optimizer.lr"] == lr]
        mean, std = (float(x) for x in row["test/accuracy (mean ± std)"].split(" ± "))
        assert mean == pytest.approx(sum(accs) / 2, abs=1e-4)
        assert std == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5, abs=1e-4)
    assert "grouped by: optimizer.lr" in res.err
    # no arguments: the most recent sweep of the store, the same table
    latest = cli(
        "table", "--metrics", "test/accuracy", "--format", "csv", "--baseline", "optimizer.lr=0.0001"
    )
    assert latest.code == 0, latest.err
    assert latest.out == res.out
    assert (
        f"the most recent sweep, {parent.info.run_name} (grid, parent run {parent.info.run_id}" in latest.err
    )
    res = cli("table", "--experiment", "nope")
    assert res.code == 1 and "No MLflow experiment named 'nope'" in res.err


def test_model_grid_across_families_through_the_model_mirror(
    cli, tiny_bert, mlflow_client, monkeypatch, tmp_path
):
    """`-m model=minilm,scratch_tiny`: the pretrained config keeps its Hub id, found offline in
    ENCODERLAB_MODEL_DIR; the table groups the children by model."""
    mirror = tmp_path / "models" / "sentence-transformers"
    mirror.mkdir(parents=True)
    (mirror / "all-MiniLM-L6-v2").symlink_to(tiny_bert)
    monkeypatch.setenv("ENCODERLAB_MODEL_DIR", str(tmp_path / "models"))
    res = cli(
        "train",
        "-m",
        "experiment=sst2_minilm",
        "model=minilm,scratch_tiny",
        "seed=1,2",
        "dataset.max_train_samples=64",
        "dataset.max_eval_samples=64",
        "trainer.max_steps=2",
        "analysis=none",
        "probes=none",
        *FAST,
    )
    assert res.code == 0, res.err
    runs = all_runs(mlflow_client)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 5 and len(children) == 4
    assert all(c.info.status == "FINISHED" for c in runs)
    hf = [c for c in children if c.data.params.get("model.name_or_path")]
    assert len(hf) == 2 and {c.data.params["model.name_or_path"] for c in hf} == {
        "sentence-transformers/all-MiniLM-L6-v2"
    }
    res = cli("table", "--experiment", "sst2_minilm", "--metrics", "test/accuracy", "--format", "csv")
    assert res.code == 0, res.err
    import io

    table = pd.read_csv(io.StringIO(res.out))
    assert len(table) == 2 and table["n"].tolist() == [2, 2]
    assert sorted(table["group"]) == ["model=minilm", "model=scratch_tiny"]


def test_multirun_with_a_failing_job_marks_the_parent_failed(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "-m",
        "model=hf",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=32",
        "trainer.max_steps=1",
        "analysis=none",
        "probes=none",
        "optimizer.lr=1e-4,-1",
        *FAST,
    )
    assert res.code == 2 and "optimizer.lr" in res.err
    runs = all_runs(mlflow_client)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags] == ["FINISHED"]


def test_reproduce_reruns_a_logged_run_to_identical_metrics(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "experiment=trec_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=96",
        "trainer.max_steps=6",
        "analysis=none",
        "probes=none",
        *FAST,
    )
    assert res.code == 0, res.err
    (old,) = all_runs(mlflow_client)
    res = cli("reproduce", old.info.run_id)
    assert res.code == 0, res.err
    new = [r for r in all_runs(mlflow_client) if r.info.run_id != old.info.run_id]
    assert len(new) == 1 and new[0].data.tags["reproduces"] == old.info.run_id
    for name in ("test/accuracy", "test/loss", "test/f1_macro"):
        assert new[0].data.metrics[name] == old.data.metrics[name], name  # same seed on CPU: identical
    assert "| test/accuracy |" in res.out
    res = cli("reproduce", "0" * 32)
    assert res.code == 1 and "No MLflow run with id" in res.err


def test_joblib_launcher_runs_jobs_in_parallel_under_one_parent(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=hf",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=32",
        "trainer.max_steps=1",
        "analysis=none",
        "probes=none",
        "seed=1,2",
        *FAST,
    )
    assert res.code == 0, res.err
    runs = all_runs(mlflow_client)
    (parent,) = [r for r in runs if r.data.tags.get("encoderlab.sweep") == "grid"]
    assert "JoblibLauncher" in parent.data.tags["encoderlab.launcher"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"


def test_early_stopping_with_max_steps_ending_mid_epoch(cli, mlflow_client):
    """max_steps may end training before the first validation: early stopping must not crash the run."""
    res = cli(
        "train",
        "experiment=trec_scratch",
        "dataset.max_train_samples=128",
        "trainer.max_steps=2",
        "analysis=none",
        "probes=none",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FINISHED" and "test/accuracy" in run.data.metrics
