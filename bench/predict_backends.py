"""Benchmark: texts/s and accuracy of the four inference backends on the same IMDb test reviews.

    ENCODERLAB_DATA_DIR=../shared/data python bench/predict_backends.py --model outputs/runs/.../model \
        --scratch outputs/runs/.../model --n 5000 --max-length 128 --batch-size 32 --threads 2

Backends: PyTorch fp32, PyTorch bf16 autocast, ONNX Runtime fp32 (model.onnx) and int8
(model_quantized.onnx), all through `encoderlab.inference.predict_proba` (tokenization, length-sorted
batches, softmax: the path `encoderlab predict` takes), same texts, batch size, max_length and threads.
The texts are a fixed seeded sample of the IMDb test split, read through encoderlab's dataset config.
The sample is cut into `--rounds` chunks and every round runs the four backends on its chunk in a
rotated order, so load from other processes on a shared machine falls on all of them alike.
Missing ONNX graphs are exported first (`export_onnx(..., quantize="int8")`, parity report included).
Writes bench/results/predict_backends.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_throughput import load_texts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("torch fp32", "torch bf16 autocast", "onnxruntime fp32", "onnxruntime int8")


def parity(model: str) -> dict:
    """The model directory's ONNX parity report, exporting (fp32 + int8) when it has none."""
    from encoderlab.models.trained import resolve_model_dir
    from encoderlab.onnx_export import PARITY_FILE, QUANTIZED_FILE, export_onnx

    directory, _ = resolve_model_dir(model)
    if not (directory / QUANTIZED_FILE).is_file():
        export_onnx(directory, directory, quantize="int8")
    report = json.loads((directory / PARITY_FILE).read_text())
    return {
        "family": report["family"],
        "texts": report["texts"],
        "tolerance": report["tolerance"],
        "export_seconds": report["seconds"],
        **{
            name: {k: v for k, v in entry.items() if k in ("max_abs_logit_diff", "label_agreement")}
            for name, entry in report["files"].items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the MiniLM fine-tuned on IMDb (run id or directory)")
    p.add_argument("--scratch", default=None, help="a from-scratch model: its ONNX parity is recorded too")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from encoderlab.inference import cpu_supports_bf16, predict_proba
    from encoderlab.models.trained import load_model
    from encoderlab.onnx_export import OnnxClassifier, onnx_file

    parities = {"minilm": parity(args.model)}
    if args.scratch:
        parities["scratch"] = parity(args.scratch)
    texts, labels = load_texts("imdb", "test", 10**9)
    pick = np.sort(np.random.default_rng(args.seed).choice(len(texts), size=args.n, replace=False))
    texts, labels = [texts[i] for i in pick], [labels[i] for i in pick]

    loaded = load_model(args.model)
    nets = {
        "torch fp32": (loaded.net, "32"),
        "torch bf16 autocast": (loaded.net, "bf16"),
        "onnxruntime fp32": (OnnxClassifier(onnx_file(loaded.directory), args.threads), "32"),
        "onnxruntime int8": (OnnxClassifier(onnx_file(loaded.directory, True), args.threads), "32"),
    }

    def run(name: str, chunk: list[str]):
        net, precision = nets[name]
        return predict_proba(
            net,
            loaded.tokenizer,
            chunk,
            batch_size=args.batch_size,
            max_length=args.max_length,
            precision=precision,
        )

    for name in BACKENDS:  # warm-up: first calls allocate and pick kernels
        run(name, texts[: args.batch_size])
    seconds = dict.fromkeys(BACKENDS, 0.0)
    probs: dict[str, list[np.ndarray]] = {name: [] for name in BACKENDS}
    chunks = np.array_split(np.arange(args.n), args.rounds)
    for r, idx in enumerate(chunks):
        chunk = [texts[i] for i in idx]
        order = BACKENDS[r % 4 :] + BACKENDS[: r % 4]  # rotated: no backend always runs first
        for name in order:
            out = run(name, chunk)
            seconds[name] += out.seconds
            probs[name].append(out.probs)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {seconds[k]:.1f}s" for k in BACKENDS))

    names = loaded.label_names
    truth = np.array([names.index(lab) for lab in labels])
    reference = np.concatenate(probs["torch fp32"])
    backends = {}
    for name in BACKENDS:
        pr = np.concatenate(probs[name])
        backends[name] = {
            "texts_per_second": round(args.n / seconds[name], 1),
            "seconds": round(seconds[name], 1),
            "accuracy": round(float((pr.argmax(1) == truth).mean()), 4),
            "labels_agree_with_torch_fp32": round(float((pr.argmax(1) == reference.argmax(1)).mean()), 4),
            "max_abs_prob_diff_vs_torch_fp32": float(np.abs(pr - reference).max()),
        }
    fp32_rate = backends["torch fp32"]["texts_per_second"]
    for entry in backends.values():
        entry["speedup_vs_torch_fp32"] = round(entry["texts_per_second"] / fp32_rate, 2)
    result = {
        "model": str(loaded.directory),
        "dataset": "imdb test split (ENCODERLAB_DATA_DIR mirror)",
        "n": args.n,
        "sample_seed": args.seed,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu": platform.processor() or platform.machine(),
        "cpu_supports_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "timing": "predict_proba wall time (tokenization + padding + forward + softmax), warm, summed over "
        "rounds; the backends run interleaved, rotated each round",
        "backends": backends,
        "parity": parities,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict_backends.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "predict_backends.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    rows = [
        f"| {name} | {b['texts_per_second']} | {b['speedup_vs_torch_fp32']}x | {b['accuracy']:.4f} | "
        f"{b['labels_agree_with_torch_fp32']:.4f} | {b['max_abs_prob_diff_vs_torch_fp32']:.2g} |"
        for name, b in r["backends"].items()
    ]
    par = [
        f"| {m} ({p['family']}) | {p['model.onnx']['max_abs_logit_diff']:.2g} | "
        f"{p['model_quantized.onnx']['max_abs_logit_diff']:.2g} | {p['model_quantized.onnx']['label_agreement']:.2f} |"
        for m, p in r["parity"].items()
    ]
    return "\n".join(
        [
            "# Inference backends on IMDb test reviews",
            "",
            f"{r['n']} IMDb test reviews (seeded sample, seed {r['sample_seed']}), MiniLM fine-tuned on IMDb, "
            f"batch size {r['batch_size']}, max_length {r['max_length']}, {r['threads']} threads, CPU "
            f"{'with' if r['cpu_supports_bf16'] else 'without'} native bf16 (AVX512-BF16/AMX), torch {r['torch']}, "
            f"onnxruntime {r['onnxruntime']}. Timing: {r['timing']} ({r['rounds']} rounds; "
            "interleaving spreads any other load on the machine over all backends alike).",
            "",
            "| backend | texts/s | vs torch fp32 | accuracy | labels = torch fp32 | max abs prob diff |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "ONNX parity at export (max |logit difference| vs PyTorch fp32 on the built-in held-out texts):",
            "",
            "| model | fp32 | int8 | int8 label agreement |",
            "|---|---|---|---|",
            *par,
            "",
        ]
    )


if __name__ == "__main__":
    main()
