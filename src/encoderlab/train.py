"""`encoderlab train`: config -> data -> model -> fit -> test -> export, top to bottom.

Called with the composed, validated config (encoderlab/commands/train.py, sweeps). The Trainer, its
callbacks, the optimizer and the scheduler are built with hydra.utils.instantiate from their groups.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

import encoderlab
from encoderlab import mlflow_model
from encoderlab.analysis.analyze import analyze
from encoderlab.analysis.figures import plot_confusion_matrix
from encoderlab.analysis.report import predictions_frame
from encoderlab.callbacks import DivergenceGuard, StepProfiler, Throughput
from encoderlab.data.datamodule import TextClassificationDataModule, cache_root
from encoderlab.data.inputs import split_inputs
from encoderlab.distributed import Handoff, end_of_run, hand_off
from encoderlab.errors import ConfigError, EncoderlabError
from encoderlab.models.classifier import SequenceClassifier
from encoderlab.models.files import check_model_source, check_vocabulary
from encoderlab.models.hf_encoder import HFEncoderClassifier
from encoderlab.models.lora import ADAPTER_DIR, save_adapter
from encoderlab.models.losses import build_loss
from encoderlab.models.scratch import ScratchEncoder
from encoderlab.models.trained import write_metadata
from encoderlab.tokenization import build_tokenizer
from encoderlab.tracking import TrackedRun, flatten, resolved_config, split_config
from encoderlab.validate import check_targets

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

    return (
        "bf16-mixed"
        if resolve_precision("auto", "cuda" if on_gpu(accelerator) else "cpu") == "bf16"
        else "32"
    )


def on_gpu(accelerator: str) -> bool:
    """Whether trainer.accelerator trains on a CUDA GPU."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def fast_dropout(cfg: DictConfig, net: torch.nn.Module) -> bool:
    """models/dropout.py's CPU dropout for `net` when cfg.fast_dropout says so (null: CPU training without
    torch.compile, whose own kernels draw masks cheaply); whether it is on."""
    on = cfg.fast_dropout
    if on is None:
        on = not cfg.compile and not on_gpu(str(cfg.trainer.accelerator))
    if not on:
        return False
    if hasattr(net, "use_fast_dropout"):  # HF encoders: the attention's dropout too
        swapped = net.use_fast_dropout()
    else:
        from encoderlab.models.dropout import use_fast_dropout

        swapped = use_fast_dropout(net)
    return swapped > 0


def make_callbacks(cfg: DictConfig, run_dir: Path) -> dict[str, L.Callback]:
    """cfg.callbacks instantiated, by name (a null entry is off); checkpoints go under the run directory
    unless callbacks.checkpoint.dirpath says otherwise."""
    out = {}
    for name, node in cfg.callbacks.items():
        if node is not None:
            where = (
                {"dirpath": str(run_dir / "checkpoints")}
                if name in ("checkpoint", "last") and not node.get("dirpath")
                else {}
            )
            out[name] = instantiate(node, **where, _convert_="all")
    if not isinstance(out["checkpoint"], ModelCheckpoint):
        raise ConfigError(
            f"Config error: 'callbacks.checkpoint' must be a ModelCheckpoint (or a subclass), got "
            f"{type(out['checkpoint']).__name__}: train tests and exports its best checkpoint."
        )
    return out


def make_trainer(cfg: DictConfig, run_dir: Path, logger, callbacks: list[L.Callback]) -> L.Trainer:
    """cfg.trainer instantiated, with precision=auto resolved and encoderlab's logger and callbacks."""
    tc = cfg.trainer
    accelerator = str(tc.get("accelerator", "auto"))
    precision = training_precision(str(tc.get("precision", "32")), accelerator)
    if precision == "16-mixed" and not (accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()):
        raise EncoderlabError("trainer.precision=16-mixed needs a CUDA GPU; on CPU use 32 or bf16-mixed.")
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(
            tc,
            precision=precision,
            logger=logger,
            callbacks=callbacks,
            default_root_dir=str(run_dir),
            use_distributed_sampler=False,  # encoderlab's loaders give each process its share themselves
            _convert_="all",
        )
    except InstantiationException as ex:  # Lightning refusing a combination of settings: its own words
        if isinstance(ex.__cause__, (ValueError, MisconfigurationException)):
            raise EncoderlabError(f"Lightning refused the trainer settings: {ex.__cause__}") from None
        raise


