"""The report of multi-label predictions: per-label table (support, precision, recall, F1, AP, threshold),
per-label precision-recall curves, label-count histogram and label co-occurrence (true vs predicted).

The predictions frame has one row per example: text, `true_labels` and `labels` (the true and the
predicted set, 'joy;love'), `correct` (exact match), n_true, n_pred, `confidence` (the top probability)
and prob_<label> per label.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from encoderlab.analysis.figures import _pyplot, _save
from encoderlab.analysis.report import ReportFiles
from encoderlab.data.multilabel import SEPARATOR, label_sets


def multilabel_frame(
    texts: list[str],
    targets: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    thresholds: list[float],
    text_pairs=None,
) -> pd.DataFrame:
    """One row per example: true and predicted label sets (each label above its threshold) and every
    label's probability."""
    targets = np.asarray(targets) > 0.5
    pred = np.asarray(probs) > np.asarray(thresholds)[None, :]
    frame = pd.DataFrame({"text": list(texts)})
    if text_pairs is not None:
        frame["text_pair"] = list(text_pairs)
    frame["true_labels"] = label_sets(targets, label_names)
    frame["labels"] = label_sets(pred, label_names)
    frame["correct"] = (targets == pred).all(axis=1)
    frame["n_true"] = targets.sum(axis=1)
    frame["n_pred"] = pred.sum(axis=1)
    frame["confidence"] = np.asarray(probs).max(axis=1)
    for i, name in enumerate(label_names):
        frame[f"prob_{name}"] = probs[:, i]
    return frame


