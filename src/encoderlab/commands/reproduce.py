"""`encoderlab reproduce <run-id>`: rerun a logged run's exact config and print old vs new metrics.

    encoderlab reproduce 3f2c...e9                    # same config, same seed
    encoderlab reproduce 3f2c...e9 seed=7             # the same run with another seed (any override works)

The run's resolved config (config/config.yaml) and its group choices (config/hydra/hydra.yaml) become a
primary config that `encoderlab train` composes: the values of the logged run, whatever the defaults of
today's encoderlab. A different git commit than the run's is reported, since code changes can change numbers.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from encoderlab.commands import command_parser
from encoderlab.commands.train import task
from encoderlab.compose import run_hydra, write_rerun_config
from encoderlab.errors import EncoderlabError


def main(argv: list[str]) -> int:
    p = command_parser("reproduce", __doc__)
    p.add_argument("run_id", help="the MLflow run to reproduce")
    p.add_argument("overrides", nargs="*", help="extra overrides on top of the logged config")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db")
    args = p.parse_args(argv)

    from mlflow.exceptions import MlflowException

    from encoderlab.tracking import git_state, logged_run

    client, old, _ = logged_run(args.run_id, args.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            values = yaml.safe_load(
                Path(client.download_artifacts(args.run_id, "config/config.yaml", tmp)).read_text()
            )
        except (MlflowException, OSError) as ex:
            raise EncoderlabError(
                f"Run {args.run_id} has no config/config.yaml artifact: not an encoderlab train run?"
            ) from ex
        try:
            hydra_cfg = yaml.safe_load(
                Path(client.download_artifacts(args.run_id, "config/hydra/hydra.yaml", tmp)).read_text()
            )
            choices = hydra_cfg["hydra"]["runtime"]["choices"]
        except (MlflowException, OSError, KeyError, TypeError):
            choices = _choices_from_values(values)
        commit_then = old.data.tags.get("mlflow.source.git.commit")
        commit_now = git_state()["commit"]
        if commit_then and commit_now and commit_then != commit_now:
            print(
                f"warning: run {args.run_id} was made at commit {commit_then[:10]}, the code is now at "
                f"{commit_now[:10]}: numbers may differ for that reason.",
                file=sys.stderr,
            )
        conf = Path(tmp) / "conf"
        write_rerun_config(
            values, choices, conf / "reproduce.yaml", f"# reproduces MLflow run {args.run_id}\n"
        )
        code = run_hydra(
            [
                "--config-dir",
                str(conf),
                "--config-name",
                "reproduce",
                f"+logger.tags.reproduces='{args.run_id}'",
                *args.overrides,
            ],
            "train",
            task,
            "encoderlab reproduce",
        )
    if code != 0:
        return code
    new = _latest_reproduction(client, old.info.experiment_id, args.run_id)
    if new is None:
        return 0
    names = sorted(k for k in old.data.metrics if k.startswith(("test/", "best/")))
    print(f"| metric | {args.run_id[:8]} (old) | {new.info.run_id[:8]} (new) | Δ |")
    print("|---|---|---|---|")
    for name in names:
        a, b = old.data.metrics[name], new.data.metrics.get(name)
        print(f"| {name} | {a:.6f} | " + (f"{b:.6f} | {b - a:+.2e} |" if b is not None else "missing | |"))
    return 0


def _choices_from_values(values: dict) -> dict:
    """Group options guessed from the values when the run has no Hydra record (scratch vs HF model)."""
    model = values.get("model", {})
    return {"model": "scratch_small" if str(model.get("_target_", "")).endswith("ScratchEncoder") else "hf"}


def _latest_reproduction(client, experiment_id: str, run_id: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.reproduces = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None
