"""The evaluation report of a set of predictions: metrics, per-class report, curves, calibration, errors.

`compute_report` turns (true labels, class probabilities) into numbers; `write_report` writes them to a
directory as metrics JSON, classification-report CSV, PNG figures and a table of the most confident
errors. The HTML page that puts everything on one page is built by encoderlab.analysis.html.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from encoderlab.analysis import figures
from encoderlab.analysis.progress import bar


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> tuple[float, list]:
    """ECE over equal-width confidence bins (Guo et al., 2017), and the bins for a reliability diagram."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, ece = [], 0.0
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        # (lo, hi], with the first bin closed on the left
        inside = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        acc = float(correct[inside].mean()) if n else None
        mean_conf = float(conf[inside].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(acc - mean_conf)
        bins.append(
            {"lower": float(lo), "upper": float(hi), "count": n, "accuracy": acc, "confidence": mean_conf}
        )
    return float(ece), bins


def selective(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None, points: int = 101
) -> dict:
    """Accuracy vs coverage when answering the most confident examples first, and at `threshold`."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true)[np.argsort(-conf, kind="stable")]
    kept = np.arange(1, len(correct) + 1)
    acc = np.cumsum(correct) / kept
    idx = np.unique(np.linspace(0, len(correct) - 1, min(points, len(correct))).astype(int))
    out = {
        "coverage": (kept[idx] / len(correct)).tolist(),
        "accuracy": acc[idx].tolist(),
        "at_threshold": None,
    }
    if threshold is not None:
        keep = conf >= threshold
        out["at_threshold"] = (
            float(keep.mean()),
            float((probs.argmax(1) == y_true)[keep].mean()) if keep.any() else 0.0,
        )
    return out


def compute_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    n_bins: int = 15,
    threshold: float | None = None,
) -> dict:
    """All report numbers; ROC/PR are binary (positive = class 1) or one-vs-rest per class."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(label_names)
    labels = list(range(n_classes))
    y_pred = probs.argmax(axis=1)
    report = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=label_names, output_dict=True, zero_division=0
    )
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    rows = cm.sum(axis=1, keepdims=True)
    ece, bins = expected_calibration_error(y_true, probs, n_bins)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "f1_weighted": float(
            skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "precision_macro": float(
            skm.precision_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "recall_macro": float(
            skm.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        # float32 softmax rows sum to 1 only within ~1e-7, which log_loss warns about
        "log_loss": float(skm.log_loss(y_true, probs / probs.sum(axis=1, keepdims=True), labels=labels)),
        "brier": float(np.mean(np.sum((probs - np.eye(n_classes)[y_true]) ** 2, axis=1))),
        "ece": ece,
        "calibration_bins": bins,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0).tolist(),
        "per_class": {name: report[name] for name in label_names},
        "roc": {},
        "pr": {},
        "selective": selective(y_true, probs, threshold),
        "threshold": threshold,
    }
    if threshold is not None:
        out["coverage_at_threshold"], out["accuracy_at_threshold"] = out["selective"]["at_threshold"]
    targets = {label_names[1]: 1} if n_classes == 2 else {name: i for i, name in enumerate(label_names)}
    for name, i in targets.items():
        positive = (y_true == i).astype(int)
        if positive.min() == positive.max():  # a class absent from (or alone in) the split: no curve
            continue
        fpr, tpr, _ = skm.roc_curve(positive, probs[:, i])
        precision, recall, _ = skm.precision_recall_curve(positive, probs[:, i])
        out["roc"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(skm.auc(fpr, tpr))}
        out["pr"][name] = {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "ap": float(skm.average_precision_score(positive, probs[:, i])),
            "prevalence": float(positive.mean()),
        }
    if out["roc"]:
        out["roc_auc"] = float(np.mean([c["auc"] for c in out["roc"].values()]))  # macro over classes
        out["average_precision"] = float(np.mean([c["ap"] for c in out["pr"].values()]))
    return out


def summary_metrics(report: dict) -> dict[str, float]:
    """The scalar numbers of a report, for MLflow metrics and tables."""
    keys = (
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_macro",
        "log_loss",
        "brier",
        "ece",
        "roc_auc",
        "average_precision",
        "coverage_at_threshold",
        "accuracy_at_threshold",
    )
    return {k: report[k] for k in keys if k in report}


def top_errors(frame: pd.DataFrame, n: int = 25) -> pd.DataFrame:
    """The n misclassified examples the model was most confident about."""
    cols = [
        c for c in ("text", "text_pair", "label", "prediction", "confidence", "prob_true_label") if c in frame
    ]
    wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False)
    return wrong[cols].head(n).reset_index(drop=True)


