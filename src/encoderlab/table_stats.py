"""The statistics of `encoderlab table`, on scipy and statsmodels: the CI of a group's mean over its runs
(BCa bootstrap, t-interval or percentile bootstrap), comparisons with a baseline group over the units of
replication they share (paired t, Wilcoxon, Welch, paired bootstrap of the differences), example-level
tests on two groups' test predictions (McNemar, paired bootstrap over test examples) and Holm's
correction across the groups compared. docs/statistics.md says what each one answers."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from encoderlab.errors import EncoderlabError

INTERVALS = {"bca": "BCa bootstrap", "t": "t-interval", "percentile": "percentile bootstrap"}
UNIT_TESTS = {
    "paired-t": "paired t-test over shared units",
    "wilcoxon": "Wilcoxon signed-rank over shared units",
    "welch": "Welch t-test (unpaired)",
    "paired-bootstrap": "bootstrap of the paired differences over shared units",
}
EXAMPLE_TESTS = {"mcnemar": "McNemar", "bootstrap": "paired bootstrap over test examples"}
MCNEMAR_EXACT_BELOW = 25  # discordant pairs: below this the exact binomial test, else chi-square
PREDICTIONS = "predictions/test_predictions.csv"  # a run's artifact (train.TEST_PREDICTIONS)


@dataclass
class Interval:
    """A CI, or why there is none (`low`/`high` None) or which fallback gave it (`note`)."""

    low: float | None
    high: float | None
    note: str = ""

    def cell(self, digits: int = 4, signed: bool = False) -> str:
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        if self.low is None or self.high is None:
            return f"— ({self.note})"
        text = f"[{f.format(self.low)}, {f.format(self.high)}]"
        return f"{text} ({self.note})" if self.note else text


def mean_ci(
    values: Sequence[float], method: str, level: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> Interval:
    """CI of the mean of `values`: scipy.stats.bootstrap (BCa or percentile) or the t-interval. n=1 has
    no interval; all-equal values give the point itself (no spread to resample, t undefined); a BCa
    interval scipy cannot compute (nan) falls back to the percentile one, and says so. The values are
    sorted first, so the interval does not depend on the order the store lists the runs in."""
    v = np.sort(np.asarray(values, dtype=float))
    if len(v) < 2:
        return Interval(None, None, f"n={len(v)}: no interval")
    if np.all(v == v[0]):
        return Interval(float(v[0]), float(v[0]), f"all {len(v)} equal")
    if method == "t":
        from scipy import stats

        low, high = stats.t.interval(level, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
        return Interval(float(low), float(high))
    low, high = _bootstrap_mean(v, method, level, n_resamples, seed)
    if method == "bca" and not (np.isfinite(low) and np.isfinite(high)):
        low, high = _bootstrap_mean(v, "percentile", level, n_resamples, seed)
        return Interval(float(low), float(high), "BCa undefined: percentile")
    return Interval(float(low), float(high))


def _bootstrap_mean(v: np.ndarray, method: str, level: float, n_resamples: int, seed: int):
    from scipy import stats

    with warnings.catch_warnings():  # degenerate resamples: the nan is handled by the caller
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (v,),
            np.mean,
            method="BCa" if method == "bca" else "percentile",
            confidence_level=level,
            n_resamples=n_resamples,
            rng=np.random.default_rng(seed),
        )
    return res.confidence_interval.low, res.confidence_interval.high


@dataclass
class Comparison:
    """One group against the baseline by one test: the difference (group − baseline), its CI, the
    two-sided p-value (None: not tested, `note` says why) and the number of units or examples used."""

    diff: float | None
    ci: Interval | None
    p: float | None
    note: str = ""

    def cell(self) -> str:
        if self.diff is None:
            return self.note
        text = f"{self.diff:+.4f}"
        if self.ci is not None:
            text += " " + self.ci.cell(signed=True)
        return f"{text} ({self.note})" if self.note else text


def unit_test(
    base: dict[str, float],
    other: dict[str, float],
    test: str,
    ci: str = "bca",
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """`other` against `base` (unit -> value, unit as GroupStats.units): paired tests pair the units the
    two groups share (same seed, or same seed and fold); Welch compares all values unpaired."""
    from scipy import stats

    if test == "welch":
        a, b = np.array(list(base.values()), float), np.array(list(other.values()), float)
        if len(a) < 2 or len(b) < 2:
            return Comparison(None, None, None, "not tested: n<2")
        res = stats.ttest_ind(b, a, equal_var=False)
        if not np.isfinite(res.pvalue):
            return Comparison(float(b.mean() - a.mean()), None, None, "no variance: t undefined")
        low, high = res.confidence_interval(level)
        return Comparison(float(b.mean() - a.mean()), Interval(float(low), float(high)), float(res.pvalue))
    shared = sorted(set(base) & set(other))
    if len(shared) < 2:
        return Comparison(None, None, None, f"not tested: {len(shared)} shared unit(s), needs 2")
    a = np.array([base[u] for u in shared], float)
    b = np.array([other[u] for u in shared], float)
    d = b - a
    n = f"n={len(shared)}"
    if np.all(d == d[0]):  # t has zero variance, Wilcoxon nothing to rank (or all ties at 0)
        return Comparison(float(d[0]), None, None, f"{n}, all differences equal: not tested")
    if test == "paired-t":
        res = stats.ttest_rel(b, a)
        low, high = res.confidence_interval(level)
        return Comparison(float(d.mean()), Interval(float(low), float(high)), float(res.pvalue), n)
    interval = mean_ci(d, ci, level, n_resamples, seed)
    if test == "wilcoxon":
        with warnings.catch_warnings():  # zero differences dropped, a normal approximation for ties
            warnings.simplefilter("ignore")
            p = float(stats.wilcoxon(b, a).pvalue)
        return Comparison(float(d.mean()), interval, p, n)
    return Comparison(float(d.mean()), interval, None, n)  # paired-bootstrap: a CI only


def holm(pvalues: Sequence[float | None], alpha: float = 0.05) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (statsmodels multipletests) over the p-values that exist."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if present:
        adjusted = multipletests([pvalues[i] for i in present], alpha=alpha, method="holm")[1]
        for i, p in zip(present, adjusted, strict=True):
            out[i] = float(p)
    return out


# ---- example-level tests on the test predictions


@dataclass
class GroupPredictions:
    """A group's predictions on the test set: the true class and the predicted class per example (the
    group's ensemble: class probabilities averaged over its runs)."""

    group: str
    run_ids: list[str]
    classes: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    rows: pd.DataFrame  # what identifies the test rows: text (and text_pair) and label


