"""`encoderlab evaluate`: model -> dataset split -> predictions -> report -> MLflow, top to bottom.

    encoderlab evaluate source=<run id | run dir | model dir> dataset=imdb split=test

The model is loaded the way `encoderlab predict` loads it; the dataset split is built by the same dataset
config as in training (carving, caps); labels are matched by name, so a model trained on SST-2
(negative/positive) evaluates on IMDb (negative/positive): cross-domain in one command.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from encoderlab.analysis.analyze import analyze
from encoderlab.analysis.report import predictions_frame
from encoderlab.data.datamodule import TextClassificationDataModule
from encoderlab.errors import EncoderlabError
from encoderlab.inference import predict_proba
from encoderlab.models.files import check_model_dir
from encoderlab.models.trained import load_model, resolve_model_dir
from encoderlab.tracking import TrackedRun

log = logging.getLogger(__name__)


def label_mapping(data_labels: list[str], model_labels: list[str]) -> np.ndarray:
    """Index of each dataset label in the model's labels (matched by name, case-insensitive)."""
    model_index = {name.lower(): i for i, name in enumerate(model_labels)}
    missing = [name for name in data_labels if name.lower() not in model_index]
    if missing:
        raise EncoderlabError(
            f"The dataset's labels ({', '.join(data_labels)}) do not match the model's ({', '.join(model_labels)}): "
            f"the model has no {', '.join(missing)}. Set dataset.label_names to the model's names in the "
            "dataset's label order, or evaluate on a dataset with the same classes."
        )
    return np.array([model_index[name.lower()] for name in data_labels])


def split_metrics(probs: np.ndarray, y_true: np.ndarray, num_classes: int, split: str) -> dict[str, float]:
    """<split>/<name>: the metrics training logs for its test split (encoderlab.metrics on the
    probabilities, and the mean cross-entropy as <split>/loss), so test/accuracy means the same in both."""
    from encoderlab.metrics import ClassificationMetrics

    p, y = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(y_true, dtype=torch.long)
    metrics = ClassificationMetrics(num_classes)
    metrics.update(p, y)
    out = {f"{split}/{k}": float(v) for k, v in metrics.compute().items()}
    out[f"{split}/loss"] = float(torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), y))
    return out


def evaluate(cfg: DictConfig) -> float:
    """Report a trained model on cfg.split of cfg.dataset; returns its accuracy."""
    run_dir = Path(cfg.output_dir).resolve()
    if Path(cfg.source).expanduser().exists():  # a model directory's files, before the run opens
        check_model_dir(resolve_model_dir(cfg.source)[0], "Model directory")
    with TrackedRun(cfg, run_dir, command="evaluate") as run:
        # ---- model -----------------------------------------------------------------------------------
        loaded = load_model(cfg.source, cfg.logger.tracking_uri)
        run.set_tags(
            {
                "encoderlab.source": cfg.source,
                "encoderlab.source_run": loaded.run_id or "",
                "encoderlab.model_dir": str(loaded.directory),
                "encoderlab.split": cfg.split,
            }
        )
        if loaded.multilabel or cfg.dataset.get("task", "single_label") == "multilabel":
            raise EncoderlabError(
                "encoderlab evaluate reports single-label models on single-label data; this "
                f"{'model' if loaded.multilabel else 'dataset'} is multi-label (dataset.task=multilabel). "
                "Its test report comes with the training run (report/report.html); for new texts use "
                "encoderlab predict, which prints label sets."
            )
        # ---- data ------------------------------------------------------------------------------------
        prepared = TextClassificationDataModule(cfg.dataset, seed=cfg.seed).prepare()
        split = prepared.splits[cfg.split]
        if len(split) == 0:
            raise EncoderlabError(f"The {cfg.split} split of dataset '{cfg.dataset.name}' is empty.")
        to_model = label_mapping(prepared.label_names, loaded.label_names)
        y_true = to_model[np.asarray(split["labels"])]
        texts = list(split["text"])
        pairs = list(split["text_pair"]) if "text_pair" in split.column_names else None
        run.log_params({"source": cfg.source, "split": cfg.split, "dataset.name": cfg.dataset.name})
        # ---- predict ---------------------------------------------------------------------------------
        max_length = min(cfg.max_length or cfg.dataset.max_length, loaded.max_positions)
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        out = predict_proba(
            loaded.net,
            loaded.tokenizer,
            texts,
            pairs,
            batch_size=cfg.dataset.eval_batch_size,
            max_length=max_length,
            device=device,
            progress=cfg.enable_progress_bar,
        )
        frame = predictions_frame(texts, y_true, out.probs, loaded.label_names, pairs)
        (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
        frame.to_csv(run_dir / "predictions" / f"{cfg.split}_predictions.csv", index=False)
        run.log_artifact(run_dir / "predictions" / f"{cfg.split}_predictions.csv", "predictions")
        scores = split_metrics(out.probs, y_true, len(loaded.label_names), cfg.split)
        accuracy = scores[f"{cfg.split}/accuracy"]
        run.log_metrics(
            {
                **scores,
                f"data/{cfg.split}_rows": len(frame),
                "perf/predict_seconds": out.seconds,
                "perf/predict_texts_per_second": len(frame) / max(out.seconds, 1e-9),
            }
        )
        # ---- report ----------------------------------------------------------------------------------
        loaded.net.to("cpu")
        meta = {
            "run": run.run_id or run_dir.name,
            "model": str(loaded.run_id or loaded.directory),
            "dataset": cfg.dataset.name,
        }
        metrics = analyze(
            loaded.net,
            loaded.tokenizer,
            frame,
            loaded.label_names,
            cfg.analysis,
            cfg.probes,
            run_dir / "report",
            run,
            max_length=max_length,
            split_name=cfg.split,
            meta=meta,
            progress=cfg.enable_progress_bar,
        )
        log.info(
            "%s on %s/%s (%d rows): accuracy %.4f%s",
            cfg.source,
            cfg.dataset.name,
            cfg.split,
            len(frame),
            accuracy,
            f", macro-F1 {metrics['report/f1_macro']:.4f}" if "report/f1_macro" in metrics else "",
        )
        log.info("Report: %s", run_dir / "report" / "report.html")
    return accuracy
