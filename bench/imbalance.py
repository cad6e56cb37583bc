"""Benchmark: class weights and the balanced sampler on a naturally imbalanced set, CPU.

TREC fine-grained (`dataset=trec_fine`: 50 question types, 4 to 962 train rows per class, 500 test rows
over 42 of them) with the from-scratch word-level encoder of the `trec_scratch` preset, the best
checkpoint chosen by validation macro-F1. Three arms, three seeds each, one MLflow store:

    plain          loss.class_weights=null  dataset.sampler=shuffle
    class weights  loss.class_weights=auto  (inverse frequency, scikit-learn's "balanced")
    balanced       dataset.sampler=balanced (rows drawn with probability 1 / their class's rows)

as three `encoderlab train -m` grids (run side by side, one thread each), then `encoderlab table
--baseline` over the experiment. Writes bench/results/imbalance.{json,md}.

    ENCODERLAB_DATA_DIR=../shared/data python bench/imbalance.py [--workdir DIR] [--table-only] [override ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENT = "imbalance_trec_fine"
COMMON = [
    "experiment=trec_scratch",
    "dataset=trec_fine",
    f"experiment_name={EXPERIMENT}",
    "callbacks.checkpoint.monitor=val/f1_macro",  # early stopping follows the checkpoint's monitor
    "trainer.max_epochs=6",
    "analysis=none",
    "num_threads=1",
    "trainer.enable_progress_bar=false",
    "seed=1,2,3",
]
GRIDS = {  # one grid per arm, side by side (one thread each): three seeds each
    "plain": ["loss.class_weights=null", "dataset.sampler=shuffle"],
    "weights": ["loss.class_weights=auto", "dataset.sampler=shuffle"],
    "balanced": ["loss.class_weights=null", "dataset.sampler=balanced"],
}
BASELINE = "sampler=shuffle, loss.class_weights=None"  # a substring of exactly one group label


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    parser.add_argument("--workdir", default=None, help="where outputs/ goes (default: a temporary folder)")
    parser.add_argument("--table-only", action="store_true", help="tabulate the runs already in --workdir")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="imbalance-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    procs = []
    for name, grid in GRIDS.items() if not args.table_only else ():
        cmd = [sys.executable, "-m", "encoderlab", "train", "-m", *COMMON, *grid, *args.overrides]
        log = (work / f"{name}.log").open("w")
        procs.append((cmd, subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)))
    for cmd, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"grid failed ({proc.returncode}): {' '.join(cmd)}; see {work}/*.log")
    wall = time.perf_counter() - start
    table_cmd = [
        sys.executable, "-m", "encoderlab", "table", "--experiment", EXPERIMENT,
        "--metrics", "test/f1_macro,test/accuracy,test/recall_macro",
        "--baseline", BASELINE, "--example-tests", "mcnemar,bootstrap",
    ]  # fmt: skip
    table = subprocess.run(table_cmd, cwd=work, check=True, capture_output=True, text=True).stdout
    result = {
        "benchmark": "imbalance",
        "dataset": "trec_fine (TREC fine-grained, 50 classes; train 4907 / val 545 carved / test 500)",
        "model": "trec_scratch preset (scratch_tiny encoder, word-level tokenizer), <= 6 epochs",
        "commands": [" ".join(["encoderlab", "train", "-m", *COMMON, *g]) for g in GRIDS.values()]
        + [" ".join(["encoderlab", *table_cmd[3:]])],
        "runs": _runs(work),
        "wall_seconds_all_grids": round(wall, 1) if not args.table_only else _previous_wall(),
        "table": table,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "imbalance.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Class imbalance on TREC fine-grained (50 classes), 3 seeds per arm", ""]
    md += ["```", *result["commands"], "```", "", table]
    (RESULTS / "imbalance.md").write_text("\n".join(md) + "\n")
    print(table)


def _previous_wall() -> float | None:
    """--table-only keeps the wall time the grids took when they ran."""
    old = RESULTS / "imbalance.json"
    return json.loads(old.read_text()).get("wall_seconds_all_grids") if old.exists() else None


def _runs(work: Path) -> list[dict]:
    """Every run's arm, seed and test metrics, from the MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    out = []
    for run in client.search_runs([exp.experiment_id]):
        p, m = run.data.params, run.data.metrics
        if "seed" not in p or "loss.class_weights" not in p:
            continue
        out.append(
            {
                "class_weights": p.get("loss.class_weights"),
                "sampler": p.get("dataset.sampler"),
                "seed": int(p["seed"]),
                "status": run.info.status,
                **{k: round(m[k], 4) for k in ("test/f1_macro", "test/accuracy") if k in m},
            }
        )
    return sorted(out, key=lambda r: (str(r["class_weights"]), str(r["sampler"]), r["seed"]))


if __name__ == "__main__":
    main()
