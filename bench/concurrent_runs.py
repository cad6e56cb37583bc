"""N `encoderlab train` processes started together in a fresh directory (no MLflow store yet): do they all
finish, each in its own run directory, and does `encoderlab predict <run id>` serve each run's own model?

    python bench/concurrent_runs.py --n 8

Each process trains the quickstart preset for a few steps (bundled data, no download) with its own seed, so
the models differ and serving another run's model would show. Writes bench/results/concurrent_runs_<n>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
RECIPE = [
    "experiment=quickstart",
    "trainer.max_steps=5",
    "analysis=none",
    "probes=none",
    "num_threads=1",
    "trainer.enable_progress_bar=false",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="processes started together")
    ap.add_argument("--workdir", type=Path, default=None, help="a fresh directory (default: a temporary one)")
    args = ap.parse_args()
    where = args.workdir or Path(tempfile.mkdtemp(prefix="encoderlab-concurrent-"))
    where.mkdir(parents=True, exist_ok=True)
    assert not (where / "outputs").exists(), f"{where} is not fresh: it has outputs/"

    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "encoderlab", "train", *RECIPE, f"seed={seed}"],
            cwd=where,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(1, args.n + 1)
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - started
    codes = [p.returncode for p in procs]
    for code, out in zip(codes, outs, strict=True):
        if code != 0:
            print(out[-3000:], file=sys.stderr)

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{where / 'outputs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps)
    run_dirs = {r.data.tags["encoderlab.run_dir"] for r in runs}

    served: dict[str, float] = {}
    vectors = []
    for run in runs:  # predict <run id> on the first test texts vs the predictions the run logged
        dst = where / "downloads" / run.info.run_id
        dst.mkdir(parents=True)
        logged = pd.read_csv(
            client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv", str(dst))
        ).head(16)
        out = where / f"{run.info.run_id}.csv"
        cmd = ["predict", run.info.run_id, *logged["text"], "--output", str(out), "--tracking-uri", uri]
        res = subprocess.run(
            [sys.executable, "-m", "encoderlab", *cmd, "--precision", "32"],
            cwd=where,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            continue
        got = pd.read_csv(out)["prob_positive"].to_numpy()
        served[run.info.run_id] = float(np.abs(got - logged["prob_positive"].to_numpy()).max())
        vectors.append(got)
    # the models differ (their own seeds), so serving another run's model would not match
    distinct = len({tuple(np.round(v, 4)) for v in vectors})

    result = {
        "processes": args.n,
        "exit_codes": codes,
        "wall_seconds": round(wall, 1),
        "runs_in_store": len(runs),
        "statuses": sorted(r.info.status for r in runs),
        "distinct_run_dirs": len(run_dirs),
        "hydra_run_dirs": len(list((where / "outputs" / "runs").glob("*/*"))),
        "predict_max_abs_diff_vs_logged": served,
        "distinct_models_served": distinct,
        "all_ok": (
            codes == [0] * args.n
            and [r.info.status for r in runs] == ["FINISHED"] * args.n
            and len(run_dirs) == args.n
            and len(served) == args.n
            and max(served.values()) < 1e-5
            and distinct == args.n
        ),
        "command": " ".join(["encoderlab", "train", *RECIPE, "seed=<1..n>"]),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"concurrent_runs_{args.n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