def ensemble(group: str, frames: dict[str, pd.DataFrame]) -> GroupPredictions:
    """Mean class probabilities over a group's runs (run id -> its test_predictions.csv frame), which
    must all hold the same test rows in the same order."""
    run_ids = list(frames)
    first = frames[run_ids[0]]
    classes = _classes(first, run_ids[0], group)
    for rid in run_ids[1:]:
        same_test_set(first, frames[rid], f"run {run_ids[0]}", f"run {rid} (same group '{group}')")
        if _classes(frames[rid], rid, group) != classes:
            raise EncoderlabError(
                f"The runs of group '{group}' predict different classes ({run_ids[0]} vs {rid}): "
                "their predictions cannot be averaged."
            )
    probs = np.mean([frames[r][[f"prob_{c}" for c in classes]].to_numpy(float) for r in run_ids], axis=0)
    index = {c: i for i, c in enumerate(classes)}
    y_true = first["label"].astype(str).map(index)
    if y_true.isna().any():
        raise EncoderlabError(f"Group '{group}': a test label has no prob_ column in the predictions.")
    ident = [c for c in ("text", "text_pair", "label") if c in first]
    return GroupPredictions(
        group, run_ids, classes, y_true.to_numpy(int), probs.argmax(axis=1), first[ident].astype(str)
    )


def _classes(frame: pd.DataFrame, run_id: str, group: str) -> list[str]:
    classes = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    classes = [c for c in classes if c != "true_label"]
    if "label" not in frame or not classes:
        raise EncoderlabError(
            f"The test predictions of run {run_id} (group '{group}') have no 'label' column or no "
            "prob_<class> columns: example-level tests need single-label predictions "
            "(one probability column per class)."
        )
    return classes


def same_test_set(a: pd.DataFrame, b: pd.DataFrame, what_a: str, what_b: str) -> None:
    """Refuse two predictions files that are not the same test set row for row (count, text, label)."""
    if len(a) != len(b):
        raise EncoderlabError(
            f"Example-level tests need the same test set, row for row: {what_a} has {len(a)} test rows, "
            f"{what_b} has {len(b)}. Compare groups evaluated on the same data (same dataset and "
            "dataset.max_eval_samples), or leave out --example-tests."
        )
    for col in ("text", "text_pair", "label"):
        if (col in a) != (col in b):
            raise EncoderlabError(f"Not the same test set: {what_a} and {what_b} differ in column {col!r}.")
        if col in a:
            differ = np.flatnonzero(a[col].astype(str).to_numpy() != b[col].astype(str).to_numpy())
            if len(differ):
                i = int(differ[0])
                raise EncoderlabError(
                    f"Example-level tests need the same test set, row for row: {what_a} and {what_b} "
                    f"differ in {col!r} at {len(differ)} rows, first at row {i} "
                    f"({str(a[col].iloc[i])[:40]!r} vs {str(b[col].iloc[i])[:40]!r})."
                )


def check_pair(base: GroupPredictions, other: GroupPredictions) -> None:
    same_test_set(
        base.rows, other.rows, f"baseline '{base.group}' (run {base.run_ids[0]})",
        f"group '{other.group}' (run {other.run_ids[0]})",
    )  # fmt: skip
    if base.classes != other.classes:
        raise EncoderlabError(
            f"Groups '{base.group}' and '{other.group}' predict different classes "
            f"({', '.join(base.classes)} vs {', '.join(other.classes)}): not comparable example by example."
        )


