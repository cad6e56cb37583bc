"""`encoderlab` console script: a thin dispatcher to encoderlab.commands.<name>.main (torch and lightning
are imported only by the commands that need them)."""

from __future__ import annotations

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
  export    a Hub-ready model directory: weights, tokenizer, model card (README.md), optional ONNX graph
            encoderlab export <run-id> --output my-model [--format onnx] [--push-to-hub me/my-model]
  reproduce rerun a logged run's exact config, print old vs new metrics (warns when the commit differs)
            encoderlab reproduce <run-id>
  resume    continue a killed or crashed train run from its checkpoints/last.ckpt, in the same MLflow run
            encoderlab resume <run-id>                        (or a run directory)
  sync      send what a run logged while its tracking server was away (exit code 3 of train)
            encoderlab sync outputs/runs/<date>/<time>-<name>

options:
  -h, --help     show this message
  --version      print the version

environment:
  ENCODERLAB_DATA_DIR   offline dataset mirror: <dir>/<dataset.name>/<split>.parquet
  ENCODERLAB_MODEL_DIR  offline model mirror: <dir>/<hub id>/ (a save_pretrained directory)
  MLFLOW_TRACKING_URI   tracking server or store (default sqlite:///outputs/mlflow.db)
"""


COMMANDS = ("train", "evaluate", "predict", "export", "sweep", "table", "reproduce", "resume", "sync")


def main(argv: list[str] | None = None) -> int:
    encoderlab.restart_clock()
    from encoderlab import distributed

    following = distributed.follower()
    if following == "spawned":  # a process Lightning started for rank 0's fit (its argv is rank 0's)
        from encoderlab.commands import follow

        return follow.main()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"error: unknown command '{command}'. Commands: {', '.join(COMMANDS)}. See `encoderlab --help`.",
            file=sys.stderr,
        )
        return 2
    distributed_run = command in ("train", "resume") and distributed.launcher_rank() is not None
    if distributed_run and following:  # rank > 0 of torchrun/srun: rank 0 composes and tracks the run
        from encoderlab.commands import follow

        return follow.main()
    import importlib

    from encoderlab.errors import EncoderlabError
    from encoderlab.signals import Killed

    module = importlib.import_module(f"encoderlab.commands.{command}")
    code: int | None = None
    try:
        code = module.main(rest)
        return code
    except EncoderlabError as ex:  # argparse commands; Hydra commands report their own
        print(f"error: {ex}", file=sys.stderr)
        return ex.exit_code
    except Killed as ex:  # SIGTERM / SIGINT during a run: it is marked KILLED; exit like the signal would
        print(ex.message(), file=sys.stderr)
        return ex.exit_code
    except Exception as ex:  # a full disk, memory, the tracking store: one paragraph; a bug: its traceback
        from encoderlab.failures import describe_failure

        message = describe_failure(ex)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        if distributed_run:  # rank 0 of torchrun/SLURM: followers still waiting for a hand-off end too
            distributed.end_of_run(
                f"`encoderlab {command}` on rank 0 "
                + ("ran in one process (trainer.devices x trainer.num_nodes = 1)" if code == 0 else "failed")
            )
