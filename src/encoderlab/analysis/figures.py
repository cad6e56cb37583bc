"""Figures of the evaluation report: confusion matrices, ROC and precision-recall curves, reliability."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(
    cm: np.ndarray,
    label_names: list[str],
    path: Path,
    title: str = "Confusion matrix",
    normalized: bool = False,
) -> Path:
    """Row-normalised shading (true label per row), annotated with counts or with row shares."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    n = len(label_names)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true label")
    ax.set_xticks(
        range(n), labels=label_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center"
    )
    ax.set_yticks(range(n), labels=label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    kind = "row-normalised" if normalized else "counts"
    ax.set_title(f"{title}, {kind}\n(n={int(cm.sum())}, accuracy={np.trace(cm) / max(1, cm.sum()):.3f})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}" if normalized else f"{cm[i, j]}",
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=9,
                )
    return _save(fig, path)


def plot_roc(curves: dict[str, dict], path: Path, title: str = "ROC curve") -> Path:
    """curves: {name: {"fpr": [...], "tpr": [...], "auc": float}}; binary has one, multiclass one per class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], lw=1.8, label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(curves: dict[str, dict], path: Path, title: str = "Precision-recall curve") -> Path:
    """curves: {name: {"precision": [...], "recall": [...], "ap": float, "prevalence": float}}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, c in curves.items():
        line = ax.plot(c["recall"], c["precision"], lw=1.8, label=f"{name} (AP {c['ap']:.3f})")[0]
        ax.axhline(c["prevalence"], ls=":", lw=1, color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


OVER_CONFIDENT = "over-confident (confidence > accuracy)"
UNDER_CONFIDENT = "under-confident (accuracy > confidence)"


def draw_reliability(ax, hist, bins: list[dict], ece: float, title: str) -> dict:
    """Accuracy bars per confidence bin, the bin's mean confidence as a black line across its bar, and the
    gap between them shaded red where the model is over-confident, green where it is under-confident;
    the share of examples per bin below. Returns the artists by name (accuracy, confidence, over, under)."""
    edges = np.array([(b["lower"], b["upper"]) for b in bins])  # (bins, 2)
    count = np.array([b["count"] for b in bins])
    filled = [b for b in bins if b["count"]]
    lo = np.array([b["lower"] for b in filled])
    hi = np.array([b["upper"] for b in filled])
    width = hi - lo
    acc = np.array([b["accuracy"] for b in filled], dtype=float)
    conf = np.array([b["confidence"] for b in filled], dtype=float)
    artists = {
        "accuracy": ax.bar(
            lo, acc, width=width, align="edge", color="#9db4d8", edgecolor="black", label="accuracy"
        )
    }
    # the gap bar spans from the lower of the two to the higher: accuracy up to confidence when
    # over-confident, confidence up to accuracy when under-confident
    gaps = {
        "over": (conf > acc, acc, conf - acc, "#c44e52", "//", OVER_CONFIDENT),
        "under": (acc > conf, conf, acc - conf, "#2ca02c", "\\\\", UNDER_CONFIDENT),
    }
    for name, (where, bottom, height, color, hatch, label) in gaps.items():
        if where.any():
            artists[name] = ax.bar(
                lo[where],
                height[where],
                bottom=bottom[where],
                width=width[where],
                align="edge",
                color=color,
                alpha=0.55,
                hatch=hatch,
                label=label,
            )
    artists["confidence"] = ax.hlines(conf, lo, hi, color="black", lw=2.2, label="mean confidence in the bin")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    share = count / max(1, count.sum())
    hist.bar(
        edges[:, 0], share, width=edges[:, 1] - edges[:, 0], align="edge", color="grey", edgecolor="black"
    )
    hist.set(
        xlim=(min(edges[:, 0].min(), 0.0), 1), xlabel="confidence (max class probability)", ylabel="share"
    )
    return artists


def reliability_figure(bins: list[dict], ece: float, title: str = "Reliability diagram"):
    """The reliability diagram as a matplotlib figure and its artists (see draw_reliability)."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    return fig, draw_reliability(ax, hist, bins, ece, title)


def plot_reliability(bins: list[dict], ece: float, path: Path, title: str = "Reliability diagram") -> Path:
    """Accuracy vs confidence per confidence bin (bar width = bin), with the share of examples below."""
    fig, _ = reliability_figure(bins, ece, title)
    return _save(fig, path)


def plot_probe_suites(pass_rates: dict[str, float], path: Path, title: str = "Behavioural probes") -> Path:
    """Horizontal bars: pass rate per probe suite."""
    plt = _pyplot()
    names = list(pass_rates)
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    ax.barh(names, [pass_rates[n] for n in names], color="#55a868")
    for i, n in enumerate(names):
        ax.text(min(pass_rates[n] + 0.01, 0.9), i, f"{pass_rates[n]:.0%}", va="center")
    ax.set(xlim=(0, 1), xlabel="pass rate", title=title)
    ax.invert_yaxis()
    return _save(fig, path)


def plot_coverage(curves: dict[str, dict], threshold: float | None, path: Path, title: str) -> Path:
    """Selective prediction: accuracy on the examples kept vs the share kept, answering most confident first.
    curves: {name: {"coverage": [...], "accuracy": [...], "at_threshold": (coverage, accuracy) | None}}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, c in curves.items():
        line = ax.plot(c["coverage"], c["accuracy"], lw=1.8, label=name)[0]
        if c.get("at_threshold"):
            cov, acc = c["at_threshold"]
            ax.plot(
                [cov],
                [acc],
                "o",
                color=line.get_color(),
                label=f"{name}: p >= {threshold} keeps {cov:.0%}, acc {acc:.3f}",
            )
    ax.set(
        xlim=(0, 1.01),
        xlabel="coverage (share of examples answered)",
        ylabel="accuracy on answered",
        title=title,
    )
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
