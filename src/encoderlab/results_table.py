"""Paper-style results from MLflow runs: runs grouped by the config keys that differ, mean ± std over
seeds (and folds), CIs of the mean, baseline comparisons, Markdown/LaTeX/CSV and a plot (`encoderlab
table`). The statistics themselves live in table_stats."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from encoderlab.errors import EncoderlabError
from encoderlab.table_stats import INTERVALS, Interval, mean_ci
from encoderlab.tracking import is_bookkeeping

# keys that differ between runs without being an experimental factor
IGNORED = (
    "seed",
    "dataset.cv.fold",  # a fold is a unit like a seed; dataset.cv.folds stays a factor
    "output_dir",
    "run_name",
    "trainer.enable_progress_bar",
    "dataset.cache_dir",
    "dataset.num_workers",
)
IGNORED_PREFIXES = ("logger.", "hydra.")
CHOICE_TAG = "tags.encoderlab.choice."  # the config-group options a run composed (tracking.py)


@dataclass
class GroupStats:
    group: str
    n: int
    units: list[str]  # units of replication: "seed=<s>", or "seed=<s>/fold=<i>" with cross-validation
    stats: dict[str, tuple[float, float, float, float]]  # metric -> (mean, std, ci_low, ci_high); nan: no CI
    values: dict[str, dict[str, float]]  # metric -> unit -> value
    run_ids: list[str] = field(default_factory=list)
    intervals: dict[str, Interval] = field(default_factory=dict)  # metric -> CI, or why there is none


def run_units(frame: pd.DataFrame) -> pd.Series:
    """Each run's unit of replication: "seed=<s>", or "seed=<s>/fold=<i>" when it is fold i of a
    cross-validation (params dataset.cv.folds set, dataset.cv.fold). Runs without a seed: their id."""
    if "params.seed" not in frame:
        return frame["run_id"].astype(str)
    units = "seed=" + frame["params.seed"].astype(str)
    if "params.dataset.cv.fold" in frame and "params.dataset.cv.folds" in frame:
        folds = frame["params.dataset.cv.folds"].fillna("None").astype(str)
        cv = folds != "None"
        units = units.where(~cv, units + "/fold=" + frame["params.dataset.cv.fold"].astype(str))
    return units


def _unit_order(unit: str) -> list:
    """Natural order: seed=2/fold=10 after seed=2/fold=9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", unit)]


def n_counts(g: GroupStats) -> str:
    """What a group's n counts: "5 folds", "5 folds × 2 seeds" or "3 seeds"."""
    seeds = {u.split("/")[0] for u in g.units}
    folds = {u.split("/", 1)[1] for u in g.units if "/fold=" in u}
    if not folds:
        return f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"
    if len(seeds) == 1:
        return f"{len(folds)} fold{'s' * (len(folds) != 1)}"
    return f"{len(folds)} folds × {len(seeds)} seeds"


