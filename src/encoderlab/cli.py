"""`encoderlab` console script: a thin dispatcher that never imports torch or lightning itself."""

from __future__ import annotations

import os
import sys

import encoderlab
from encoderlab import __version__

USAGE = f"""\
encoderlab {__version__}: config-driven text-classification experiments (Hydra + Lightning + MLflow)

usage: encoderlab <command> [hydra overrides and flags]

commands:
  train     fine-tune / train an encoder from the composed config (conf/train.yaml)
            encoderlab train experiment=sst2_minilm optimizer.lr=3e-5
            encoderlab train -m experiment=sst2_minilm optimizer.lr=1e-5,3e-5   (Hydra multirun)
            encoderlab train --cfg job experiment=imdb_bert                   (print the config)
            encoderlab train --help                                           (config groups)
  predict   label texts with a trained model (MLflow run id, run directory or model directory)
            encoderlab predict <run-id> "The movie is good." "The movie is not good."
            encoderlab predict <model-dir> --file reviews.csv --column text --output preds.jsonl
            encoderlab predict <model-dir> --mc-dropout 20 --threshold 0.6 < texts.txt
  evaluate  the evaluation report of a trained model on any dataset split (logged to MLflow)
            encoderlab evaluate source=<run-id> dataset=imdb              (cross-domain: SST-2 -> IMDb)
  sweep     Optuna search over sweeps/<name>.yaml, one MLflow parent run per study (resumable, parallel)
            encoderlab sweep sweep=trec_scratch n_trials=20 --workers 2 --retest 3,3
  table     mean ± std over seeds per configuration from MLflow runs (Markdown, LaTeX, CSV)
            encoderlab table --experiment sst2_grid --metrics test/accuracy,test/f1_macro
            encoderlab table --parent <sweep parent run id> --baseline model=minilm --plot results.png
  reproduce rerun a logged run's exact config, print old vs new metrics (warns when the commit differs)
            encoderlab reproduce <run-id>

options:
  -h, --help     show this message
  --version      print the version

environment:
  ENCODERLAB_DATA_DIR   offline dataset mirror: <dir>/<dataset.name>/<split>.parquet
  ENCODERLAB_MODEL_DIR  offline model mirror: <dir>/<hub id>/ (a save_pretrained directory)
  MLFLOW_TRACKING_URI   tracking server or store (default sqlite:///outputs/mlflow.db)
"""


def _task(cfg) -> float | None:
    """Hydra task: check allowed values first, then import the heavy training stack."""
    from encoderlab.validate import validate_config

    validate_config(cfg)
    from encoderlab.train import train

    return train(cfg)


def _evaluate_task(cfg) -> float:
    from encoderlab.validate import validate_evaluate_config

    validate_evaluate_config(cfg)
    from encoderlab.evaluate import evaluate

    return evaluate(cfg)


def _plain_command(module: str, argv: list[str]) -> int:
    """An argparse command (predict, table): its EncoderlabErrors become one line and exit code 1."""
    import importlib

    from encoderlab.errors import EncoderlabError

    try:
        return importlib.import_module(f"encoderlab.{module}").main(argv)
    except EncoderlabError as ex:
        from encoderlab.errors import ConfigError

        print(f"error: {ex}", file=sys.stderr)
        return 2 if isinstance(ex, ConfigError) else 1


def run_hydra(argv: list[str], config_name: str, task, prog: str) -> int:
    """Run a Hydra app over the packaged conf/ and turn config mistakes into plain errors."""
    import hydra

    from encoderlab.config import conf_dir, register_configs
    from encoderlab.errors import ConfigError, EncoderlabError, format_config_error

    register_configs()
    main_fn = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(task)
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's own printer
    saved_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        main_fn()
    except EncoderlabError as ex:
        if user_full_error:
            raise
        print(f"error: {ex}", file=sys.stderr)
        return 2 if isinstance(ex, ConfigError) else 1
    except Exception as ex:
        message = format_config_error(ex)
        if message is None or user_full_error:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        from encoderlab.multirun import close_open_parent

        close_open_parent()
        sys.argv = saved_argv
        if not user_full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0


def train_help(config_name: str = "train") -> str:
    """`encoderlab train --help` from the config files alone: Hydra's generated help deep-copies the
    whole config store once per group option (over a second); this answers in tens of milliseconds."""
    import yaml

    from encoderlab.paths import conf_dir

    conf = conf_dir()
    defaults: dict[str, str] = {}
    for entry in yaml.safe_load((conf / f"{config_name}.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            defaults.update({str(k): str(v) for k, v in entry.items()})
    lines = []
    groups = sorted(d for d in conf.iterdir() if d.is_dir() and d.name != "hydra")
    if config_name != "train":  # evaluate composes only some groups
        groups = [g for g in groups if g.name in defaults]
    for group in groups:
        options = sorted(f.stem for f in group.glob("*.yaml"))
        marked = [f"{o}*" if defaults.get(group.name) == o else o for o in options]
        lines.append(f"  {group.name + ':':<11} {', '.join(marked)}")
    launchers = sorted(f.stem for f in (conf / "hydra" / "launcher").glob("*.yaml"))
    return f"""\
encoderlab {config_name}: compose conf/{config_name}.yaml with your overrides and run it

usage: encoderlab {config_name} [group=option ...] [key=value ...] [flags]

config groups (pick one with group=option; * marks the default):
{chr(10).join(lines)}

flags:
  -m, --multirun        a run per combination of comma-separated values (one MLflow parent run)
  --cfg job             print the composed config and exit (--resolve to resolve interpolations)
  --config-dir DIR      add a directory of your own groups and options
  --help-full           Hydra's generated help, with the full composed config
  --hydra-help          Hydra's own flags (launchers, logging, run directories)

launchers (-m hydra/launcher=...): basic (default, sequential), joblib (parallel processes), {", ".join(launchers)}
config tree: {conf}
"""


def main(argv: list[str] | None = None) -> int:
    encoderlab.restart_clock()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    own_dirs = any(a.startswith(("--config-dir", "-cd")) for a in rest)  # their groups: Hydra's help
    if command in ("train", "evaluate") and rest[:1] in (["-h"], ["--help"]) and not own_dirs:
        print(train_help(command))
        return 0
    if "--help-full" in rest:  # Hydra's own generated help
        rest = ["--help" if a == "--help-full" else a for a in rest]
    if command == "train":
        return run_hydra(rest, "train", _task, "encoderlab train")
    if command == "evaluate":
        return run_hydra(rest, "evaluate", _evaluate_task, "encoderlab evaluate")
    if command == "predict":
        return _plain_command("predict", rest)
    if command == "sweep":
        return _plain_command("sweep", rest)
    if command == "reproduce":
        return _plain_command("reproduce", rest)
    if command == "table":
        return _plain_command("results_table", rest)
    print(
        f"error: unknown command '{command}'. Commands: train, evaluate, predict, sweep, table, reproduce. See `encoderlab --help`.",
        file=sys.stderr,
    )
    return 2
