"""Benchmark: how much a pruner would save on a finished study without pruning, from its learning curves.

Every complete trial of a `pruner=none` study has its validation value at every epoch in the Optuna
storage. This replays those curves, trial by trial, through a fresh study with each candidate pruner and
counts the epochs it lets run and the best value it keeps, over many trial orders (TPE's order is one
draw), to choose a pruner and its arguments before a live study (`bench/sweep_pruning.py`).

    python bench/pruner_replay.py --storage sqlite:///outputs/optuna.db --study trec_scratch_none
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import optuna

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (pruner, arguments as `study.pruner_args` would give them)
CANDIDATES = {
    "hyperband (optuna defaults)": ("hyperband", {}),
    "hyperband max_resource=15": ("hyperband", {"max_resource": 15}),
    "hyperband max_resource=15 reduction_factor=4": (
        "hyperband",
        {"max_resource": 15, "reduction_factor": 4},
    ),
    "hyperband min_resource=2 max_resource=15": ("hyperband", {"min_resource": 2, "max_resource": 15}),
    "hyperband min_resource=2 max_resource=15 reduction_factor=4": (
        "hyperband",
        {"min_resource": 2, "max_resource": 15, "reduction_factor": 4},
    ),
    "hyperband min_resource=3 max_resource=15 reduction_factor=3": (
        "hyperband",
        {"min_resource": 3, "max_resource": 15, "reduction_factor": 3},
    ),
    "successive_halving (optuna defaults)": ("successive_halving", {}),
    "median (encoderlab defaults)": ("median", {}),
}


def replay(curves: list[list[float]], order: list[int], pruner, name: str) -> tuple[int, float]:
    """Epochs run and best value kept when the trials come in this order (maximize)."""
    # hyperband puts a trial in a bracket by hashing the study name: fixed names, repeatable numbers
    study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner)
    epochs, best = 0, float("-inf")
    for i in order:
        trial, value = study.ask(), float("-inf")
        for step, v in enumerate(curves[i]):
            trial.report(v, step)
            epochs += 1
            value = max(value, v)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, value)
            best = max(best, value)
    return epochs, best


def main() -> None:
    from encoderlab.sweep.study import make_pruner

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True, help="a study run with pruner=none (direction maximize)")
    parser.add_argument(
        "--orders", type=int, default=30, help="trial orders to replay (the first is the study's)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    source = optuna.load_study(study_name=args.study, storage=args.storage)
    done = [t for t in source.trials if t.state == optuna.trial.TrialState.COMPLETE]
    curves = [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in done]
    full_epochs = sum(map(len, curves))
    full_best = max(max(c) for c in curves)
    orders = [list(range(len(curves)))]
    for seed in range(1, args.orders):
        orders.append(random.Random(seed).sample(range(len(curves)), len(curves)))

    rows = {}
    for name, (pruner, pruner_args) in CANDIDATES.items():
        runs = [
            replay(curves, order, make_pruner(pruner, pruner_args), f"replay-{i}")
            for i, order in enumerate(orders)
        ]
        ratios = [e / full_epochs for e, _ in runs]
        gaps = [100 * (full_best - b) for _, b in runs]
        rows[name] = {
            "pruner": pruner,
            "pruner_args": pruner_args,
            "epochs_ratio_mean": round(statistics.mean(ratios), 3),
            "best_value_gap_points_mean": round(statistics.mean(gaps), 2),
            "best_value_gap_points_worst": round(max(gaps), 2),
            "in_study_order": {
                "epochs_ratio": round(ratios[0], 3),
                "best_value_gap_points": round(gaps[0], 2),
            },
        }
        print(
            f"{name:48s} epochs {statistics.mean(ratios):.2f} of no pruning, best value "
            f"{statistics.mean(gaps):.2f} points lower on average (worst {max(gaps):.2f})"
        )
    result = {
        "benchmark": f"pruner_replay_{args.study}",
        "source_study": {
            "name": args.study,
            "trials": len(curves),
            "epochs": full_epochs,
            "best_value": full_best,
        },
        "orders": len(orders),
        "candidates": rows,
    }
    out = args.out or RESULTS / f"pruner_replay_{args.study}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