def bootstrap_ci(values: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean (scipy.stats.bootstrap); the mean twice for n<2."""
    ci = mean_ci(values, "percentile", 0.95, n_boot, seed)
    mean = float(np.mean(values))
    return (mean, mean) if ci.low is None else (ci.low, ci.high)


def latest_sweep(client):
    """The parent run of the most recent sweep or multirun in the store (tag encoderlab.sweep = grid |
    optuna, latest start time first), or None."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(
        experiments,
        filter_string="tags.`encoderlab.sweep` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def load_runs(client, experiments: list[str], parent: str | None, filter_string: str | None) -> pd.DataFrame:
    """One row per finished (child) run: params.* and metrics.* columns, as mlflow.search_runs gives."""
    import mlflow

    exp_ids = []
    if parent:
        try:
            exp_ids = [client.get_run(parent).info.experiment_id]
        except Exception as ex:
            raise EncoderlabError(f"No MLflow run with id {parent} (the sweep's parent run).") from ex
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise EncoderlabError(f"No MLflow experiment named '{name}'. Experiments: {known}.")
        exp_ids.append(exp.experiment_id)
    if not exp_ids:
        raise EncoderlabError("Say which runs: --experiment NAME (repeatable) and/or --parent RUN_ID.")
    clauses = ["attributes.status = 'FINISHED'"]
    if parent:
        clauses.append(f"tags.mlflow.parentRunId = '{parent}'")
    if filter_string:
        clauses.append(f"({filter_string})" if " or " in filter_string.lower() else filter_string)
    try:
        frame = mlflow.search_runs(exp_ids, filter_string=" and ".join(clauses), max_results=50000)
    except Exception as ex:
        raise EncoderlabError(f"MLflow could not search with filter {filter_string!r}: {ex}") from ex
    if "tags.encoderlab.sweep" in frame:  # parent runs carry no metrics of their own
        frame = frame[frame["tags.encoderlab.sweep"].isna()]
    frame = frame.reset_index(drop=True)
    for col in [c for c in frame.columns if c.startswith(CHOICE_TAG)]:  # model=minilm etc. as a key
        group = col.removeprefix(CHOICE_TAG)
        if f"params.{group}" not in frame:
            frame[f"params.{group}"] = frame[col]
    return frame


def _choice_groups(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix(CHOICE_TAG) for c in frame.columns if c.startswith(CHOICE_TAG)]


def varying_keys(frame: pd.DataFrame) -> list[str]:
    """Config keys (params) whose values differ between the runs, bookkeeping keys excluded. When a
    config group's option differs (model=minilm vs model=scratch_small), that option stands for all
    the keys under the group."""

    def varies(key: str) -> bool:
        return f"params.{key}" in frame and frame[f"params.{key}"].fillna("<unset>").nunique() > 1

    switched = [g for g in _choice_groups(frame) if g != "experiment" and varies(g)]
    keys = []
    for col in sorted(c for c in frame.columns if c.startswith("params.")):
        key = col.removeprefix("params.")
        if key in IGNORED or key.startswith(IGNORED_PREFIXES) or is_bookkeeping(key):  # older runs
            continue
        if key in _choice_groups(frame) and key not in switched:
            continue
        if any(key.startswith(f"{g}.") for g in switched):
            continue
        if varies(key):
            keys.append(key)
    return keys


def group_runs(
    frame: pd.DataFrame,
    metrics: list[str],
    group_by: list[str],
    ci: str = "bca",
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> list[GroupStats]:
    """One GroupStats per distinct value of the group-by keys, with the `ci` interval of each metric's
    mean over the group's runs (table_stats.mean_ci)."""
    missing = [m for m in metrics if f"metrics.{m}" not in frame]
    if missing:
        known = sorted(c.removeprefix("metrics.") for c in frame.columns if c.startswith("metrics."))
        raise EncoderlabError(
            f"No metric {', '.join(missing)} in these runs. Metrics logged: {', '.join(known)}."
        )
    labels = (
        frame[[f"params.{k}" for k in group_by]]
        .fillna("<unset>")
        .astype(str)
        .apply(lambda row: ", ".join(f"{k}={v}" for k, v in zip(group_by, row, strict=True)), axis=1)
        if group_by
        else pd.Series(["all runs"] * len(frame))
    )
    units = run_units(frame)
    out = []
    for label in dict.fromkeys(labels):
        rows = frame[labels == label]
        stats, values, intervals = {}, {}, {}
        for m in metrics:
            v = rows[f"metrics.{m}"].dropna().to_numpy(dtype=float)
            interval = mean_ci(v, ci, level, n_resamples, seed)
            lo, hi = (np.nan, np.nan) if interval.low is None else (interval.low, interval.high)
            stats[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, lo, hi)
            values[m] = dict(zip(units[rows.index], rows[f"metrics.{m}"], strict=True))
            intervals[m] = interval
        run_ids = rows["run_id"].tolist() if "run_id" in rows else []
        out.append(
            GroupStats(
                label,
                len(rows),
                sorted(units[rows.index], key=_unit_order),
                stats,
                values,
                run_ids,
                intervals,
            )
        )
    return out


SHORT = {
    "paired-t": "paired t",
    "wilcoxon": "Wilcoxon",
    "welch": "Welch",
    "paired-bootstrap": "paired bootstrap",
}


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def comparisons(
    groups: list[GroupStats],
    base: GroupStats,
    metric: str,
    test: str,
    example_tests: list[str],
    client=None,
    ci: str = "bca",
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[dict[str, list[str]], list[str]]:
    """The comparison columns against `base` (column -> one cell per group) and the notes that say what
    each one is: `test` over the units the groups share, then the example-level tests on the groups'
    test predictions (downloaded through `client`), each with raw and Holm-adjusted p-values."""
    from encoderlab import table_stats as ts

    others = [g for g in groups if g is not base]
    k = len(others)
    cols: dict[str, list[str]] = {}
    notes: list[str] = []

    def add(name: str, results: list[ts.Comparison], cells: list[str] | None = None, p: bool = True):
        cells = cells or [r.cell() for r in results]
        it = iter(cells)
        cols[name] = ["baseline" if g is base else next(it) for g in groups]
        if p:
            adjusted = iter(ts.holm([r.p for r in results], alpha=1 - level))
            raw = iter(results)
            short = name.split("(", 1)[1].rstrip(")") if "(" in name else name
            cols[f"p ({short})"] = ["—" if g is base else _p(next(raw).p) for g in groups]
            cols[f"p Holm ({short})"] = ["—" if g is base else _p(next(adjusted)) for g in groups]

    label = SHORT[test]
    results = [
        ts.unit_test(base.values[metric], g.values[metric], test, ci, level, n_resamples, seed)
        for g in others
    ]
    add(f"Δ {metric} vs baseline ({label})", results, p=test != "paired-bootstrap")
    if test == "welch":
        notes.append(
            f"Welch: scipy.stats.ttest_ind(equal_var=False) of {metric}, all runs of each group (unpaired); "
            f"Δ = difference of means with its {level * 100:g}% CI."
        )
    else:
        ci_of = "t-interval (ttest_rel)" if test == "paired-t" else f"{ts.INTERVALS[ci]}"
        what = {
            "paired-t": "scipy.stats.ttest_rel, two-sided",
            "wilcoxon": "scipy.stats.wilcoxon (signed-rank), two-sided",
            "paired-bootstrap": "no p-value",
        }[test]
        notes.append(
            f"{label}: {metric} paired over the units (seed, or seed/fold) a group shares with the baseline "
            f"({what}); Δ = mean paired difference (group − baseline) [{level * 100:g}% CI: {ci_of}]; "
            "fewer than 2 shared units: not tested."
        )
    if example_tests:
        import tempfile

        name = metric.removeprefix("test/")
        with tempfile.TemporaryDirectory() as tmp:
            preds = {}
            for g in groups:
                frames = {r: ts.read_predictions(client, r, g.group, tmp) for r in g.run_ids}
                preds[g.group] = ts.ensemble(g.group, frames)
        bp = preds[base.group]
        for g in others:
            ts.check_pair(bp, preds[g.group])
        n_ex = len(bp.y_true)
        if "mcnemar" in example_tests:
            out = [ts.mcnemar(bp.y_true, bp.y_pred, preds[g.group].y_pred) for g in others]
            add("Δ accuracy (McNemar)", [r for r, _ in out], [c for _, c in out])
            notes.append(
                f"McNemar: statsmodels mcnemar on the 2×2 table of baseline vs group right/wrong over the "
                f"{n_ex} test examples (exact binomial below {ts.MCNEMAR_EXACT_BELOW} discordant pairs, else "
                "χ² with continuity correction); cell: accuracy difference, the group-right/baseline-right "
                "discordant counts."
            )
        if "bootstrap" in example_tests:
            method = "BCa" if ci == "bca" else "percentile"
            res = [
                ts.paired_bootstrap(
                    bp.y_true,
                    bp.y_pred,
                    preds[g.group].y_pred,
                    name,
                    len(bp.classes),
                    ci,
                    level,
                    n_resamples,
                    seed,
                )
                for g in others
            ]
            add(f"Δ {name} over test examples (bootstrap)", res)
            notes.append(
                f"bootstrap: paired bootstrap of Δ {name} over the {n_ex} test examples (scipy.stats.bootstrap"
                f"(paired=True), the same resampled examples for both, {n_resamples} resamples, seed {seed}); "
                f"{level * 100:g}% {method} CI; p = share of resampled Δ at least as far from the observed Δ "
                "as it is from 0."
            )
        notes.append(
            "Example-level tests compare each group's ensemble (class probabilities averaged over its "
            "runs) on one test set; they ask whether the two models differ on these examples, not whether "
            "the training recipes differ across seeds."
        )
        sizes = {g.group: len(g.run_ids) for g in groups}
        if len(set(sizes.values())) > 1:
            notes.append(
                "Ensemble sizes differ ("
                + ", ".join(f"{k}: {v} runs" for k, v in sizes.items())
                + "): a larger ensemble is usually more accurate, which favours it in these tests."
            )
    if k:
        notes.append(
            f"p Holm: Holm–Bonferroni over the {k} group(s) compared with the baseline, per test "
            "(statsmodels multipletests, method='holm')."
        )
    return cols, notes


def ci_note(ci: str, level: float, n_resamples: int, seed: int) -> str:
    how = (
        "scipy.stats.t.interval, n−1 df"
        if ci == "t"
        else f"scipy.stats.bootstrap, {n_resamples} resamples, seed {seed}"
    )
    return (
        f"n: runs per group. CI: {level * 100:g}% {INTERVALS[ci]} of the mean over a group's runs ({how}); "
        "n=1: no interval; all values equal: the point (nothing to resample)."
    )


def ci_header(metric: str, ci: str, level: float) -> str:
    return f"{metric} {level * 100:g}% CI ({INTERVALS[ci]})"


def render(
    groups: list[GroupStats],
    metrics: list[str],
    fmt: str,
    extra: dict[str, list[str]] | None = None,
    ci: str = "percentile",
    level: float = 0.95,
    notes: list[str] | None = None,
) -> str:
    """The table as Markdown (notes below it), LaTeX (notes as the caption) or CSV (the column names say
    the interval and tests; the notes are for the caller to print elsewhere)."""
    cv = any("/fold=" in u for g in groups for u in g.units)  # then a column says what n counts
    header = ["group", "n", *(["n counts"] if cv else [])]
    header += [*[f"{m} (mean ± std)" for m in metrics], *[ci_header(m, ci, level) for m in metrics]]
    rows = []
    for g in groups:
        row = [g.group, str(g.n), *([n_counts(g)] if cv else [])]
        row += [f"{g.stats[m][0]:.4f} ± {g.stats[m][1]:.4f}" for m in metrics]
        row += [_ci_cell(g, m) for m in metrics]
        rows.append(row)
    for name, col in (extra or {}).items():
        header.append(name)
        for row, value in zip(rows, col, strict=True):
            row.append(value)
    if fmt == "csv":
        return pd.DataFrame(rows, columns=header).to_csv(index=False)
    if fmt == "latex":
        esc = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"}

        def tex(s: str) -> str:
            s = "".join(esc.get(c, c) for c in s)
            return s.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("χ²", r"$\chi^2$")

        lines = [r"\begin{tabular}{" + "l" + "r" * (len(header) - 1) + "}", r"\toprule"]
        lines.append(" & ".join(tex(h) for h in header) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join(tex(c) for c in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        if notes:
            lines = [r"\begin{table}[t]", r"\centering", *lines]
            lines += [r"\caption{" + tex(" ".join(notes)) + "}", r"\end{table}"]
        return "\n".join(lines) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _ci_cell(g: GroupStats, metric: str) -> str:
    if metric in g.intervals:
        return g.intervals[metric].cell()
    return f"[{g.stats[metric][2]:.4f}, {g.stats[metric][3]:.4f}]"


def plot_groups(groups: list[GroupStats], metric: str, path: Path, ci_label: str = "95% CI") -> Path:
    """Mean with CI error bars per group, individual runs (seeds, folds) as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(groups) + 1.5))
    for i, g in enumerate(groups):
        mean, _, lo, hi = g.stats[metric]
        if np.isnan(lo):  # no interval (n=1)
            ax.plot(mean, i, "o", color="#4c72b0")
        else:
            ax.errorbar(mean, i, xerr=[[mean - lo], [hi - mean]], fmt="o", color="#4c72b0", capsize=4)
        ax.scatter(list(g.values[metric].values()), [i] * g.n, color="grey", s=12, alpha=0.7, zorder=3)
    ax.set_yticks(range(len(groups)), labels=[g.group for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} (mean, {ci_label}; dots: runs)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