TEST_PREDICTIONS = Path("predictions") / "test_predictions.csv"  # in a run directory


def test_predictions(
    dm: TextClassificationDataModule, probs: torch.Tensor, thresholds: list[float] | None = None
) -> pd.DataFrame:
    """One row per test example: text, true label, prediction, confidence and every class probability
    (multi-label, with `thresholds`: the true and the predicted label sets)."""
    test = dm.prepared.splits["test"]
    pairs = test["text_pair"] if "text_pair" in test.column_names else None
    if thresholds is not None:
        from encoderlab.analysis.multilabel import multilabel_frame

        targets = np.asarray(test["labels"])
        return multilabel_frame(test["text"], targets, probs.numpy(), dm.label_names, thresholds, pairs)
    return predictions_frame(test["text"], np.asarray(test["labels"]), probs.numpy(), dm.label_names, pairs)


def _tidy_lightning_output() -> None:
    """Lightning adds its own console handler; Hydra's root handlers already print (and file) its logs.
    Its cloud-logger advert, torch's LeafSpec deprecation (from Lightning's batch flattening) and, in a
    distributed fit, its advice to sync values that are synced already would show at every run, and a
    user can act on none of them."""
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
    # epoch-level values are logged from torchmetrics' compute(), already gathered over the processes
    warnings.filterwarnings("ignore", r"It is recommended to use `self.log\(.*sync_dist=True")


def log_config(cfg: DictConfig, run: TrackedRun, run_dir: Path) -> None:
    """The resolved config as params (its bookkeeping keys as tags) and config/config.yaml, Hydra's record,
    the command-line overrides."""
    resolved = resolved_config(cfg)
    params, bookkeeping = split_config(flatten(resolved))
    run.log_params(params)
    run.set_tags(bookkeeping)
    run.log_text(OmegaConf.to_yaml(OmegaConf.create(resolved)), "config/config.yaml")
    hydra_dir = run_dir / ".hydra"
    if HydraConfig.initialized() and hydra_dir.is_dir():
        run.log_artifact(hydra_dir, "config/hydra")
        run.set_tags({"encoderlab.overrides": " ".join(HydraConfig.get().overrides.task)})


def setup_data(cfg: DictConfig, run: TrackedRun) -> tuple[TextClassificationDataModule, object, dict]:
    """Splits, the tokenizer (loaded or trained on the train split), tokenized splits; logs their summary."""
    dm = TextClassificationDataModule(cfg.dataset, seed=cfg.seed)
    train_split = dm.prepare().splits["train"]
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
    run.log_inputs(split_inputs(cfg.dataset, dm.prepared))
    run.log_text(json.dumps(summary, indent=2, default=str), "data/summary.json")
    run.log_text(json.dumps(tok_summary, indent=2), "data/tokenizer.json")
    cache = [t["cache_hit"] for t in dm.tokenization.values()]
    run.set_tags(
        {
            "encoderlab.dataset_fingerprint": summary["fingerprint"],
            "encoderlab.tokenization_cache": "hit" if all(cache) else ("partial" if any(cache) else "miss"),
        }
    )
    run.log_metrics(
        {
            **{f"data/{s}_rows": n for s, n in summary["sizes"].items()},
            "data/tokenize_seconds": sum(t["seconds"] for t in dm.tokenization.values()),
            "data/num_labels": dm.num_labels,
        }
    )
    return dm, tokenizer, summary


