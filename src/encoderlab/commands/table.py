"""`encoderlab table`: paper-style results from MLflow runs, mean ± std over seeds per configuration.

    encoderlab table                      (the most recent sweep or `train -m` grid in ./outputs)
    encoderlab table --experiment sst2_grid --metrics test/accuracy,test/f1_macro
    encoderlab table --parent <sweep parent run id> --format latex --baseline model._target_=...
    encoderlab table --experiment sst2_grid --filter "params.dataset.name = 'sst2'" --plot results.png

Runs are grouped by the config keys whose values differ between them, the seed, the cross-validation
fold (dataset.cv.fold) and bookkeeping keys such as output_dir excluded; each group reports n (its runs:
seeds, folds, or folds × seeds, said in an "n counts" column when folds are in the table), mean ± std
(sample std) and a 95% bootstrap CI of the mean. A baseline group can be compared by Welch's t-test or a paired bootstrap over shared seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from encoderlab.commands import command_parser
from encoderlab.errors import EncoderlabError
from encoderlab.results_table import (
    compare,
    group_runs,
    latest_sweep,
    load_runs,
    plot_groups,
    render,
    varying_keys,
)


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
    p.add_argument("--test", choices=("welch", "paired-bootstrap"), default="paired-bootstrap")
    p.add_argument("--plot", type=Path, help="PNG of the first metric: mean and 95%% CI per group")
    p.add_argument("--output", "-o", type=Path, help="also write the table to this file")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
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
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    group_by = [k.strip() for k in args.group_by.split(",")] if args.group_by else varying_keys(frame)
    unknown = [k for k in group_by if f"params.{k}" not in frame]
    if unknown:
        raise EncoderlabError(f"--group-by: no config key {', '.join(unknown)} in these runs' params.")
    groups = group_runs(frame, metrics, group_by)
    extra = None
    if args.baseline:
        matches = [g for g in groups if g.group == args.baseline] or [
            g for g in groups if args.baseline in g.group
        ]
        if len(matches) != 1:
            raise EncoderlabError(
                f"--baseline {args.baseline!r} matches {len(matches)} groups; it must match one of: "
                + "; ".join(g.group for g in groups)
            )
        base = matches[0]
        name = f"Δ {metrics[0]} vs baseline" + (
            " (Welch)" if args.test == "welch" else " (paired bootstrap 95% CI)"
        )
        extra = {name: ["baseline" if g is base else compare(base, g, metrics[0], args.test) for g in groups]}
    text = render(groups, metrics, args.format, extra)
    print(text, end="")
    print(
        f"{len(frame)} runs in {len(groups)} groups; grouped by: {', '.join(group_by) or '(nothing differs)'}",
        file=sys.stderr,
    )
    if args.output:
        args.output.write_text(text)
    if args.plot:
        plot_groups(groups, metrics[0], args.plot)
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
