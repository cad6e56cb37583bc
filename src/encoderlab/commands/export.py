"""`encoderlab export SOURCE`: a trained model as a self-contained, Hub-ready directory: the weights
(save_pretrained), the tokenizer, encoderlab.json, a model card (README.md) generated from the run (data,
config, metrics with seeds, probes, intended use, limitations, MLflow run id) and, with --format onnx, an
ONNX graph checked against PyTorch. The run itself is only read, never changed.

    encoderlab export <run-id>                                  (-> outputs/exports/<run name>/)
    encoderlab export outputs/runs/2026-01-31/12-00-00-quickstart-1a2b3c --output my-model
    encoderlab export <run-id> --format onnx --quantize int8
    encoderlab export <run-id> --push-to-hub me/sst2-minilm --private     (HF_ENDPOINT, HF_TOKEN)

SOURCE is an MLflow run id, a run directory or a model directory. The default output is
outputs/exports/<name>, <name> being the MLflow run name, else the run id, else the directory's name.
An existing non-empty output directory is replaced only with --overwrite (exit code 2 otherwise).
"""

from __future__ import annotations

from pathlib import Path

from encoderlab.commands import command_parser


def main(argv: list[str]) -> int:
    p = command_parser("export", __doc__)
    p.add_argument("source", help="MLflow run id, run directory (outputs/runs/...) or model directory")
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        help="export directory (default: outputs/exports/<run name | run id | dir name>)",
    )
    p.add_argument(
        "--format",
        choices=("hf", "onnx"),
        default="hf",
        help="hf (default): save_pretrained files; onnx: also model.onnx with a parity check against PyTorch",
    )
    p.add_argument(
        "--quantize", choices=("int8",), help="with --format onnx: also model_quantized.onnx (int8)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--push-to-hub", metavar="REPO", help="then upload the directory to this Hub model repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--token", help="with --push-to-hub: Hub token (default: $HF_TOKEN or `hf auth login`'s)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow store of the run (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)",
    )
    args = p.parse_args(argv)
    if args.quantize and args.format != "onnx":
        p.error("--quantize int8 needs --format onnx (it quantizes the ONNX graph)")
    if (args.private or args.token) and not args.push_to_hub:
        p.error("--private and --token go with --push-to-hub REPO")

    from encoderlab.hub_export import export_model, push_to_hub

    done = export_model(
        args.source,
        args.output,
        fmt=args.format,
        quantize=args.quantize,
        overwrite=args.overwrite,
        tracking_uri=args.tracking_uri,
    )
    files = sorted(f.name for f in done.directory.iterdir())
    print(
        f"Exported {'run ' + done.run_id if done.run_id else args.source} to {done.directory}: {', '.join(files)}"
    )
    if done.onnx is not None:
        from encoderlab.model_card import onnx_parity_line

        print(f"ONNX parity: {onnx_parity_line(done.onnx)}")
    if args.push_to_hub:
        url = push_to_hub(done.directory, args.push_to_hub, private=args.private, token=args.token)
        print(f"Pushed to {url}")
    return 0