def setup_model(cfg: DictConfig, dm: TextClassificationDataModule, tokenizer, run: TrackedRun):
    """The encoder (cfg.model) inside the LightningModule with the optimizer and scheduler partials."""
    from hydra.errors import InstantiationException

    try:
        net = instantiate(
            cfg.model,
            num_labels=dm.num_labels,
            id2label=dict(enumerate(dm.label_names)),
            tokenizer=tokenizer,
            _convert_="all",
        )
    except InstantiationException as ex:  # Hydra wraps the model's own message: report that one
        if isinstance(ex.__cause__, EncoderlabError):
            raise ex.__cause__ from None
        raise
    check_vocabulary(net, tokenizer)
    train_rows = len(dm.prepared.splits["train"])
    loss = build_loss(cfg.loss, dm.task, dm.label_counts, train_rows)
    described = {**loss.describe(dm.label_names), "train_label_counts": dm.label_counts.tolist()}
    run.log_text(json.dumps({**described, "train_rows": train_rows}, indent=2), "loss/loss.json")
    if described["class_weights"] is not None:
        log.info("Class weights (%s): %s", described["weights_as"], described["class_weights"])
    module = SequenceClassifier(
        net,
        dm.label_names,
        optimizer=instantiate(cfg.optimizer, _convert_="all"),
        scheduler=instantiate(cfg.scheduler, _convert_="all"),
        label_smoothing=cfg.loss.label_smoothing,
        loss=loss,
        task=dm.task,
    )
    run.set_tags({"encoderlab.fast_dropout": str(fast_dropout(cfg, net)).lower()})
    if cfg.compile:  # the wrapper shares net's weights: export and analysis use net itself
        module.model = torch.compile(net)
    n_params = sum(p.numel() for p in net.parameters())
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    run.log_metrics({"model/parameters": n_params, "model/trainable_parameters": n_train})
    log.info(
        "Trainable parameters: %s of %s (%.2f%%)", f"{n_train:,}", f"{n_params:,}", 100 * n_train / n_params
    )
    return net, module


def fit(
    cfg: DictConfig,
    module: SequenceClassifier,
    dm: TextClassificationDataModule,
    run: TrackedRun,
    run_dir: Path,
    extra_callbacks: list | None,
    started_at: float,
    ckpt_path: Path | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer from cfg.trainer and cfg.callbacks (+ throughput counters, the NaN/inf loss guard, + a
    sweep's hooks), fitted; from `ckpt_path` (a last.ckpt) when resuming."""
    callbacks = make_callbacks(cfg, run_dir)
    throughput = Throughput(started_at)
    own = [throughput, DivergenceGuard()]  # DivergenceGuard: a NaN/inf loss stops the fit
    trainer = make_trainer(
        cfg, run_dir, run.lightning_logger(), [*callbacks.values(), *own, *(extra_callbacks or [])]
    )
    if trainer.world_size > 1 and not run.follower:  # the other processes get this run, not a new one
        config = OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
        handoff = Handoff(config, str(run_dir), run.run_id or "", str(ckpt_path or ""))
        hand_off(trainer, handoff, cfg.num_threads)
    run.set_tags(
        {
            "encoderlab.precision": str(trainer.precision),
            "encoderlab.num_threads": str(torch.get_num_threads()),
            "encoderlab.processes": str(trainer.world_size),  # dataset.batch_size is per process
        }
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=False)
    run.set_tags({"encoderlab.optimizer": type(trainer.optimizers[0]).__name__} if trainer.optimizers else {})
    run.log_metrics(throughput.metrics())
    for callback in callbacks.values():
        if isinstance(callback, StepProfiler) and callback.written is not None:
            run.log_artifact(callback.written, "profile")
    return trainer, callbacks["checkpoint"]


def test(
    trainer: L.Trainer,
    module: SequenceClassifier,
    dm: TextClassificationDataModule,
    checkpoint: ModelCheckpoint,
    run: TrackedRun,
    summary: dict,
) -> tuple[dict[str, float], str | None, float | None]:
    """Test the best checkpoint (else the final weights); module.test_probs in the split's row order.
    Returns the test metrics, the best checkpoint's path and its monitored score."""
    best = checkpoint.best_model_path or None
    if best is None:
        log.warning("No best checkpoint (no validation ran or fast_dev_run): testing the final weights.")
    trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=False)
    test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.fast_dev_run:  # Lightning mutes loggers in fast_dev_run; keep the smoke test's numbers
        run.log_metrics(test_metrics)
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    run.set_tags({"encoderlab.best_checkpoint": best or "", "encoderlab.test_split": summary["test_source"]})
    if best_score is not None:
        run.log_metrics({f"best/{checkpoint.monitor}": best_score})
    return test_metrics, best, best_score


def report(
    cfg: DictConfig,
    run: TrackedRun,
    run_dir: Path,
    net,
    tokenizer,
    dm,
    module,
    summary: dict,
    thresholds: list[float] | None = None,
) -> None:
    """Test predictions (csv) and the analysis report; with limited test batches, the confusion matrix.
    `thresholds`: a multi-label model's decision thresholds."""
    probs = module.test_probs
    if probs is not None and len(probs) == summary["sizes"]["test"] and not probs.isnan().any():
        preds = test_predictions(dm, module.test_probs, thresholds)
        if cfg.logger.log_predictions:
            (run_dir / TEST_PREDICTIONS).parent.mkdir(parents=True, exist_ok=True)
            preds.to_csv(run_dir / TEST_PREDICTIONS, index=False)
            run.log_artifact(run_dir / TEST_PREDICTIONS, "predictions")
        what = "exact-match accuracy" if thresholds is not None else "accuracy"
        log.info("Test predictions: %d rows, %s %.4f", len(preds), what, preds["correct"].mean())
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
            progress=cfg.trainer.get("enable_progress_bar", True),
            thresholds=thresholds,
        )
    elif module.test_confusion is not None:  # limited test batches: the confusion matrix only
        png = plot_confusion_matrix(
            module.test_confusion.numpy(),
            dm.label_names,
            run_dir / "plots" / "confusion_matrix.png",
            f"Confusion matrix, {summary['test_source']} split",
        )
        run.log_artifact(png, "plots")