def mcnemar_table(y: np.ndarray, pred_base: np.ndarray, pred_other: np.ndarray) -> np.ndarray:
    """2×2 counts: rows baseline correct/wrong, columns group correct/wrong."""
    a, b = pred_base == y, pred_other == y
    return np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])


def mcnemar(y: np.ndarray, pred_base: np.ndarray, pred_other: np.ndarray) -> tuple[Comparison, str]:
    """McNemar's test on the examples where exactly one of the two is right (statsmodels): exact
    binomial below MCNEMAR_EXACT_BELOW discordant pairs, else chi-square with continuity correction.
    Returns the accuracy difference with the p-value, and the cell text."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    table = mcnemar_table(y, pred_base, pred_other)
    discordant = int(table[0, 1] + table[1, 0])
    diff = float((pred_other == y).mean() - (pred_base == y).mean())
    if discordant == 0:
        return Comparison(diff, None, None, "no discordant pairs: not tested"), "no discordant pairs"
    exact = discordant < MCNEMAR_EXACT_BELOW
    res = sm_mcnemar(table, exact=exact, correction=True)
    kind = "exact" if exact else f"χ²={res.statistic:.3f}"
    text = f"{diff:+.4f} ({kind}, {int(table[1, 0])} vs {int(table[0, 1])} discordant)"
    return Comparison(diff, None, float(res.pvalue), kind), text


def _counts(y: np.ndarray, pred: np.ndarray, n_classes: int, axis: int):
    """Per-class true positives, predicted and true counts along `axis` (resamples stay vectorised)."""
    tp, npred, ntrue = [], [], []
    for c in range(n_classes):
        p, t = pred == c, y == c
        tp.append(np.sum(p & t, axis=axis))
        npred.append(np.sum(p, axis=axis))
        ntrue.append(np.sum(t, axis=axis))
    return (
        np.stack(tp, -1).astype(float),
        np.stack(npred, -1).astype(float),
        np.stack(ntrue, -1).astype(float),
    )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _metric_fn(name: str, n_classes: int) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    """metric(y, pred, axis) over all classes, zero where undefined (as torchmetrics' test metrics)."""

    def metric(y: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
        if name == "accuracy":
            return np.mean(y == pred, axis=axis)
        tp, npred, ntrue = _counts(y, pred, n_classes, axis)
        precision, recall = _safe_div(tp, npred), _safe_div(tp, ntrue)
        f1 = _safe_div(2 * tp, npred + ntrue)
        per_class = {"f1": f1, "precision": precision, "recall": recall}[name.split("_")[0]]
        if name.endswith("_macro"):
            return per_class.mean(axis=-1)
        weights = ntrue / ntrue.sum(axis=-1, keepdims=True)  # _weighted: by support
        return (per_class * weights).sum(axis=-1)

    return metric


EXAMPLE_METRICS = (
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "precision_weighted",
    "recall_macro",
    "recall_weighted",
)


def paired_bootstrap(
    y: np.ndarray,
    pred_base: np.ndarray,
    pred_other: np.ndarray,
    metric: str,
    n_classes: int,
    ci: str = "bca",
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """metric(group) − metric(baseline) with its CI by scipy.stats.bootstrap(paired=True) over test
    examples (one draw of example indices serves both models), BCa or percentile. p: two-sided, the share
    of bootstrap differences at least as far from the observed one as the observed one is from 0 (the
    bootstrap distribution shifted to the null)."""
    from scipy import stats

    fn = _metric_fn(metric, n_classes)

    def statistic(y_, a_, b_, axis=-1):
        return fn(y_, b_, axis) - fn(y_, a_, axis)

    observed = float(statistic(y, pred_base, pred_other))
    if np.array_equal(pred_base, pred_other):
        return Comparison(0.0, None, None, "identical predictions: not tested")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate BCa is caught below
        res = stats.bootstrap(
            (y, pred_base, pred_other),
            statistic,
            paired=True,
            vectorized=True,
            batch=max(1, min(n_resamples, 2_000_000 // max(len(y), 1))),
            method="BCa" if ci == "bca" else "percentile",
            confidence_level=level,
            n_resamples=n_resamples,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    interval = (
        Interval(low, high) if np.isfinite(low) and np.isfinite(high) else Interval(None, None, "BCa nan")
    )
    dist = res.bootstrap_distribution
    p = (1 + np.sum(np.abs(dist - observed) >= abs(observed))) / (len(dist) + 1)
    return Comparison(observed, interval, float(min(p, 1.0)), f"{len(y)} examples")


def read_predictions(client, run_id: str, group: str, tmp: str) -> pd.DataFrame:
    """A run's test predictions from its MLflow artifacts; a clear error when it has none."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        path = client.download_artifacts(run_id, PREDICTIONS, os.path.join(tmp, run_id))
    except Exception as ex:
        raise EncoderlabError(
            f"Run {run_id} (group '{group}') has no {PREDICTIONS} artifact ({type(ex).__name__}): "
            "example-level tests (--example-tests) need every compared run's test predictions "
            "(logged by default; logger.log_predictions=false turns them off)."
        ) from None
    return pd.read_csv(path, keep_default_na=False)