@dataclass
class ReportFiles:
    directory: Path
    metrics: dict
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)


def predictions_frame(
    texts: list[str], y_true: np.ndarray, probs: np.ndarray, label_names: list[str], text_pairs=None
) -> pd.DataFrame:
    """One row per example: text, true label, prediction, confidence and every class probability."""
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame({"text": list(texts)})
    if text_pairs is not None:
        frame["text_pair"] = list(text_pairs)
    frame["label"] = [label_names[i] for i in y_true]
    frame["prediction"] = [label_names[i] for i in pred]
    frame["correct"] = frame["label"] == frame["prediction"]
    frame["confidence"] = probs.max(axis=1)
    frame["prob_true_label"] = probs[np.arange(len(y_true)), y_true]
    for i, name in enumerate(label_names):
        frame[f"prob_{name}"] = probs[:, i]
    return frame


def write_report(
    frame: pd.DataFrame,
    label_names: list[str],
    out_dir: Path,
    split_name: str = "test",
    n_errors: int = 25,
    n_bins: int = 15,
    threshold: float | None = None,
    progress: bool | None = False,
) -> ReportFiles:
    """metrics.json, classification_report.csv, figures and top_errors.csv for a predictions frame
    (progress: a bar over the figures, see encoderlab.analysis.progress)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {name: i for i, name in enumerate(label_names)}
    y_true = frame["label"].map(index).to_numpy()
    probs = frame[[f"prob_{n}" for n in label_names]].to_numpy()
    report = compute_report(y_true, probs, label_names, n_bins, threshold)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    files = ReportFiles(out_dir, report)

    per_class = pd.DataFrame(report["per_class"]).T.rename_axis("label").reset_index()
    per_class["support"] = per_class["support"].astype(int)
    files.tables["classification_report"] = out_dir / "classification_report.csv"
    per_class.to_csv(files.tables["classification_report"], index=False)
    files.tables["top_errors"] = out_dir / "top_errors.csv"
    top_errors(frame, n_errors).to_csv(files.tables["top_errors"], index=False)

    title = f"{split_name} split"
    cm = np.array(report["confusion_matrix"])
    kind = "" if len(label_names) == 2 else ", one-vs-rest"
    cms = out_dir / "confusion_matrix.png", out_dir / "confusion_matrix_normalized.png"
    plots = {  # name -> drawing: drawn one by one under a progress bar
        "confusion_matrix": lambda: figures.plot_confusion_matrix(
            cm, label_names, cms[0], f"Confusion matrix, {title}"
        ),
        "confusion_matrix_normalized": lambda: figures.plot_confusion_matrix(
            cm, label_names, cms[1], f"Confusion matrix, {title}", True
        ),
    }
    if report["roc"]:
        plots["roc_curve"] = lambda: figures.plot_roc(
            report["roc"], out_dir / "roc_curve.png", f"ROC curve{kind}, {title}"
        )
        plots["pr_curve"] = lambda: figures.plot_pr(
            report["pr"], out_dir / "pr_curve.png", f"Precision-recall{kind}, {title}"
        )
    plots["reliability_diagram"] = lambda: figures.plot_reliability(
        report["calibration_bins"],
        report["ece"],
        out_dir / "reliability_diagram.png",
        f"Reliability, {title}",
    )
    plots["coverage"] = lambda: figures.plot_coverage(
        {"confidence": report["selective"]},
        threshold,
        out_dir / "coverage.png",
        f"Selective prediction, {title}",
    )
    for name in bar(plots, "Report figures", progress):
        files.figures[name] = plots[name]()
    return files
