"""Multi-label classification (dataset.task=multilabel): data layouts and their errors, threshold tuning,
and one end-to-end run whose metrics, thresholds, predictions file, report, predict and pyfunc agree."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn import metrics as skm

from encoderlab.config import DatasetConfig
from encoderlab.data.loading import load_raw_splits
from encoderlab.data.splits import prepare_splits
from encoderlab.errors import EncoderlabError
from encoderlab.metrics import tune_thresholds
from helpers import FAST, REAL_MIRROR, SCRATCH_SMALL, isolated_env

WORDS = {
    "joy": ["happy", "glad", "delighted"],
    "love": ["love", "adore", "cherish"],
    "anger": ["angry", "furious"],
}
NAMES = list(WORDS)
FILLER = ["the day was long", "we went to the shop", "it rained again", "my friend called"]


def make_rows(n: int, seed: int) -> list[dict]:
    """Sentences naming 0-2 emotions with a word each; `labels` is the list of their names."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = sorted(rng.sample(NAMES, rng.choice([0, 1, 1, 2])), key=NAMES.index)
        words = " and ".join(rng.choice(WORDS[name]) for name in labels) or "nothing much"
        rows.append({"text": f"{rng.choice(FILLER)}, I feel {words}", "labels": labels})
    return rows


def write_splits(folder: Path, layout: str = "names", sizes=(160, 48, 48)) -> dict[str, str]:
    """train/validation/test jsonl: labels as a list of names, a list of ids, or 0/1 columns."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for seed, (split, n) in enumerate(zip(("train", "validation", "test"), sizes, strict=True)):
        rows = make_rows(n, seed)
        if layout == "ids":
            rows = [{"text": r["text"], "labels": [NAMES.index(x) for x in r["labels"]]} for r in rows]
        elif layout == "columns":
            rows = [{"text": r["text"], **{x: int(x in r["labels"]) for x in NAMES}} for r in rows]
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[split] = str(path)
    return files


def dataset_cfg(files: dict, **keys):
    base = {"name": "ml", "path": "json", "data_files": files, "task": "multilabel", "label_field": "labels"}
    return OmegaConf.structured(
        DatasetConfig(**{**base, "validation_split": None, "test_split": None, **keys})
    )


def prepared(files: dict, **keys):
    cfg = dataset_cfg(files, **keys)
    return prepare_splits(load_raw_splits(cfg), cfg)


def test_list_of_names_ids_and_01_columns_give_the_same_targets(tmp_path):
    by_names = prepared(write_splits(tmp_path / "n", "names"), label_names=NAMES)
    by_ids = prepared(write_splits(tmp_path / "i", "ids"), label_names=NAMES)
    by_cols = prepared(write_splits(tmp_path / "c", "columns"), label_field=NAMES)
    assert by_names.label_names == by_ids.label_names == by_cols.label_names == NAMES
    targets = np.asarray(by_names.splits["test"]["labels"])
    assert targets.shape == (48, 3) and set(np.unique(targets)) == {0.0, 1.0}
    assert (targets.sum(axis=1) == 0).any()  # rows with no label are kept, all zeros
    expected = [[float(n in r["labels"]) for n in NAMES] for r in make_rows(48, 2)]
    assert targets.tolist() == expected
    for other in (by_ids, by_cols):
        assert np.array_equal(np.asarray(other.splits["test"]["labels"]), targets)


def test_label_names_come_from_the_data_when_not_given(tmp_path):
    assert prepared(write_splits(tmp_path / "n", "names")).label_names == sorted(NAMES)
    assert prepared(write_splits(tmp_path / "c", "columns"), label_field=NAMES).label_names == NAMES


@pytest.mark.parametrize(
    ("layout", "row", "keys", "message"),
    [
        (
            "ids",
            {"text": "x", "labels": [0, 7]},
            {"label_names": NAMES},
            "has label 7 in column 'labels', which is not one of the label ids 0..2",
        ),
        ("names", {"text": "x", "labels": ["joy", "awe"]}, {"label_names": NAMES}, "has label 'awe'"),
        (
            "columns",
            {"text": "x", "joy": 2, "love": 0, "anger": 1},
            {"label_field": NAMES},
            "has 2 in label column 'joy'",
        ),
    ],
)
def test_bad_labels_are_errors_naming_the_row(tmp_path, layout, row, keys, message):
    files = write_splits(tmp_path, layout)
    lines = Path(files["validation"]).read_text().splitlines()
    lines[3] = json.dumps(row)
    Path(files["validation"]).write_text("\n".join(lines) + "\n")
    with pytest.raises(EncoderlabError, match="Row 4 ") as err:
        prepared(files, **keys)
    assert message in str(err.value)


def test_tuned_thresholds_maximise_each_labels_f1():
    rng = np.random.default_rng(0)
    targets = rng.random((300, 4)) < [0.5, 0.2, 0.05, 0.0]
    probs = np.clip(targets * 0.3 + rng.random((300, 4)) * 0.7, 0, 1)
    tuned = tune_thresholds(probs, targets)
    assert tuned[3] == 0.5  # no positive row: left at 0.5
    for j in range(3):
        best = max(skm.f1_score(targets[:, j], probs[:, j] > t) for t in np.arange(0.05, 0.955, 0.01))
        assert skm.f1_score(targets[:, j], probs[:, j] > tuned[j]) == pytest.approx(best)


def test_task_and_thresholds_are_checked_before_any_work(cli):
    result = cli("train", "experiment=quickstart", "dataset.task=multi")
    assert result.code != 0
    assert "dataset.task" in result.err and "single_label, multilabel" in result.err
    result = cli("train", "experiment=quickstart", "dataset.task=multilabel", "analysis.thresholds=1.5")
    assert result.code != 0 and "tune (per label, on validation) or a probability in (0, 1)" in result.err
    assert "Traceback" not in result.err


# ---- one trained model, end to end ----------------------------------------------------------------------

TRAIN = [
    "model=scratch_tiny",
    *SCRATCH_SMALL,
    *FAST,
    "num_threads=1",
    "trainer.max_epochs=4",
    "optimizer.lr=3e-3",
]


def train_cmd(files: dict, *extra: str) -> list[str]:
    data = "{" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    return [
        sys.executable, "-m", "encoderlab", "train", "dataset=jsonl", f"dataset.data_files={data}",
        "dataset.task=multilabel", *TRAIN, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mirror, session_cache):
    """A scratch encoder trained on the list-of-names layout, thresholds tuned: its run directory."""
    work = tmp_path_factory.mktemp("multilabel")
    files = write_splits(work / "data", "names")
    cmd = train_cmd(
        files,
        "dataset.label_field=labels",
        "analysis.thresholds=tune",
        "callbacks.checkpoint.monitor=val/f1_micro",
    )
    done = subprocess.run(
        cmd, cwd=work, env=isolated_env(tiny_mirror, session_cache), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "runs").glob("*/*")
    return run_dir


@pytest.mark.slow
def test_metrics_match_sklearn_on_the_predictions_file(trained):
    metrics = json.loads((trained / "metrics.json").read_text())["test"]
    names = sorted(NAMES)
    preds = pd.read_csv(trained / "predictions" / "test_predictions.csv", keep_default_na=False)
    probs = preds[[f"prob_{n}" for n in names]].to_numpy()
    truth = np.array([[n in s.split(";") for n in names] for s in preds["true_labels"]])
    chosen = np.array([[n in s.split(";") for n in names] for s in preds["labels"]])
    at_half = probs > 0.5
    assert metrics["test/f1_micro"] == pytest.approx(
        skm.f1_score(truth, at_half, average="micro", zero_division=0), abs=1e-4
    )
    assert metrics["test/f1_macro"] == pytest.approx(
        skm.f1_score(truth, at_half, average="macro", zero_division=0), abs=1e-4
    )
    assert metrics["test/subset_accuracy"] == pytest.approx(skm.accuracy_score(truth, at_half), abs=1e-4)
    assert metrics["test/hamming_loss"] == pytest.approx(skm.hamming_loss(truth, at_half), abs=1e-4)
    assert metrics["test/lrap"] == pytest.approx(
        skm.label_ranking_average_precision_score(truth, probs), abs=1e-4
    )
    assert metrics["test/auroc"] == pytest.approx(skm.roc_auc_score(truth, probs, average="macro"), abs=1e-4)
    for j, name in enumerate(names):
        assert metrics[f"test/f1_{name}"] == pytest.approx(
            skm.f1_score(truth[:, j], at_half[:, j], zero_division=0), abs=1e-4
        )
    # the predicted sets are the tuned thresholds' and the _tuned metrics are theirs
    thresholds = json.loads((trained / "model" / "encoderlab.json").read_text())["thresholds"]
    assert np.array_equal(chosen, probs > np.array([thresholds[n] for n in names]))
    assert metrics["test/f1_micro_tuned"] == pytest.approx(
        skm.f1_score(truth, chosen, average="micro", zero_division=0), abs=1e-4
    )
    assert metrics["test/f1_macro_tuned"] == pytest.approx(
        skm.f1_score(truth, chosen, average="macro", zero_division=0), abs=1e-4
    )
    assert (preds["correct"] == (truth == chosen).all(axis=1)).all()


@pytest.mark.slow
def test_tuned_thresholds_are_saved_logged_and_used_by_predict_and_pyfunc(trained, tmp_path):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    meta = json.loads((trained / "model" / "encoderlab.json").read_text())
    assert meta["task"] == "multilabel" and set(meta["thresholds"]) == set(NAMES)
    assert any(t != 0.5 for t in meta["thresholds"].values())  # tuned, not the default
    client = MlflowClient(f"sqlite:///{trained.parents[2] / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {n: run.data.metrics[f"thresholds/{n}"] for n in NAMES} == pytest.approx(meta["thresholds"])

    texts = [
        "it rained again, I feel happy and adore",
        "we went to the shop, I feel furious",
        "my friend called",
    ]
    out = tmp_path / "p.jsonl"
    cmd = [sys.executable, "-m", "encoderlab", "predict", str(trained), "--precision", "32", "--no-progress"]
    done = subprocess.run([*cmd, "-o", str(out), *texts], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        expected = ";".join(n for n in sorted(NAMES) if row[f"prob_{n}"] > meta["thresholds"][n])
        assert row["labels"] == expected
    printed = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert printed == [r["labels"] or "(none)" for r in rows]

    pyfunc = mlflow.pyfunc.load_model(str(trained / "mlflow_model"))
    frame = pyfunc.predict(pd.DataFrame({"text": texts}), params={"precision": "32"})
    assert list(frame["labels"].fillna("")) == [r["labels"] for r in rows]
    for n in NAMES:
        assert np.allclose(frame[f"prob_{n}"], [r[f"prob_{n}"] for r in rows], atol=1e-5)


@pytest.mark.slow
def test_report_has_the_per_label_table_and_figures(trained):
    page = (trained / "report" / "report.html").read_text()
    assert "Per-label report" in page
    assert all(f"<td>{n}</td>" in page for n in NAMES)
    assert page.count("data:image/png;base64") == 3  # PR curves, label counts, co-occurrence
    table = pd.read_csv(trained / "report" / "per_label.csv")
    assert list(table.columns[:6]) == ["label", "support", "precision", "recall", "f1", "average_precision"]
    assert "threshold" in table.columns


@pytest.mark.slow
def test_01_columns_train_end_to_end(isolated):
    files = write_splits(isolated / "data", "columns")
    cmd = train_cmd(
        files,
        f"dataset.label_field=[{','.join(NAMES)}]",
        "logger=none",
        "trainer.max_epochs=1",
        "analysis=none",
    )
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (isolated / "outputs" / "runs").glob("*/*")
    meta = json.loads((run_dir / "model" / "encoderlab.json").read_text())
    assert meta["label_names"] == NAMES and meta["thresholds"] == dict.fromkeys(NAMES, 0.5)
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert {"test/f1_micro", "test/f1_joy", "test/subset_accuracy", "test/lrap"} <= set(metrics)


@pytest.mark.slow
def test_a_bad_label_fails_the_run_with_one_clear_message(isolated, mlflow_client):
    files = write_splits(isolated / "data", "ids")
    with open(files["train"], "a") as f:
        f.write(json.dumps({"text": "x", "labels": [1, 9]}) + "\n")
    done = subprocess.run(
        train_cmd(files, "dataset.label_field=labels", "dataset.label_names=[joy,love,anger]"),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "Row 161 " in done.stderr and "label 9" in done.stderr and "ids 0..2" in done.stderr
    assert "Traceback" not in done.stderr
    assert all(
        r.info.status != "RUNNING"
        for r in mlflow_client.search_runs([e.experiment_id for e in mlflow_client.search_experiments()])
    )


@pytest.mark.mirror
def test_go_emotions_loads_from_the_real_mirror(monkeypatch):
    from hydra import compose, initialize_config_dir

    from encoderlab.config import conf_dir, register_configs

    monkeypatch.setenv("ENCODERLAB_DATA_DIR", str(REAL_MIRROR))
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=go_emotions_minilm"])
    out = prepare_splits(load_raw_splits(cfg.dataset), cfg.dataset)
    assert {k: len(v) for k, v in out.splits.items()} == {"train": 43410, "validation": 5426, "test": 5427}
    assert (
        len(out.label_names) == 28 and out.label_names[0] == "admiration" and out.label_names[-1] == "neutral"
    )
    train = np.asarray(out.splits["train"]["labels"])
    assert int(train.sum()) == 51103 and int(train[:, 27].sum()) == 14219  # the mirror README's counts
    assert cfg.analysis.thresholds == "tune" and cfg.callbacks.checkpoint.monitor == "val/f1_micro"
