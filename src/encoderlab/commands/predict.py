"""`encoderlab predict`: label new texts with a trained model (by MLflow run id, run dir or model dir).

    encoderlab predict outputs/runs/.../model "The movie is good." "The movie is not good."
    encoderlab predict <run-id> --threshold 0.6 "The movie is good." "Not my kind of film."
    encoderlab predict <run-id> --file reviews.csv --column review --output predictions.jsonl
    cat texts.txt | encoderlab predict <model-dir> --mc-dropout 20 --threshold 0.6
    encoderlab predict <model-dir> --backend onnxruntime --quantized "The movie is good."

Texts are tokenized once, sorted by length and run in batches under torch.inference_mode, by PyTorch or
(--backend onnxruntime) by ONNX Runtime on the directory's exported model.onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encoderlab.errors import EncoderlabError

BACKENDS = ("torch", "onnxruntime")
FILE_KINDS = {
    ".txt": "txt",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="encoderlab predict",
        description="Predict labels for texts with a trained encoderlab model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "model", help="MLflow run id, run directory (outputs/runs/...) or exported model directory"
    )
    p.add_argument("texts", nargs="*", help="texts to classify (or use --file, or pipe them on stdin)")
    p.add_argument("--file", "-f", type=Path, help="txt (one text per line), csv/tsv, jsonl or parquet file")
    p.add_argument(
        "--column", "-c", default="text", help="text column of a csv/jsonl/parquet file (default: text)"
    )
    p.add_argument("--output", "-o", type=Path, help="write predictions to .csv or .jsonl")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--max-length", type=int, default=None, help="default: the length the model was trained with"
    )
    p.add_argument(
        "--mc-dropout",
        type=int,
        default=0,
        metavar="N",
        help="average N stochastic passes with dropout on; reports the spread (std)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="abstain (label 'abstain') when the top probability is below this; for a multi-label model: "
        "one decision threshold for every label instead of the tuned ones saved with it",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "32", "bf16"),
        default="auto",
        help="auto (default): bf16 weights where the CPU (AVX512-BF16/AMX) or GPU runs it natively, else 32",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch (default), or onnxruntime: the model directory's model.onnx "
        "(made by `encoderlab export <source> --format onnx`), on the CPU",
    )
    p.add_argument(
        "--quantized",
        action="store_true",
        help="with --backend onnxruntime: the int8 graph model_quantized.onnx (export --quantize int8)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store of the run id (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from the arguments, a file, or stdin; empty texts are an error."""
    sources = [bool(args.texts), args.file is not None]
    if sum(sources) > 1:
        raise EncoderlabError("Give texts as arguments or with --file, not both.")
    if args.file is not None:
        texts = read_file(args.file, args.column)
    elif args.texts:
        texts = list(args.texts)
    elif not sys.stdin.isatty():
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    else:
        raise EncoderlabError("No texts: pass them as arguments, with --file PATH, or on stdin.")
    if not texts:
        raise EncoderlabError("No texts to predict: the input is empty.")
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        where = ", ".join(str(i + 1) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise EncoderlabError(
            f"{len(empty)} empty text(s) (item {where}): every text must have at least one non-space character."
        )
    return texts


def read_file(path: Path, column: str) -> list[str]:
    import pandas as pd

    if not path.is_file():
        raise EncoderlabError(f"--file {path}: no such file.")
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise EncoderlabError(
            f"--file {path}: unknown file type '{path.suffix}'. Allowed: {', '.join(sorted(FILE_KINDS))}."
        )
    if kind == "txt":
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        if kind == "csv":
            frame = pd.read_csv(
                path, sep="\t" if path.suffix.lower() == ".tsv" else ",", keep_default_na=False
            )
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True)
        else:
            frame = pd.read_parquet(path)
    except Exception as ex:
        raise EncoderlabError(f"--file {path} could not be read as {kind}: {ex}") from ex
    if column not in frame.columns:
        raise EncoderlabError(
            f"--file {path} has no column '{column}'. Its columns: {', '.join(map(str, frame.columns))}. "
            "Pick one with --column."
        )
    return ["" if v is None else str(v) for v in frame[column].tolist()]


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)  # options before, between or after the texts
    if args.mc_dropout < 0:
        raise EncoderlabError(f"--mc-dropout must be >= 0, got {args.mc_dropout}.")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise EncoderlabError(f"--threshold must be a probability in [0, 1], got {args.threshold}.")
    if args.batch_size < 1:
        raise EncoderlabError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.output is not None and args.output.suffix.lower() not in (".csv", ".jsonl"):
        raise EncoderlabError(f"--output {args.output}: write .csv or .jsonl.")
    check_backend(args)
    texts = read_texts(args)

    import numpy as np
    import torch

    from encoderlab.inference import label_set_rows, predict_proba, prediction_rows, resolve_precision
    from encoderlab.models.trained import load_model

    loaded = load_model(args.model, args.tracking_uri)
    net = loaded.net
    if args.backend == "onnxruntime":
        from encoderlab.onnx_export import OnnxClassifier, onnx_file

        net = OnnxClassifier(onnx_file(loaded.directory, args.quantized, args.model))  # torch's thread count
        device, precision = "cpu", "32"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        precision = resolve_precision(args.precision, device)
        if precision == "bf16":  # cast once: ~10% faster on a CPU than autocast re-casting every batch
            net = net.to(torch.bfloat16)
    max_length = min(args.max_length or loaded.max_length, loaded.max_positions)
    out = predict_proba(
        net,
        loaded.tokenizer,
        texts,
        batch_size=args.batch_size,
        max_length=max_length,
        mc_dropout=args.mc_dropout,
        precision=precision,
        device=device,
        progress=not args.no_progress and len(texts) > args.batch_size,
        multilabel=loaded.multilabel,
    )
    names = loaded.label_names
    if loaded.multilabel:
        thresholds = [args.threshold] * len(names) if args.threshold is not None else loaded.thresholds
        predicted = label_set_rows(out, names, thresholds)
        labels = [lab for row in predicted for lab in str(row["labels"]).split(";") if lab] or ["(none)"]
    else:
        predicted = prediction_rows(out, names, args.threshold)
        labels = [row["label"] for row in predicted]
    rows = [{"text": text, **row} for text, row in zip(texts, predicted, strict=True)]

    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.output.suffix.lower() == ".csv":
            import pandas as pd

            pd.DataFrame(rows).to_csv(args.output, index=False)
        else:
            with args.output.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if (args.output is None or len(rows) <= 20) and loaded.multilabel:
        _print_label_sets(rows, names, out.std is not None)
    elif args.output is None or len(rows) <= 20:
        _print_rows(rows, names, out.std is not None)
    counts = {lab: labels.count(lab) for lab in dict.fromkeys(labels)}
    rate = len(texts) / max(out.seconds, 1e-9)
    print(
        f"{len(texts)} texts in {out.seconds:.2f} s ({rate:.1f} texts/s) on {device}, "
        f"{_engine(args, precision)}; "
        + ", ".join(f"{k}: {v}" for k, v in counts.items())
        + (f"; written to {args.output}" if args.output else "")
        + (
            f"; {args.mc_dropout} MC-dropout passes, mean std {float(np.mean(out.std)):.4f}"
            if out.std is not None
            else ""
        ),
        file=sys.stderr,
    )
    return 0


