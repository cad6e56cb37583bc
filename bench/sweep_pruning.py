"""Benchmark: the same Optuna study with and without pruning, plus a re-test of the winner and the preset.

    ENCODERLAB_DATA_DIR=../shared/data python bench/sweep_pruning.py [--sweep trec_scratch] [--n-trials 20]

In one work directory (default: a fresh temporary one) it runs, as a user would:
  1. encoderlab sweep sweep=<name> n_trials=N pruner=hyperband study_name=<name>_hyperband
  2. encoderlab sweep sweep=<name> n_trials=N pruner=none      study_name=<name>_none
  3. encoderlab train -m experiment=<preset> seed=10000,10001,10002   (the preset on the re-test's seeds)
Both sweeps run with `--retest 1,3`; the accuracy target is judged on the one whose pruner
`sweeps/<name>.yaml` ships (what `encoderlab sweep sweep=<name>` runs). It writes
bench/results/sweep_<name>.json: per study the trials complete/pruned, the epochs spent (one validation
per epoch = one Optuna intermediate value), the best validation value and wall time; the epoch ratio and
best-value gap between the two; each winner's test accuracy over 3 fresh seeds against the preset's over
the same seeds.

--reuse-none URL[#STUDY] / --reuse-hyperband URL[#STUDY] copy a finished study from another storage
(STUDY: its name there, default <name>_none / <name>_hyperband) instead of running it again; its wall time
is taken from its trials' timestamps. The
sweep command then still runs on the copy: it finds the study finished and only re-tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"
SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
RETEST_SEEDS = (10000, 10001, 10002)  # encoderlab.sweep.retest.FRESH_SEED_BASE + j


def run(cmd: list[str], cwd: Path) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def study_summary(url: str, name: str, wall: float) -> dict:
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    return {
        "study": name,
        "trials": {k: v for k, v in by_state.items() if v},
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best_value": study.best_value,
        "best_params": study.best_params,
        "wall_seconds": round(wall, 1),
    }


def copy_study(source: str, to_url: str, name: str) -> float:
    """Copy a finished study (URL[#STUDY]) into this work dir's storage as `name`; its wall time from the
    trials' timestamps."""
    import optuna

    from_url, _, from_name = source.partition("#")
    from_name = from_name or name
    source = optuna.load_study(study_name=from_name, storage=from_url)
    if name not in optuna.get_all_study_names(to_url):
        optuna.copy_study(
            from_study_name=from_name, from_storage=from_url, to_storage=to_url, to_study_name=name
        )
    trials = [t for t in source.trials if t.datetime_start and t.datetime_complete]
    start = min(t.datetime_start for t in trials)
    return (max(t.datetime_complete for t in trials) - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep", default="trec_scratch")
    parser.add_argument("--preset", default=None, help="experiment preset to compare (default: --sweep)")
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--work", type=Path, help="work directory (default: a fresh temporary one)")
    parser.add_argument("--reuse-none", default=None, help="URL[#STUDY] of a finished no-pruning study")
    parser.add_argument("--reuse-hyperband", default=None, help="URL[#STUDY] of a finished hyperband study")
    parser.add_argument("extra", nargs="*", help="overrides for every trial and run")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix=f"sweep_{args.sweep}_"))
    work.mkdir(parents=True, exist_ok=True)
    preset = args.preset or args.sweep
    url = f"sqlite:///{work / 'outputs' / 'optuna.db'}"
    sweep = ["encoderlab", "sweep", f"sweep={args.sweep}", f"n_trials={args.n_trials}", *args.extra]

    (work / "outputs").mkdir(exist_ok=True)
    shipped = yaml.safe_load((SWEEPS / f"{args.sweep}.yaml").read_text())["study"]["pruner"]
    walls, commands = {}, {}
    for pruner, reuse in (("hyperband", args.reuse_hyperband), ("none", args.reuse_none)):
        name = f"{args.sweep}_{pruner}"
        cmd = [*sweep, f"pruner={pruner}", f"study_name={name}", "--retest", "1,3"]
        commands[pruner] = " ".join(cmd) + (f"  (reused: copied from {reuse})" if reuse else "")
        if reuse:
            walls[pruner] = copy_study(reuse, url, name)
        wall = run(cmd, work)  # on a copied, finished study this only re-tests
        walls.setdefault(pruner, wall)
    seeds = ",".join(map(str, RETEST_SEEDS))
    preset_wall = run(
        [
            "encoderlab",
            "train",
            "-m",
            f"experiment={preset}",
            f"seed={seeds}",
            "analysis=none",
            "probes=none",
            "trainer.enable_progress_bar=false",
            *args.extra,
        ],
        work,
    )

    hb = study_summary(url, f"{args.sweep}_hyperband", walls["hyperband"])
    none = study_summary(url, f"{args.sweep}_none", walls["none"])
    preset_scores = []
    for f in sorted(work.glob("outputs/multirun/*/*/*/metrics.json")):
        preset_scores.append(json.loads(f.read_text())["test"]["test/accuracy"])
    preset_mean = sum(preset_scores) / len(preset_scores)
    retests = {}
    for pruner in ("hyperband", "none"):
        path = work / "outputs" / "sweeps" / f"{args.sweep}_{pruner}" / "retest" / "retest.json"
        retest = json.loads(path.read_text())
        winner = retest["results"][0]
        retests[pruner] = {
            "metric": retest["metric"],
            "winner_trial": winner["trial"],
            "winner_params": winner["params"],
            "winner_seeds": winner["seeds"],
            "winner_mean": winner["mean"],
            "winner_std": winner["std"],
            "gain_over_preset_points": 100 * (winner["mean"] - preset_mean),
            "met": winner["mean"] >= 0.90 and winner["mean"] - preset_mean >= 0.02,
        }
    result = {
        "benchmark": f"sweep_{args.sweep}",
        "commands": [
            commands["hyperband"],
            commands["none"],
            f"encoderlab train -m experiment={preset} seed={seeds} analysis=none probes=none",
        ],
        "hyperband": hb,
        "no_pruning": none,
        "epochs_ratio_hyperband_vs_none": hb["epochs"] / max(none["epochs"], 1),
        "best_value_gap_points": 100 * (none["best_value"] - hb["best_value"]),
        "pruning_target": "epochs ratio <= 0.5 with best value within 1 point",
        "pruning_met": hb["epochs"] <= 0.5 * none["epochs"] and none["best_value"] - hb["best_value"] <= 0.01,
        "preset": {
            "experiment": preset,
            "seeds": dict(zip(map(str, RETEST_SEEDS), preset_scores, strict=False)),
            "mean": preset_mean,
            "wall_seconds": round(preset_wall, 1),
        },
        "retests": retests,
        "accuracy_target": "re-tested winner mean >= 0.90 and >= 2 points above the preset",
        "accuracy_target_study": f"{args.sweep}_{shipped} (the pruner sweeps/{args.sweep}.yaml ships)",
        "accuracy_met": retests[shipped]["met"],
        "machine": f"{os.cpu_count()} CPU cores, torch {version('torch')}",
        "work_dir": str(work),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"sweep_{args.sweep}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
