"""`encoderlab train`: config -> data -> model -> fit -> test -> log, top to bottom.

Called by Hydra with the composed, validated config (see encoderlab/cli.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

import encoderlab
from encoderlab.analysis.analyze import analyze
from encoderlab.analysis.figures import plot_confusion_matrix
from encoderlab.analysis.report import predictions_frame
from encoderlab.data.datamodule import TextClassificationDataModule, cache_root
from encoderlab.errors import EncoderlabError
from encoderlab.models.classifier import SequenceClassifier
from encoderlab.models.trained import write_metadata
from encoderlab.tokenization import build_tokenizer
from encoderlab.tracking import TrackedRun, flatten, resolved_config

log = logging.getLogger(__name__)


class _NoLoggerAdvert(logging.Filter):
    """Drops Lightning's tip to install its cloud logger (encoderlab's runs go to MLflow)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def training_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision for trainer.precision; 'auto' is bf16-mixed where the hardware has native
    bf16 (AVX512-BF16/AMX CPUs, Ampere+ GPUs), else 32."""
    if precision != "auto":
        return precision
    from encoderlab.inference import resolve_precision

    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if resolve_precision("auto", "cuda" if gpu else "cpu") == "bf16" else "32"


def build_trainer(
    cfg: DictConfig, run_dir: Path, logger, extra_callbacks: list | None = None
) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning Trainer from cfg.trainer and cfg.callbacks (validation interval in optimizer steps)."""
    tc, cb = cfg.trainer, cfg.callbacks
    precision = training_precision(tc.precision, tc.accelerator)
    if precision == "16-mixed" and not (
        tc.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    ):
        raise EncoderlabError("trainer.precision=16-mixed needs a CUDA GPU; on CPU use 32 or bf16-mixed.")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-step{step}",
        monitor=cb.checkpoint.monitor,
        mode=cb.checkpoint.mode,
        save_top_k=cb.checkpoint.save_top_k,
        save_weights_only=cb.checkpoint.save_weights_only,
        auto_insert_metric_name=False,
    )
    callbacks: list = [checkpoint, *(extra_callbacks or [])]
    if cb.early_stopping.enabled:
        es = cb.early_stopping
        callbacks.append(
            EarlyStopping(
                monitor=es.monitor,
                mode=es.mode,
                patience=es.patience,
                min_delta=es.min_delta,
                check_on_train_epoch_end=False,  # judge after validations only (max_steps may end mid-epoch)
            )
        )
    if cb.lr_monitor and logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))

    val_kwargs = {"check_val_every_n_epoch": tc.check_val_every_n_epoch}
    if tc.val_every_n_steps is not None:  # Lightning counts batches, not optimizer steps
        val_kwargs = {
            "val_check_interval": tc.val_every_n_steps * tc.accumulate_grad_batches,
            "check_val_every_n_epoch": None,
        }
    optional = {
        k: tc[k]
        for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
        if tc[k] is not None
    }
    trainer = L.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        precision=precision,
        max_epochs=tc.max_epochs,
        max_steps=tc.max_steps,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val,
        log_every_n_steps=tc.log_every_n_steps,
        num_sanity_val_steps=tc.num_sanity_val_steps,
        fast_dev_run=tc.fast_dev_run,
        deterministic=tc.deterministic,
        enable_progress_bar=tc.enable_progress_bar,
        default_root_dir=str(run_dir),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        **val_kwargs,
        **optional,
    )
    return trainer, checkpoint


