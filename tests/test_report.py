"""The evaluation report, probes, `encoderlab predict` and `encoderlab evaluate`, on one tiny trained run."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import FAST, all_runs, artifacts, isolate

pytestmark = pytest.mark.slow  # every test trains through the CLI (or reads a module-scoped run)

REPORT_FILES = {
    "report/metrics.json",
    "report/classification_report.csv",
    "report/confusion_matrix.png",
    "report/confusion_matrix_normalized.png",
    "report/roc_curve.png",
    "report/pr_curve.png",
    "report/reliability_diagram.png",
    "report/top_errors.csv",
    "report/coverage.png",
    "report/mc_dropout/coverage.png",
    "report/mc_dropout/predictions.csv",
    "report/mc_dropout/metrics.json",
    "report/top_errors.json",
    "report/report.html",
    "report/probes/results.json",
    "report/probes/results.csv",
    "report/probes/pass_rates.png",
    "report/attention/attention.json",
    "report/attention/text0_layer0_heads.png",
    "report/attention/text0_rollout.png",
    "report/attributions/attributions.html",
    "report/attributions/attributions.json",
    "predictions/test_predictions.csv",
    "model/model/config.json",
    "model/model/model.safetensors",
    "model/model/encoderlab.json",
}


@dataclass
class Trained:
    workdir: Path
    run_dir: Path
    run_id: str
    tracking_uri: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, tiny_mirror, session_cache) -> Trained:
    """One tiny BERT trained on the SST-2 mirror with analysis=full (built once for this module)."""
    from mlflow.tracking import MlflowClient

    from encoderlab.cli import main

    workdir = tmp_path_factory.mktemp("report_run")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, workdir, tiny_mirror, session_cache)
        code = main(
            [
                "train",
                "experiment=sst2_minilm",
                f"model.name_or_path={tiny_bert}",
                "dataset.max_train_samples=400",
                "optimizer.lr=1e-3",
                "trainer.max_epochs=2",
                "analysis=full",
                "analysis.attributions.n_steps=16",
                *FAST,
            ]
        )
    assert code == 0
    uri = f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}"
    (run,) = all_runs(MlflowClient(uri))
    (run_dir,) = (workdir / "outputs" / "runs").glob("*/*")
    return Trained(workdir, run_dir, run.info.run_id, uri)


def test_run_logs_every_report_artifact(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    arts = artifacts(client, trained.run_id)
    assert arts >= REPORT_FILES, REPORT_FILES - arts
    metrics = client.get_run(trained.run_id).data.metrics
    for name in (
        "report/accuracy",
        "report/f1_macro",
        "report/roc_auc",
        "report/ece",
        "report/brier",
        "probes/negation/pass_rate",
        "probes/typos/pass_rate",
        "probes/basic/pass_rate",
        "report/coverage_at_threshold",
        "mc_dropout/accuracy",
        "mc_dropout/mean_std",
    ):
        assert name in metrics, name
    for stage in ("report", "mc_dropout", "probes", "attention", "attributions", "html", "total"):
        assert metrics[f"analysis/{stage}_seconds"] > 0, stage
    # the PNGs are real images
    for png in (trained.run_dir / "report").rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_report_numbers_match_sklearn_on_the_predictions_file(trained):
    from sklearn import metrics as skm

    preds = pd.read_csv(trained.run_dir / "predictions" / "test_predictions.csv")
    names = ["negative", "positive"]
    y = preds["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    probs = preds[[f"prob_{n}" for n in names]].to_numpy()
    yhat = probs.argmax(1)
    report = json.loads((trained.run_dir / "report" / "metrics.json").read_text())

    assert report["n"] == len(preds)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat))
    assert report["f1_macro"] == pytest.approx(skm.f1_score(y, yhat, average="macro"))
    assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-6)
    assert report["average_precision"] == pytest.approx(skm.average_precision_score(y, probs[:, 1]), abs=1e-6)
    assert report["confusion_matrix"] == skm.confusion_matrix(y, yhat, labels=[0, 1]).tolist()
    assert report["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1]), abs=1e-5)
    per_class = pd.read_csv(trained.run_dir / "report" / "classification_report.csv").set_index("label")
    p, r, f, s = skm.precision_recall_fscore_support(y, yhat, labels=[0, 1], zero_division=0)
    np.testing.assert_allclose(per_class.loc[names, "precision"], p, atol=1e-9)
    np.testing.assert_allclose(per_class.loc[names, "recall"], r, atol=1e-9)
    np.testing.assert_allclose(per_class.loc[names, "f1-score"], f, atol=1e-9)
    assert per_class.loc[names, "support"].tolist() == s.tolist()

    # expected calibration error, recomputed with 15 equal-width bins
    conf, correct = probs.max(1), (yhat == y)
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)  # (lo, hi] bins
    ece = sum(
        abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
        for b in range(15)
        if (bins == b).any()
    )
    assert report["ece"] == pytest.approx(ece, abs=1e-6)

    # selective prediction at the 0.6 threshold
    keep = conf >= 0.6
    assert report["coverage_at_threshold"] == pytest.approx(keep.mean())
    assert report["accuracy_at_threshold"] == pytest.approx(correct[keep].mean() if keep.any() else 0.0)

    # the error table: misclassified rows only, most confident first
    errors = pd.read_csv(trained.run_dir / "report" / "top_errors.csv")
    wrong = preds[~preds["correct"]]
    assert len(errors) == min(25, len(wrong))
    assert (errors["label"] != errors["prediction"]).all()
    assert errors["confidence"].is_monotonic_decreasing
    assert errors["confidence"].iloc[0] == pytest.approx(wrong["confidence"].max())


def test_html_report_is_one_offline_page(trained):
    report_dir = trained.run_dir / "report"
    page = (report_dir / "report.html").read_text()
    assert (report_dir / "report.html").stat().st_size < 2_000_000
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") >= 7  # 2 confusion, ROC, PR, reliability, probes, rollout
    for section in (
        "Per-class report",
        "Most confident errors",
        "Behavioural probes",
        "Attention",
        "Integrated Gradients",
    ):
        assert section in page, section
    # the head grids are files next to the page, linked relatively (the page opens from the folder)
    links = re.findall(r"href='([^']+)'", page)
    assert "attention/text0_layer0_heads.png" in links
    for link in links:
        assert (report_dir / link).is_file(), link
    grids = {p.relative_to(report_dir).as_posix() for p in report_dir.glob("attention/*_heads.png")}
    assert grids and grids <= set(links)


def test_probe_table_says_what_a_negation_pair_expects(trained):
    page = (trained.run_dir / "report" / "report.html").read_text()
    assert "<th>suite</th><th>probe</th><th>text</th><th>expected</th><th>prediction</th>" in page
    results = pd.read_csv(trained.run_dir / "report" / "probes" / "results.csv")
    negation = results[results["suite"] == "negation"]
    # the first text of each pair must get the suite's label, the negated one flipped_label
    assert set(negation[negation["position"] == 0]["expected"]) == {"positive"}
    assert set(negation[negation["position"] == 1]["expected"]) == {"negative"}
    cells = re.findall(r'<td>negation</td><td>\d+</td><td class="text">([^<]*)</td><td>(\w+)</td>', page)
    assert ("The movie is not good.", "negative") in cells and ("The movie is good.", "positive") in cells


def test_probe_results_hold_probabilities_per_text(trained):
    results = json.loads((trained.run_dir / "report" / "probes" / "results.json").read_text())
    assert set(results["pass_rates"]) == {
        "basic",
        "negation",
        "intensifiers_positive",
        "intensifiers_negative",
        "typos",
    }
    rows = pd.DataFrame(results["probes"])
    negation = rows[rows["suite"] == "negation"]
    assert "The movie is not good." in set(negation["text"])
    assert negation["p_label"].between(0, 1).all()
    rates = rows.groupby(["suite", "probe"])["passed"].first().groupby("suite").mean()
    for suite, rate in results["pass_rates"].items():
        assert rate == pytest.approx(rates[suite])


# ---- encoderlab predict ---------------------------------------------------------------------------------
def test_predict_by_run_id_run_dir_and_model_dir_agree_with_logged_predictions(trained, cli, isolated):
    preds = pd.read_csv(trained.run_dir / "predictions" / "test_predictions.csv").head(30)
    texts = preds["text"].tolist()
    outs = []
    for i, source in enumerate((trained.run_id, str(trained.run_dir), str(trained.run_dir / "model"))):
        out = isolated / f"p{i}.csv"
        res = cli(
            "predict",
            source,
            *texts,
            "--output",
            str(out),
            "--tracking-uri",
            trained.tracking_uri,
            "--precision",
            "32",
            "--batch-size",
            "7",
        )
        assert res.code == 0, res.err
        outs.append(pd.read_csv(out))
    for frame in outs:
        assert frame["text"].tolist() == texts  # input order, although batches are length-sorted
        np.testing.assert_allclose(frame["prob_positive"], preds["prob_positive"], atol=1e-5)
        assert frame["label"].tolist() == preds["prediction"].tolist()


def test_predict_reads_files_and_stdin_and_writes_jsonl(trained, cli, isolated, monkeypatch):
    import io

    texts = ["The movie is good.", "A dull, lifeless film.", "Great acting, weak plot."]
    pd.DataFrame({"review": texts}).to_csv(isolated / "in.csv", index=False)
    pd.DataFrame({"review": texts}).to_parquet(isolated / "in.parquet")
    pd.DataFrame({"review": texts}).to_json(isolated / "in.jsonl", orient="records", lines=True)
    (isolated / "in.txt").write_text("\n".join(texts) + "\n\n")
    model = str(trained.run_dir / "model")
    results = []
    for name in ("in.csv", "in.parquet", "in.jsonl", "in.txt"):
        out = isolated / f"{name}.jsonl"
        res = cli(
            "predict", model, "--file", str(isolated / name), "--column", "review", "--output", str(out)
        )
        assert res.code == 0, res.err
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["text"] for r in rows] == texts
        results.append([r["prob_positive"] for r in rows])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts) + "\n"))
    res = cli("predict", model)
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    assert len(lines) == 3 and all(line.split("\t")[0] in ("negative", "positive") for line in lines)
    assert lines[0].endswith("The movie is good.")
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-6)


@pytest.mark.parametrize(
    "order",
    [
        ["--threshold", "1.0", "The movie is good.", "The movie is not good."],
        ["The movie is good.", "--threshold", "1.0", "The movie is not good."],
    ],
    ids=["options-first", "options-between-texts"],
)
def test_predict_takes_options_anywhere_among_the_texts(trained, cli, isolated, order):
    out = isolated / "p.csv"
    res = cli("predict", str(trained.run_dir / "model"), *order, "--output", str(out))
    assert res.code == 0, res.err
    frame = pd.read_csv(out)
    assert frame["text"].tolist() == ["The movie is good.", "The movie is not good."]
    assert frame["label"].tolist() == ["abstain", "abstain"]  # --threshold 1.0 applied to both


def test_predict_mc_dropout_reports_spread_and_threshold_abstains(trained, cli, isolated):
    model = str(trained.run_dir / "model")
    args = ("predict", model, "The movie is good.", "The movie is not good.", "--mc-dropout", "8")
    first = cli(*args, "--output", str(isolated / "a.csv"))
    again = cli(*args, "--output", str(isolated / "b.csv"))
    assert first.code == 0 and again.code == 0, first.err
    a, b = pd.read_csv(isolated / "a.csv"), pd.read_csv(isolated / "b.csv")
    assert (a["std_positive"] > 0).all()  # dropout on: the passes differ
    pd.testing.assert_frame_equal(a, b)  # and are seeded: the same command gives the same numbers
    res = cli(
        "predict", model, "The movie is good.", "--threshold", "1.0", "--output", str(isolated / "t.csv")
    )
    assert res.code == 0
    assert pd.read_csv(isolated / "t.csv")["label"].tolist() == ["abstain"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0123456789abcdef0123456789abcdef", "text"], "No MLflow run with id 0123456789abcdef"),
        (["MODEL", ""], "empty text"),
        (["MODEL", "--file", "in.csv", "--column", "review"], "has no column 'review'"),
        (["MODEL", "--file", "missing.csv"], "no such file"),
        (["NOWEIGHTS", "text"], "no weights"),
        (["EMPTYDIR", "text"], "holds no model"),
        (["MODEL", "text", "--threshold", "1.5"], "--threshold must be a probability"),
    ],
)
def test_predict_bad_input_gives_a_clear_error(trained, cli, isolated, args, message):
    import shutil

    pd.DataFrame({"text": ["fine"]}).to_csv(isolated / "in.csv", index=False)
    no_weights = isolated / "no_weights"
    shutil.copytree(trained.run_dir / "model", no_weights)
    (no_weights / "model.safetensors").unlink()
    (isolated / "empty_dir").mkdir()
    names = {
        "MODEL": str(trained.run_dir / "model"),
        "NOWEIGHTS": str(no_weights),
        "EMPTYDIR": str(isolated / "empty_dir"),
    }
    args = [names.get(a, a) for a in args]
    res = cli("predict", *args, "--tracking-uri", trained.tracking_uri)
    assert res.code != 0
    assert message in res.err and res.err.startswith("error: ")
    assert "Traceback" not in res.err


# ---- encoderlab evaluate --------------------------------------------------------------------------------
def test_evaluate_cross_domain_logs_a_new_run_with_the_report(trained, cli, mlflow_client, isolated):
    """The SST-2 model on the IMDb test split: a new MLflow run tagged with its source run."""
    os.environ["MLFLOW_TRACKING_URI"] = trained.tracking_uri
    try:
        res = cli(
            "evaluate",
            f"source={trained.run_id}",
            "dataset=imdb",
            "dataset.max_test_samples=60",
        )
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert res.code == 0, res.err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    exp = client.get_experiment_by_name("evaluate")
    (run,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`encoderlab.source_run` = '{trained.run_id}'"
    )
    assert run.info.status == "FINISHED" and run.data.tags["encoderlab.split"] == "test"
    arts = artifacts(client, run.info.run_id)
    assert {
        "report/report.html",
        "report/roc_curve.png",
        "report/metrics.json",
        "predictions/test_predictions.csv",
    } <= arts
    (out_dir,) = (isolated / "outputs" / "evaluate").glob("*/*")
    preds = pd.read_csv(out_dir / "predictions" / "test_predictions.csv")
    assert len(preds) == 60
    assert run.data.metrics["test/accuracy"] == pytest.approx(preds["correct"].mean())
    assert run.data.metrics["report/accuracy"] == pytest.approx(preds["correct"].mean())
    # the default analysis (report) leaves out the heavy stages, and says how long each stage took
    assert not any(
        a.startswith(("report/attention", "report/attributions", "report/mc_dropout")) for a in arts
    )
    assert {"analysis/report_seconds", "analysis/probes_seconds", "analysis/total_seconds"} <= set(
        run.data.metrics
    )


def test_evaluate_on_the_runs_test_split_reproduces_its_test_metrics(trained, cli, mlflow_client):
    """evaluate logs <split>/<name> with the definitions training uses: the same numbers on the same split."""
    res = cli("evaluate", f"source={trained.run_dir}", "dataset=sst2", "split=test", "probes=none")
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    from mlflow.tracking import MlflowClient

    trained_metrics = MlflowClient(trained.tracking_uri).get_run(trained.run_id).data.metrics
    evaluated = run.data.metrics
    assert evaluated["data/test_rows"] == trained_metrics["data/test_rows"]
    for name in ("test/accuracy", "test/f1_macro", "test/f1_weighted", "report/accuracy"):
        assert evaluated[name] == pytest.approx(trained_metrics[name], abs=1e-6), name
    # AUROC ranks the scores: the tiny model's near-tied probabilities, computed in batches of another
    # shape, can differ in the last float bits and swap a pair or two (one pair is ~1e-3 here)
    assert evaluated["test/auroc"] == pytest.approx(trained_metrics["test/auroc"], abs=5e-3)
    assert evaluated["test/loss"] == pytest.approx(trained_metrics["test/loss"], abs=1e-4)
    assert "eval/accuracy" not in evaluated


def test_evaluate_on_a_dataset_with_other_labels_fails_clearly(trained, cli, isolated, mlflow_client):
    res = cli("evaluate", f"source={trained.run_dir}", "dataset=trec")
    assert res.code == 1
    assert "do not match the model's (negative, positive)" in res.err
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FAILED" and "do not match" in run.data.tags["encoderlab.error"]


def test_evaluate_config_errors_exit_2_before_any_work(cli, isolated):
    res = cli("evaluate", "dataset=imdb")
    assert res.code == 2 and "'source' is required" in res.err
    res = cli("evaluate", "source=x", "split=dev")
    assert res.code == 2 and "Allowed: test, validation, train" in res.err
    assert not (isolated / "outputs" / "mlflow.db").exists()


def test_hf_export_loads_with_transformers_pipeline_with_label_names(trained):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(trained.run_dir / "model"), device="cpu")
    out = clf(["The movie is good.", "The movie is not good."])
    assert {o["label"] for o in out} <= {"negative", "positive"}
    meta = json.loads((trained.run_dir / "model" / "encoderlab.json").read_text())
    assert (
        meta["label_names"] == ["negative", "positive"]
        and meta["family"] == "hf"
        and meta["max_length"] == 128
    )


def test_predict_bf16_autocast_stays_close_to_fp32(trained, cli, isolated):
    preds = pd.read_csv(trained.run_dir / "predictions" / "test_predictions.csv").head(20)
    out = isolated / "bf16.csv"
    res = cli(
        "predict", str(trained.run_dir / "model"), *preds["text"], "--precision", "bf16", "--output", str(out)
    )
    assert res.code == 0, res.err
    np.testing.assert_allclose(pd.read_csv(out)["prob_positive"], preds["prob_positive"], atol=0.03)
