"""Benchmark: `encoderlab predict` vs a plain `transformers.pipeline("text-classification")`, same texts,
same model, same machine, one invocation.

    ENCODERLAB_DATA_DIR=../shared/data python bench/predict_throughput.py --model outputs/runs/.../model \
        --n 25000 --max-length 256

The texts are the IMDb test split read through encoderlab's own dataset path (conf/dataset/imdb.yaml).
encoderlab predict runs as a user runs it (a subprocess reading a parquet file), so its time includes
start-up and model loading; the pipeline is timed on the call alone. Writes
bench/results/predict_<dataset>_<n>.json with texts/s, accuracy and `speedup_vs_pipeline`.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def load_texts(dataset: str, split: str, n: int) -> tuple[list[str], list[str]]:
    """Texts and label names of a split, through encoderlab's dataset config and loading code."""
    from hydra import compose, initialize_config_dir

    from encoderlab.config import conf_dir, register_configs
    from encoderlab.data.datamodule import TextClassificationDataModule

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}", "model=minilm", "model.name_or_path=unused"])
    prepared = TextClassificationDataModule(cfg.dataset).prepare()
    data = prepared.splits[split]
    data = data.select(range(min(n, len(data))))
    return list(data["text"]), [prepared.label_names[i] for i in data["labels"]]


def run_predict(
    args, model: str, texts: list[str], labels: list[str], precision: str, backend: str = "torch"
) -> tuple[dict, pd.DataFrame]:
    """`encoderlab predict` as a user runs it, timed from command to exit."""
    with tempfile.TemporaryDirectory() as work:
        src, out = Path(work) / "texts.parquet", Path(work) / "predictions.csv"
        pd.DataFrame({"text": texts}).to_parquet(src)
        cmd = [
            "encoderlab",
            "predict",
            model,
            "--file",
            str(src),
            "--output",
            str(out),
            "--no-progress",
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--precision",
            precision,
            "--backend",
            backend,
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        frame = pd.read_csv(out)
    inner = float(re.search(r"\(([\d.]+) texts/s\)", proc.stderr).group(1))
    return {
        "command": " ".join(
            cmd[:2] + ["<model>", "--file", "<texts.parquet>", "--output", "<csv>"] + cmd[8:]
        ),
        "precision": precision,
        "backend": backend,
        "wall_seconds": round(wall, 1),
        "texts_per_second": round(len(texts) / wall, 2),  # including start-up and model loading
        "texts_per_second_inference": inner,
        "accuracy": round(float(np.mean(frame["label"].to_numpy() == np.array(labels))), 4),
    }, frame


def compare(
    model: str,
    texts: list[str],
    labels: list[str],
    max_length: int = 256,
    precisions: list[str] = ("32",),
    batch_size: int = 64,
    pipeline_batch_size: int = 1,
    pipeline_dtype: str = "32",
    onnx_model: str | None = None,
) -> dict:
    """encoderlab predict (one run per precision, plus ONNX Runtime on `onnx_model`'s model.onnx when
    given) and the pipeline (`pipeline_dtype` "bf16" loads the weights in bfloat16) on the same texts."""
    import torch
    from transformers import pipeline

    args = argparse.Namespace(batch_size=batch_size, max_length=max_length)
    model = str(Path(model).resolve())
    result: dict = {
        "texts": len(texts),
        "model": model,
        "max_length": max_length,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "runs": {},
    }
    ours: dict[str, pd.DataFrame] = {}
    jobs = [(f"encoderlab_predict_{p}", model, p, "torch") for p in precisions]
    if onnx_model is not None:  # the fp32 graph: --precision bf16 is a torch-only setting
        jobs.append(("encoderlab_predict_onnxruntime", str(Path(onnx_model).resolve()), "32", "onnxruntime"))
    for label, source, precision, backend in jobs:
        result["runs"][label], ours[label] = run_predict(args, source, texts, labels, precision, backend)
        print(json.dumps(result["runs"][label], indent=2), flush=True)

    dtype = torch.bfloat16 if pipeline_dtype == "bf16" else torch.float32
    clf = pipeline("text-classification", model=model, device="cpu", dtype=dtype)
    start = time.perf_counter()
    outs = clf(texts, truncation=True, max_length=max_length, batch_size=pipeline_batch_size)
    seconds = time.perf_counter() - start
    theirs = np.array([o["label"] for o in outs])
    pipe = {
        "call": f'pipeline("text-classification", model, device="cpu", dtype={dtype})(texts, '
        f"truncation=True, max_length={max_length}, batch_size={pipeline_batch_size})",
        "precision": pipeline_dtype,
        "seconds": round(seconds, 1),
        "texts_per_second": round(len(texts) / seconds, 2),
        "accuracy": round(float(np.mean(theirs == np.array(labels))), 4),
    }
    result["runs"]["transformers_pipeline"] = pipe
    for label, frame in ours.items():
        entry = result["runs"][label]
        entry["prediction_agreement_with_pipeline"] = round(
            float(np.mean(frame["label"].to_numpy() == theirs)), 4
        )
        entry["speedup_vs_pipeline"] = round(entry["texts_per_second"] / pipe["texts_per_second"], 2)
        entry["speedup_vs_pipeline_inference_only"] = round(
            entry["texts_per_second_inference"] / pipe["texts_per_second"], 2
        )
    result["speedup_vs_pipeline"] = result["runs"][jobs[0][0]]["speedup_vs_pipeline"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="an exported model directory (HF family)")
    parser.add_argument("--dataset", default="imdb")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=25000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="encoderlab predict --batch-size")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["32"],
        choices=("32", "bf16", "auto"),
        help="encoderlab predict --precision (several: one run each)",
    )
    parser.add_argument("--pipeline-batch-size", type=int, default=1, help="1 is the pipeline's default")
    parser.add_argument(
        "--pipeline-dtype", choices=("32", "bf16"), default="32", help="the pipeline's weights"
    )
    parser.add_argument(
        "--onnx-model",
        help="an `encoderlab export --format onnx` directory: adds a --backend onnxruntime run",
    )
    args = parser.parse_args()

    texts, labels = load_texts(args.dataset, args.split, args.n)
    result = {
        "benchmark": f"predict_{args.dataset}_{len(texts)}",
        **compare(
            args.model,
            texts,
            labels,
            args.max_length,
            args.precision,
            args.batch_size,
            args.pipeline_batch_size,
            args.pipeline_dtype,
            args.onnx_model,
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{result['benchmark']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