def perf_metrics(module: SequenceClassifier, fit_seconds: float, started_at: float) -> dict[str, float]:
    """Throughput of the fit: training alone (periodic validation excluded) and validation."""
    import resource

    train_seconds = max(fit_seconds - module.val_seconds, 1e-9)
    tokens = float(module.train_tokens_seen)
    out = {
        "perf/fit_seconds": fit_seconds,  # includes periodic validation
        "perf/train_seconds": train_seconds,
        "perf/train_samples_seen": module.train_samples_seen,
        "perf/train_samples_per_second": module.train_samples_seen / train_seconds,
        "perf/train_tokens_per_second": tokens / train_seconds,  # real tokens, no pads
        "perf/padding_fraction": 1 - tokens / max(module.train_padded_tokens, 1),
        "perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if module.val_seconds > 0:
        out["perf/val_samples_per_second"] = module.val_samples_seen / module.val_seconds
    # from the run's start (encoderlab.run_started_at) to its first training batch
    if module.first_step_at is not None:
        out["perf/seconds_to_first_step"] = module.first_step_at - started_at
    return out


TEST_PREDICTIONS = Path("predictions") / "test_predictions.csv"  # in a run directory


def test_predictions(dm: TextClassificationDataModule, probs: torch.Tensor) -> pd.DataFrame:
    """One row per test example: text, true label, prediction, confidence and every class probability."""
    test = dm.prepared.splits["test"]
    pairs = test["text_pair"] if "text_pair" in test.column_names else None
    return predictions_frame(test["text"], np.asarray(test["labels"]), probs.numpy(), dm.label_names, pairs)


def _tidy_lightning_output() -> None:
    """Lightning adds its own console handler; Hydra's root handlers already print (and file) its logs.
    Its cloud-logger advert and torch's LeafSpec deprecation (from Lightning's batch flattening) would
    show at every run, and a user can act on neither."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoLoggerAdvert) for f in rank_zero.filters):
        rank_zero.addFilter(_NoLoggerAdvert())
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


def train(
    cfg: DictConfig,
    callbacks: list | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> float | None:
    """Fit, test with the best checkpoint, log everything; returns the best value of the monitored metric.
    `callbacks` are extra Lightning callbacks (a sweep's pruning hook), `parent_run_id` nests the MLflow run."""
    started_at = encoderlab.run_started_at()
    run_dir = Path(cfg.output_dir).resolve()
    _tidy_lightning_output()
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.num_threads:  # set once, before any op has spun up the thread pool
        torch.set_num_threads(cfg.trainer.num_threads)

    with TrackedRun(cfg, run_dir, parent_run_id=parent_run_id, tags=tags) as run:
        # ---- config --------------------------------------------------------------------------------
        run.log_params(flatten(resolved_config(cfg)))
        run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
        hydra_dir = run_dir / ".hydra"
        if HydraConfig.initialized() and hydra_dir.is_dir():
            run.log_artifact(hydra_dir, "config/hydra")
            run.set_tags({"encoderlab.overrides": " ".join(HydraConfig.get().overrides.task)})

        # ---- data ----------------------------------------------------------------------------------
        dm = TextClassificationDataModule(cfg.dataset, seed=cfg.seed)
        prepared = dm.prepare()
        train_split = prepared.splits["train"]
        tokenizer, tok_summary = build_tokenizer(
            cfg.tokenizer,
            cfg.model,
            train_split["text"],
            train_split._fingerprint,
            cache_root(cfg.dataset).parent,
        )
        dm.set_tokenizer(tokenizer)
        dm.setup()
        summary = dm.summary()
        run.log_text(json.dumps(summary, indent=2, default=str), "data/summary.json")
        run.log_text(json.dumps(tok_summary, indent=2), "data/tokenizer.json")
        cache = {s: t["cache_hit"] for s, t in dm.tokenization.items()}
        run.set_tags(
            {
                "encoderlab.dataset_fingerprint": summary["fingerprint"],
                "encoderlab.tokenization_cache": "hit"
                if all(cache.values())
                else ("partial" if any(cache.values()) else "miss"),
            }
        )
        run.log_metrics(
            {
                **{f"data/{s}_rows": n for s, n in summary["sizes"].items()},
                "data/tokenize_seconds": sum(t["seconds"] for t in dm.tokenization.values()),
                "data/num_labels": dm.num_labels,
            }
        )

        # ---- model ---------------------------------------------------------------------------------
        id2label = dict(enumerate(dm.label_names))
        net = instantiate(
            cfg.model, num_labels=dm.num_labels, id2label=id2label, tokenizer=tokenizer, _convert_="all"
        )
        module = SequenceClassifier(
            net, dm.label_names, cfg.optimizer, cfg.scheduler, label_smoothing=cfg.loss.label_smoothing
        )
        if cfg.trainer.compile:  # the wrapper shares net's weights: export and analysis use net itself
            module.model = torch.compile(net)
        n_params = sum(p.numel() for p in net.parameters())
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        run.log_metrics({"model/parameters": n_params, "model/trainable_parameters": n_train})

        # ---- fit -----------------------------------------------------------------------------------
        trainer, checkpoint = build_trainer(cfg, run_dir, run.lightning_logger(), callbacks)
        run.set_tags(
            {
                "encoderlab.precision": str(trainer.precision),
                "encoderlab.num_threads": str(torch.get_num_threads()),
            }
        )
        fit_start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        fit_seconds = time.perf_counter() - fit_start
        run.log_metrics(perf_metrics(module, fit_seconds, started_at))

        # ---- test with the best checkpoint ----------------------------------------------------------
        best = checkpoint.best_model_path or None
        if best is None:
            log.warning("No best checkpoint (no validation ran or fast_dev_run): testing the final weights.")
        trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=False)
        order = dm.eval_order("test")
        if module.test_probs is not None and order is not None and len(module.test_probs) == len(order):
            unsorted = torch.empty_like(module.test_probs)
            unsorted[torch.as_tensor(order)] = module.test_probs  # back to the test split's row order
            module.test_probs = unsorted
        test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if trainer.fast_dev_run:  # Lightning mutes loggers in fast_dev_run; keep the smoke test's numbers
            run.log_metrics(test_metrics)
        best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
        run.set_tags(
            {
                "encoderlab.best_checkpoint": best or "",
                "encoderlab.test_split": summary["test_source"],
            }
        )
        if best_score is not None:
            run.log_metrics({f"best/{cfg.callbacks.checkpoint.monitor}": best_score})

        # ---- artifacts -----------------------------------------------------------------------------
        (run_dir / "metrics.json").write_text(
            json.dumps({"test": test_metrics, "best": best_score}, indent=2)
        )
        run.log_artifact(run_dir / "metrics.json", "metrics")
        complete = module.test_probs is not None and len(module.test_probs) == summary["sizes"]["test"]
        if complete:
            preds = test_predictions(dm, module.test_probs)
            if cfg.logger.log_predictions:
                (run_dir / TEST_PREDICTIONS).parent.mkdir(parents=True, exist_ok=True)
                preds.to_csv(run_dir / TEST_PREDICTIONS, index=False)
                run.log_artifact(run_dir / TEST_PREDICTIONS, "predictions")
            log.info("Test predictions: %d rows, accuracy %.4f", len(preds), preds["correct"].mean())
            meta = {
                "run": run.run_id or run_dir.name,
                "experiment": cfg.experiment_name,
                "model": str(cfg.model.get("name_or_path", cfg.model.get("_target_"))),
                "dataset": cfg.dataset.name,
                "test split": summary["test_source"],
            }
            analyze(
                net,
                tokenizer,
                preds,
                dm.label_names,
                cfg.analysis,
                cfg.probes,
                run_dir / "report",
                run,
                max_length=cfg.dataset.max_length,
                split_name=summary["test_source"],
                meta=meta,
            )
        elif module.test_confusion is not None:  # limited test batches: the confusion matrix only
            png = plot_confusion_matrix(
                module.test_confusion.numpy(),
                dm.label_names,
                run_dir / "plots" / "confusion_matrix.png",
                f"Confusion matrix, {summary['test_source']} split",
            )
            run.log_artifact(png, "plots")
        if cfg.logger.log_model and hasattr(net, "save_pretrained") and not cfg.trainer.fast_dev_run:
            model_dir = run_dir / "model"
            if model_dir.exists():
                shutil.rmtree(model_dir)
            net.save_pretrained(model_dir, tokenizer)
            family = "scratch" if "n_heads" in cfg.model else "hf"
            write_metadata(
                model_dir, dm.label_names, cfg.dataset.max_length, family, dataset=cfg.dataset.name
            )
            run.log_artifact(model_dir, "model")
        if cfg.logger.log_checkpoint and best:
            run.log_artifact(Path(best), "checkpoints")

        log.info("Test: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(test_metrics.items())))
        log.info("Run directory: %s", run_dir)
    return best_score