def frame_arrays(frame: pd.DataFrame, label_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, predictions) as (N, C) bool and the (N, C) probabilities of a multilabel frame."""
    index = {n: i for i, n in enumerate(label_names)}

    def matrix(column: str) -> np.ndarray:
        out = np.zeros((len(frame), len(label_names)), dtype=bool)
        for row, value in enumerate(frame[column].fillna("").astype(str)):
            for name in filter(None, value.split(SEPARATOR)):
                out[row, index[name]] = True
        return out

    probs = frame[[f"prob_{n}" for n in label_names]].to_numpy(dtype=np.float64)
    return matrix("true_labels"), matrix("labels"), probs


def compute_multilabel_report(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, label_names: list[str], thresholds: list[float]
) -> dict:
    """Scores at the decision thresholds (sklearn), per-label rows and PR curves."""
    from sklearn import metrics as skm

    prf = skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    per_label, pr = {}, {}
    for j, name in enumerate(label_names):
        positive = y_true[:, j]
        ap = float(skm.average_precision_score(positive, probs[:, j])) if positive.any() else None
        per_label[name] = {
            "support": int(prf[3][j]),
            "precision": float(prf[0][j]),
            "recall": float(prf[1][j]),
            "f1": float(prf[2][j]),
            "average_precision": ap,
            "threshold": float(thresholds[j]),
            "predicted": int(y_pred[:, j].sum()),
        }
        if positive.any() and not positive.all():
            precision, recall, _ = skm.precision_recall_curve(positive, probs[:, j])
            pr[name] = {"precision": precision.tolist(), "recall": recall.tolist(), "ap": ap}
    average = {"zero_division": 0}
    out = {
        "n": int(len(y_true)),
        "f1_micro": float(skm.f1_score(y_true, y_pred, average="micro", **average)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", **average)),
        "precision_micro": float(skm.precision_score(y_true, y_pred, average="micro", **average)),
        "recall_micro": float(skm.recall_score(y_true, y_pred, average="micro", **average)),
        "subset_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "hamming_loss": float(skm.hamming_loss(y_true, y_pred)),
        "lrap": float(skm.label_ranking_average_precision_score(y_true, probs)),
        "per_label": per_label,
        "pr": pr,
        "thresholds": dict(zip(label_names, map(float, thresholds), strict=True)),
        "co_occurrence_true": (y_true.T.astype(int) @ y_true.astype(int)).tolist(),
        "co_occurrence_predicted": (y_pred.T.astype(int) @ y_pred.astype(int)).tolist(),
    }
    scored = [j for j in range(len(label_names)) if y_true[:, j].any() and not y_true[:, j].all()]
    if scored:
        out["roc_auc"] = float(skm.roc_auc_score(y_true[:, scored], probs[:, scored], average="macro"))
    return out


HEADLINE = (
    "f1_micro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "subset_accuracy",
    "hamming_loss",
    "lrap",
    "roc_auc",
)


def plot_pr_grid(pr: dict[str, dict], per_label: dict[str, dict], path: Path, title: str) -> Path:
    """One small precision-recall panel per label, its threshold's operating point marked."""
    plt = _pyplot()
    names = list(per_label)
    cols = min(7, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.2 * rows + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.axis("off")
            continue
        name, row = names[k], per_label[names[k]]
        if name in pr:
            ax.plot(pr[name]["recall"], pr[name]["precision"], lw=1.2)
            ax.plot([row["recall"]], [row["precision"]], "o", ms=4, color="C3")
        ap = f"AP {row['average_precision']:.2f}" if row["average_precision"] is not None else "no positives"
        ax.set_title(f"{name}\n{ap}, t={row['threshold']:.2f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{title} (recall on x, precision on y; dot: the decision threshold)", fontsize=10)
    return _save(fig, path)


def plot_label_counts(n_true: np.ndarray, n_pred: np.ndarray, path: Path, title: str) -> Path:
    """How many labels a row has: true vs predicted, side by side."""
    plt = _pyplot()
    top = int(max(n_true.max(initial=0), n_pred.max(initial=0)))
    ks = np.arange(top + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(ks - 0.2, np.bincount(n_true, minlength=top + 1), 0.4, label="true")
    ax.bar(ks + 0.2, np.bincount(n_pred, minlength=top + 1), 0.4, label="predicted")
    ax.set_xticks(ks if top <= 12 else ks[:: int(np.ceil(top / 12))])  # readable with 28 labels too
    ax.set_xlabel("labels per row")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_co_occurrence(
    true_cm: np.ndarray, pred_cm: np.ndarray, names: list[str], path: Path, title: str
) -> Path:
    """Label co-occurrence counts (diagonal: the label's rows), true beside predicted, on one colour scale."""
    plt = _pyplot()
    n = len(names)
    size = max(3.5, 0.32 * n + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size + 0.6))
    vmax = max(1, int(max(np.max(true_cm), np.max(pred_cm))))
    for ax, cm, what in ((axes[0], true_cm, "true"), (axes[1], pred_cm, "predicted")):
        im = ax.imshow(np.log1p(cm), cmap="Blues", vmin=0, vmax=np.log1p(vmax))
        ax.set_xticks(range(n), labels=names, rotation=90, fontsize=7 if n > 12 else 9)
        ax.set_yticks(range(n), labels=names, fontsize=7 if n > 12 else 9)
        ax.set_title(f"{what} labels")
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(int(cm[i][j])), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02, label="log(1 + rows with both)")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_multilabel_report(
    frame: pd.DataFrame,
    label_names: list[str],
    thresholds: list[float],
    out_dir: Path,
    split_name: str = "test",
    n_errors: int = 25,
) -> ReportFiles:
    """metrics.json, per_label.csv, top_errors.csv and the figures of a multilabel predictions frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true, y_pred, probs = frame_arrays(frame, label_names)
    report = compute_multilabel_report(y_true, y_pred, probs, label_names, thresholds)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    files = ReportFiles(out_dir, report)
    table = pd.DataFrame(report["per_label"]).T.rename_axis("label").reset_index()
    for column in ("support", "predicted"):
        table[column] = table[column].astype(int)
    files.tables["per_label"] = out_dir / "per_label.csv"
    table.to_csv(files.tables["per_label"], index=False)
    files.tables["top_errors"] = out_dir / "top_errors.csv"
    multilabel_errors(frame, n_errors).to_csv(files.tables["top_errors"], index=False)
    title = f"{split_name} split"
    files.figures["pr_curves"] = plot_pr_grid(
        report["pr"], report["per_label"], out_dir / "pr_curves.png", f"Precision-recall per label, {title}"
    )
    files.figures["label_counts"] = plot_label_counts(
        frame["n_true"].to_numpy(int),
        frame["n_pred"].to_numpy(int),
        out_dir / "label_counts.png",
        f"Labels per row, {title}",
    )
    files.figures["co_occurrence"] = plot_co_occurrence(
        np.array(report["co_occurrence_true"]),
        np.array(report["co_occurrence_predicted"]),
        label_names,
        out_dir / "co_occurrence.png",
        f"Label co-occurrence, {title}",
    )
    return files


def multilabel_errors(frame: pd.DataFrame, n: int = 25) -> pd.DataFrame:
    """The n rows whose predicted set differs most from the true one (most labels wrong, then most
    confident first)."""
    wrong = frame[~frame["correct"]].copy()
    if wrong.empty:
        return wrong[["text", "true_labels", "labels"]].reset_index(drop=True)
    true_sets = wrong["true_labels"].fillna("").astype(str).str.split(SEPARATOR)
    pred_sets = wrong["labels"].fillna("").astype(str).str.split(SEPARATOR)
    wrong["wrong_labels"] = [len((set(t) ^ set(p)) - {""}) for t, p in zip(true_sets, pred_sets, strict=True)]
    cols = [
        c for c in ("text", "text_pair", "true_labels", "labels", "wrong_labels", "confidence") if c in wrong
    ]
    wrong = wrong.sort_values(["wrong_labels", "confidence"], ascending=False)
    return wrong[cols].head(n).reset_index(drop=True)
