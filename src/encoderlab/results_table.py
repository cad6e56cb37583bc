"""Paper-style results from MLflow runs: runs grouped by the config keys that differ, mean ± std over
units of replication (seeds, cross-validation folds, or both), bootstrap CIs, baseline comparisons,
Markdown/LaTeX/CSV and a plot (`encoderlab table`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from encoderlab.errors import EncoderlabError
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
    units: list[str]  # "seed=<s>", or "seed=<s>/fold=<i>" for cross-validation runs
    stats: dict[str, tuple[float, float, float, float]]  # metric -> (mean, std, ci_low, ci_high)
    values: dict[str, dict[str, float]]  # metric -> unit -> value


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
    """95% percentile bootstrap CI of the mean."""
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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


def group_runs(frame: pd.DataFrame, metrics: list[str], group_by: list[str]) -> list[GroupStats]:
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
        stats, values = {}, {}
        for m in metrics:
            v = rows[f"metrics.{m}"].dropna().to_numpy(dtype=float)
            lo, hi = bootstrap_ci(v)
            stats[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, lo, hi)
            values[m] = dict(zip(units[rows.index], rows[f"metrics.{m}"], strict=True))
        out.append(GroupStats(label, len(rows), sorted(units[rows.index], key=_unit_order), stats, values))
    return out


def compare(base: GroupStats, other: GroupStats, metric: str, test: str, seed: int = 0) -> str:
    """Difference to the baseline with a p-value (Welch) or a 95% CI of the paired difference."""
    a = np.array(list(base.values[metric].values()), dtype=float)
    b = np.array(list(other.values[metric].values()), dtype=float)
    if test == "welch":
        from scipy import stats

        if len(a) < 2 or len(b) < 2:
            return "n<2"
        p = stats.ttest_ind(b, a, equal_var=False).pvalue
        return f"{b.mean() - a.mean():+.4f} (p={p:.3g})"
    shared = sorted(set(base.values[metric]) & set(other.values[metric]))
    if len(shared) < 2:
        return "no shared seeds"
    diff = np.array([other.values[metric][s] - base.values[metric][s] for s in shared])
    lo, hi = bootstrap_ci(diff, seed=seed)
    return f"{diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]"


def render(
    groups: list[GroupStats], metrics: list[str], fmt: str, extra: dict[str, list[str]] | None = None
) -> str:
    cv = any("/fold=" in u for g in groups for u in g.units)  # then a column says what n counts
    header = ["group", "n", *(["n counts"] if cv else [])]
    header += [*[f"{m} (mean ± std)" for m in metrics], *[f"{m} 95% CI" for m in metrics]]
    rows = []
    for g in groups:
        row = [g.group, str(g.n), *([n_counts(g)] if cv else [])]
        row += [f"{g.stats[m][0]:.4f} ± {g.stats[m][1]:.4f}" for m in metrics]
        row += [f"[{g.stats[m][2]:.4f}, {g.stats[m][3]:.4f}]" for m in metrics]
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
            return s.replace("±", r"$\pm$")

        lines = [r"\begin{tabular}{" + "l" + "r" * (len(header) - 1) + "}", r"\toprule"]
        lines.append(" & ".join(tex(h) for h in header) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join(tex(c) for c in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_groups(groups: list[GroupStats], metric: str, path: Path) -> Path:
    """Mean with 95% CI error bars per group, individual runs (seeds, folds) as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(groups) + 1.5))
    for i, g in enumerate(groups):
        mean, _, lo, hi = g.stats[metric]
        ax.errorbar(mean, i, xerr=[[mean - lo], [hi - mean]], fmt="o", color="#4c72b0", capsize=4)
        ax.scatter(list(g.values[metric].values()), [i] * g.n, color="grey", s=12, alpha=0.7, zorder=3)
    ax.set_yticks(range(len(groups)), labels=[g.group for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} (mean, 95% bootstrap CI; dots: runs)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
