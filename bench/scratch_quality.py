"""Benchmark: from-scratch encoder presets on real data, CPU. Targets (test split):

    trec_scratch   test accuracy >= 0.88 (6 coarse classes)
    sst2_scratch   val accuracy  >= 0.80 (SST-2's test stage is the validation split)
    imdb_scratch   test accuracy >= 0.85 (max_len 256)

Runs `encoderlab train experiment=<preset>` as a user would, reads the run back from MLflow and writes
bench/results/scratch_<preset>.json with accuracy, wall time and training samples/s.

    ENCODERLAB_DATA_DIR=../shared/data python bench/scratch_quality.py trec_scratch [override ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"trec_scratch": 0.88, "sst2_scratch": 0.80, "imdb_scratch": 0.85}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("preset", choices=sorted(TARGETS))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    cmd = [
        "encoderlab",
        "train",
        f"experiment={args.preset}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        client = MlflowClient(f"sqlite:///{Path(work) / 'outputs' / 'mlflow.db'}")
        exp = client.get_experiment_by_name(args.preset)
        run = client.search_runs([exp.experiment_id])[0]
        m = run.data.metrics
        val = client.get_metric_history(run.info.run_id, "val/accuracy")
    accuracy = m["test/accuracy"]
    result = {
        "benchmark": f"scratch_{args.preset}",
        "command": " ".join(cmd),
        "status": run.info.status,
        "rows": {s: int(m[f"data/{s}_rows"]) for s in ("train", "validation", "test")},
        "test_accuracy": round(accuracy, 4),
        "test_f1_macro": round(m["test/f1_macro"], 4),
        "best_val_accuracy": round(max(v.value for v in val), 4) if val else None,
        "epochs_run": len(val),
        "parameters": int(m["model/parameters"]),
        "wall_seconds": round(wall, 1),
        "train_samples_per_second": round(m["perf/train_samples_per_second"], 1),
        "target": f"accuracy >= {TARGETS[args.preset]}",
        "met": accuracy >= TARGETS[args.preset],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scratch_{args.preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