def export(
    cfg: DictConfig,
    run: TrackedRun,
    run_dir: Path,
    net,
    tokenizer,
    dm,
    best: str | None,
    thresholds: list[float] | None = None,
) -> None:
    """The trained model as a save_pretrained directory (+ encoderlab's metadata) and as an MLflow model
    (the run's `model` artifact, registered with logger.register_model), and the checkpoint. A multi-label
    model's encoderlab.json holds task=multilabel and its decision thresholds, which predict and pyfunc use."""
    if cfg.logger.log_model and hasattr(net, "save_pretrained") and not cfg.trainer.get("fast_dev_run"):
        model_dir = run_dir / "model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # saved as loaded, not with the padding/truncation the last call left on it
            backend.no_padding()
            backend.no_truncation()
        if thresholds is not None and isinstance(net, HFEncoderClassifier):  # pipelines: sigmoid per label
            net.hf_model.config.problem_type = "multi_label_classification"
        plain = None
        if isinstance(
            net, HFEncoderClassifier
        ):  # with LoRA a merged copy: made once, saved and given to MLflow
            plain = net.plain_model()
            net.save_pretrained(model_dir, tokenizer, plain=plain)
        else:
            net.save_pretrained(model_dir, tokenizer)
        family = {ScratchEncoder: "scratch", HFEncoderClassifier: "hf"}.get(type(net), type(net).__qualname__)
        extra = {"run_id": run.run_id} if run.run_id else {}  # predict <run id> trusts only its own model
        if thresholds is not None:
            extra.update(task="multilabel", thresholds=dict(zip(dm.label_names, thresholds, strict=True)))
        pairs = bool(cfg.dataset.get("text_pair_field"))
        write_metadata(
            model_dir,
            dm.label_names,
            cfg.dataset.max_length,
            family,
            dataset=cfg.dataset.name,
            text_pairs=pairs,
            **extra,
        )
        # with LoRA: the adapter alone too (model/ holds it merged), for those who load it with peft
        adapter = isinstance(net, HFEncoderClassifier) and save_adapter(net.hf_model, run_dir / ADAPTER_DIR)
        if not run.enabled:
            return
        example = [str(t) for t in dm.prepared.splits["test"]["text"][:3]]
        mlflow_dir = mlflow_model.save(
            model_dir,
            run_dir / mlflow_model.LOCAL_DIR,
            label_names=dm.label_names,
            pairs=pairs,
            example=example,
            multilabel=thresholds is not None,
            hf_parts=(plain, tokenizer) if plain is not None else None,
        )
        run.log_artifact(mlflow_dir, mlflow_model.ARTIFACT)
        if adapter:
            run.log_artifact(run_dir / ADAPTER_DIR, ADAPTER_DIR)
        if cfg.logger.get("register_model"):
            run.register_model(cfg.logger.register_model, mlflow_model.ARTIFACT)
    if cfg.logger.log_checkpoint and best:
        run.log_artifact(Path(best), "checkpoints")


