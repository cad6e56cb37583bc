"""`encoderlab sweep`: an Optuna search over any config keys, one MLflow parent run per study.

    encoderlab sweep sweep=trec_scratch n_trials=20
    encoderlab sweep sweep=sst2_minilm --workers 2 model.name_or_path=/models/minilm
    encoderlab sweep sweep=trec_scratch --retest 3,3          # retrain the best 3 configs with 3 fresh seeds

The search space lives in sweeps/<name>.yaml (./sweeps first, then encoderlab's own): the overrides every
trial starts from, the study settings and the parameters. Each trial composes `encoderlab train`'s config
with the sampled values, trains with a pruning hook at every validation and returns its best validation
value (the checkpoint that is kept); with study.seeds_per_trial=N it trains N seeds and returns the mean,
so a trial's rank depends less on one lucky initialisation. Storage is SQLite under outputs/ unless
`storage=` names any SQLAlchemy URL (PostgreSQL for many workers or machines); rerunning the command
continues the study until n_trials trials are complete or pruned, and trials whose process died are
marked FAIL and redone.
"""

from __future__ import annotations

import argparse

from encoderlab.commands import command_parser
from encoderlab.errors import ConfigError
from encoderlab.sweep.space import STUDY_KEYS


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    p = command_parser("sweep", __doc__)
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study storage")
    p.add_argument("--retest", help="K,N: retrain the best K configs with N fresh seeds each, on test")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "overrides", nargs="*", help="sweep=<name>, n_trials=, storage=, study_name=, and train overrides"
    )
    args = p.parse_args(argv)
    study_args: dict[str, str] = {}
    train_overrides: list[str] = []
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key in ("sweep", *STUDY_KEYS) and _:  # study settings; everything else goes to the trials
            study_args[key] = value
        else:
            train_overrides.append(o)
    if "sweep" not in study_args:
        raise ConfigError("Config error: 'sweep' is required: sweep=<name> names sweeps/<name>.yaml.")
    return args, study_args, train_overrides


def main(argv: list[str]) -> int:
    from encoderlab.sweep.runner import run_sweep

    args, study_args, train_overrides = parse(argv)
    space_name = study_args.pop("sweep")
    return run_sweep(space_name, study_args, train_overrides, args.workers, args.worker, args.retest, argv)
