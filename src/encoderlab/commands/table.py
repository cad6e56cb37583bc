"""`encoderlab table`: paper-style results from MLflow runs, mean ± std over seeds per configuration.

    encoderlab table                      (the most recent sweep or `train -m` grid in ./outputs)
    encoderlab table --experiment sst2_grid --metrics test/accuracy,test/f1_macro
    encoderlab table --parent <sweep parent run id> --format latex --baseline model._target_=...
    encoderlab table --experiment sst2_grid --filter "params.dataset.name = 'sst2'" --plot results.png
    encoderlab table -e grid --ci t --baseline model=minilm --test wilcoxon --example-tests mcnemar,bootstrap

Runs are grouped by the config keys whose values differ between them, the seed, the
cross-validation fold (dataset.cv.fold) and bookkeeping keys such as output_dir excluded; each group
reports n (seeds, folds, or folds × seeds: an "n counts" column says which when folds are in the table), mean ± std (sample std) and a CI of the mean
(--ci: BCa bootstrap, t-interval or percentile bootstrap). --baseline compares every other group with
one: over the seeds (or seed/fold units) they share (--test), and with --example-tests on their test
predictions (McNemar, paired bootstrap over test examples); p-values are Holm-adjusted across groups.
See docs/statistics.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from encoderlab.commands import command_parser
from encoderlab.errors import EncoderlabError
from encoderlab.results_table import (
    ci_note,
    comparisons,
    group_runs,
    latest_sweep,
    load_runs,
    plot_groups,
    render,
    varying_keys,
)
from encoderlab.table_stats import EXAMPLE_METRICS, EXAMPLE_TESTS, INTERVALS, UNIT_TESTS


class TableUsageError(EncoderlabError):
    """Options that do not go together (e.g. a test without --baseline): exit 2, nothing opened."""

    exit_code = 2


def _example_tests(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in EXAMPLE_TESTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown example-level test {', '.join(unknown) or repr(text)}; allowed: "
            f"{', '.join(EXAMPLE_TESTS)} (comma-separated)"
        )
    return names


def _level(text: str) -> float:
    try:
        level = float(text)
    except ValueError:
        level = -1.0
    if not 0 < level < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a confidence level between 0 and 1, e.g. 0.95")
    return level


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("table", __doc__)
    p.add_argument(
        "--experiment", "-e", action="append", default=[], help="MLflow experiment name (repeatable)"
    )
    p.add_argument(
        "--parent", help="a sweep's parent run id: its child runs (default: the most recent sweep)"
    )
    p.add_argument("--filter", help="MLflow search filter, e.g. \"params.dataset.name = 'sst2'\"")
    p.add_argument("--metrics", default="test/accuracy,test/f1_macro", help="comma-separated metric names")
    p.add_argument(
        "--group-by", help="comma-separated config keys (default: the keys that differ, seed excluded)"
    )
    p.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown")
    p.add_argument(
        "--baseline",
        help="the group to compare against, e.g. 'model.name_or_path=...' (a substring of the group label)",
    )
    p.add_argument(
        "--ci",
        choices=tuple(INTERVALS),
        default="bca",
        help="CI of each group's mean: bca (BCa bootstrap, default), t (t-interval), percentile (bootstrap)",
    )
    p.add_argument("--level", type=_level, default=0.95, help="confidence level of the CIs (default 0.95)")
    p.add_argument(
        "--test",
        choices=tuple(UNIT_TESTS),
        help="with --baseline: the test of the first metric over the units (seeds, seed/fold) a group shares "
        "with the baseline: paired-t (default), wilcoxon, paired-bootstrap (a CI of the mean paired "
        "difference, no p), or welch (unpaired, all runs)",
    )
    p.add_argument(
        "--example-tests",
        type=_example_tests,
        default=[],
        metavar="mcnemar,bootstrap",
        help="with --baseline: tests on the test predictions of each group's runs (their ensemble): "
        "mcnemar (accuracy) and/or bootstrap (paired bootstrap over test examples of the first metric)",
    )
    p.add_argument("--n-resamples", type=_positive, default=10000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstraps (default 0)")
    p.add_argument("--plot", type=Path, help="PNG of the first metric: mean and CI per group")
    p.add_argument("--output", "-o", type=Path, help="also write the table to this file")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db")
    return p


def _check(args: argparse.Namespace, metrics: list[str]) -> None:
    """Refuse option combinations that cannot work, before the store is opened."""
    if not metrics:
        raise TableUsageError("--metrics is empty: give at least one metric, e.g. test/accuracy.")
    if not args.baseline and (args.test or args.example_tests):
        which = "--test" if args.test else "--example-tests"
        raise TableUsageError(
            f"{which} compares groups with a baseline group: add --baseline GROUP (a group label or a "
            "substring of one, e.g. --baseline model=minilm)."
        )
    if "bootstrap" in args.example_tests:
        name = metrics[0]
        if not name.startswith("test/") or name.removeprefix("test/") not in EXAMPLE_METRICS:
            raise TableUsageError(
                f"--example-tests bootstrap resamples the test predictions for the first of --metrics, "
                f"{name}, which they cannot give; put one of "
                f"{', '.join('test/' + m for m in EXAMPLE_METRICS)} first."
            )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    _check(args, metrics)
    from encoderlab.tracking import default_tracking_uri, tracking_client

    uri = args.tracking_uri or default_tracking_uri()
    latest = not (args.experiment or args.parent)
    if latest and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise EncoderlabError(  # before MLflow creates an empty store there
            f"No MLflow store at {uri.removeprefix('sqlite:///')}: run `encoderlab table` where you ran the "
            "experiments, or pass --tracking-uri, --experiment NAME or --parent RUN_ID."
        )
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = tracking_client(uri)
    parent = _latest_sweep_id(client, uri) if latest else args.parent
    frame = load_runs(client, args.experiment, parent, args.filter)
    if frame.empty:
        raise EncoderlabError("No finished runs match (only FINISHED runs are tabulated).")
    group_by = [k.strip() for k in args.group_by.split(",")] if args.group_by else varying_keys(frame)
    unknown = [k for k in group_by if f"params.{k}" not in frame]
    if unknown:
        raise EncoderlabError(f"--group-by: no config key {', '.join(unknown)} in these runs' params.")
    stat = {"ci": args.ci, "level": args.level, "n_resamples": args.n_resamples, "seed": args.seed}
    groups = group_runs(frame, metrics, group_by, **stat)
    extra, notes = None, [ci_note(**stat)]
    if args.baseline:
        matches = [g for g in groups if g.group == args.baseline] or [
            g for g in groups if args.baseline in g.group
        ]
        if len(matches) != 1:
            raise EncoderlabError(
                f"--baseline {args.baseline!r} matches {len(matches)} groups; it must match one of: "
                + "; ".join(g.group for g in groups)
            )
        extra, more = comparisons(
            groups, matches[0], metrics[0], args.test or "paired-t", args.example_tests, client, **stat
        )
        notes += more
    text = render(groups, metrics, args.format, extra, args.ci, args.level, notes)
    print(text, end="")
    print(
        f"{len(frame)} runs in {len(groups)} groups; grouped by: {', '.join(group_by) or '(nothing differs)'}",
        file=sys.stderr,
    )
    if args.format == "csv":  # the CSV stays a plain table: what its columns mean goes to stderr
        print("\n".join(f"- {n}" for n in notes), file=sys.stderr)
    if args.output:
        args.output.write_text(text)
    if args.plot:
        plot_groups(groups, metrics[0], args.plot, f"{args.level * 100:g}% {INTERVALS[args.ci]} CI")
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _latest_sweep_id(client, uri: str) -> str:
    """The most recent sweep's parent run id, said on stderr; a clear error when the store has none."""
    run = latest_sweep(client)
    if run is None:
        raise EncoderlabError(
            f"No sweep or multirun in {uri}. Say which runs: --experiment NAME (repeatable) or --parent RUN_ID."
        )
    from datetime import datetime

    started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
    kind = run.data.tags.get("encoderlab.sweep")
    print(
        f"table: the most recent sweep, {run.info.run_name} ({kind}, parent run {run.info.run_id}, "
        f"started {started}); pick another with --parent or --experiment",
        file=sys.stderr,
    )
    return run.info.run_id