def train(
    cfg: DictConfig,
    callbacks: list | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    resume: tuple[str | None, Path] | None = None,
    follower: Handoff | None = None,
) -> float | None:
    """Fit, test with the best checkpoint, log everything; returns the best value of the monitored metric.
    `callbacks` are extra Lightning callbacks (a sweep's pruning hook), `parent_run_id` nests the MLflow run.
    `resume` = (MLflow run id or None, last.ckpt): continue that run from that checkpoint (encoderlab.resume).
    `follower`: this process is rank > 0 of rank 0's run (encoderlab.distributed): it fits and tests its
    shares and logs, reports and exports nothing."""
    started_at = encoderlab.run_started_at()
    if follower is not None:
        cfg.output_dir = follower.run_dir
        resume = (None, Path(follower.checkpoint)) if follower.checkpoint else None
    else:
        check_targets(
            cfg
        )  # a wrong trainer/optimizer/scheduler/callback key fails here, before any run or data
        check_model_source(cfg)  # a local model directory's files and position limit, before the run opens
    run_dir = Path(cfg.output_dir).resolve()
    _tidy_lightning_output()
    L.seed_everything(cfg.seed, workers=True, verbose=follower is None)
    if cfg.num_threads:  # set once, before any op has spun up the thread pool
        torch.set_num_threads(cfg.num_threads)

    resume_run_id, ckpt_path = resume if resume else (None, None)
    tracked = TrackedRun(
        cfg,
        run_dir,
        parent_run_id=parent_run_id,
        tags=tags,
        resume_run_id=resume_run_id,
        follower=follower is not None,
    )
    try:
        with tracked as run:
            if resume is None and follower is None:  # a resumed run's config is logged already
                log_config(cfg, run, run_dir)
            dm, tokenizer, summary = setup_data(cfg, run)
            net, module = setup_model(cfg, dm, tokenizer, run)
            trainer, checkpoint = fit(cfg, module, dm, run, run_dir, callbacks, started_at, ckpt_path)
            test_metrics, best, best_score = test(trainer, module, dm, checkpoint, run, summary)
            if follower is not None:
                return best_score
            thresholds = None
            if dm.task == "multilabel":
                from encoderlab.thresholds import decision_thresholds

                thresholds = decision_thresholds(
                    cfg, run, net, tokenizer, dm, module.test_probs, test_metrics
                )
            (run_dir / "metrics.json").write_text(
                json.dumps({"test": test_metrics, "best": best_score}, indent=2)
            )
            run.log_artifact(run_dir / "metrics.json", "metrics")
            report(cfg, run, run_dir, net, tokenizer, dm, module, summary, thresholds)
            export(cfg, run, run_dir, net, tokenizer, dm, best, thresholds)
            log.info("Test: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(test_metrics.items())))
            log.info("Run directory: %s", run_dir)
    finally:
        if follower is None:
            end_of_run()
    return best_score