def check_backend(args: argparse.Namespace) -> None:
    """Options the ONNX Runtime backend cannot honour are errors, not silently ignored."""
    if args.quantized and args.backend != "onnxruntime":
        raise EncoderlabError("--quantized selects the int8 ONNX graph: use it with --backend onnxruntime.")
    if args.backend != "onnxruntime":
        return
    if args.mc_dropout:
        raise EncoderlabError(
            f"--mc-dropout {args.mc_dropout} needs --backend torch: the ONNX graph is exported in eval mode, "
            "without dropout, so its passes could not differ."
        )
    if args.precision == "bf16":
        raise EncoderlabError(
            "--precision bf16 is a PyTorch autocast setting: --backend onnxruntime runs the fp32 graph "
            "(or the int8 one with --quantized). Use --precision 32 or auto, or --backend torch."
        )
    if args.device is not None and args.device != "cpu":
        raise EncoderlabError(
            f"--device {args.device}: --backend onnxruntime runs on the CPU here. Use --device cpu, "
            "or --backend torch for a GPU."
        )


def _engine(args: argparse.Namespace, precision: str) -> str:
    if args.backend == "onnxruntime":
        return f"ONNX Runtime {'int8' if args.quantized else 'fp32'}"
    return "bf16" if precision == "bf16" else "fp32"


def _print_rows(rows: list[dict], names: list[str], with_std: bool) -> None:
    for row in rows:
        probs = "  ".join(
            f"{n}={row[f'prob_{n}']:.4f}" + (f"±{row[f'std_{n}']:.4f}" if with_std else "") for n in names
        )
        text = row["text"] if len(row["text"]) <= 80 else row["text"][:77] + "..."
        print(f"{row['label']}\t{probs}\t{text}")


def _print_label_sets(rows: list[dict], names: list[str], with_std: bool) -> None:
    """Multi-label: the predicted set ('(none)' when empty), the probabilities of its labels (of the top
    label when empty), the text."""
    for row in rows:
        chosen = [n for n in str(row["labels"]).split(";") if n] or [
            max(names, key=lambda n: row[f"prob_{n}"])
        ]
        probs = "  ".join(
            f"{n}={row[f'prob_{n}']:.4f}" + (f"±{row[f'std_{n}']:.4f}" if with_std else "") for n in chosen
        )
        text = row["text"] if len(row["text"]) <= 80 else row["text"][:77] + "..."
        print(f"{row['labels'] or '(none)'}\t{probs}\t{text}")
