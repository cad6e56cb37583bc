"""Multi-label decision thresholds after test (analysis.thresholds): tuned per label on the validation
split's predictions of the tested (best) model, or one fixed probability; logged as thresholds/<label>,
with the test metrics at those thresholds beside the ones at 0.5."""

from __future__ import annotations

import logging

import numpy as np
import torch
from omegaconf import DictConfig

from encoderlab.inference import predict_proba
from encoderlab.metrics import metric_name, multilabel_at_thresholds, tune_thresholds

log = logging.getLogger(__name__)


def validation_probs(net, tokenizer, dm, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, 0/1 targets) of the validation split, predicted by `net` as it is now."""
    val = dm.prepared.splits["validation"]
    pairs = val["text_pair"] if "text_pair" in val.column_names else None
    device = next(net.parameters()).device
    out = predict_proba(
        net, tokenizer, list(val["text"]), pairs, max_length=max_length, device=device, multilabel=True
    )
    return out.probs, np.asarray(val["labels"], dtype=np.float32)


def decision_thresholds(
    cfg: DictConfig, run, net, tokenizer, dm, test_probs: torch.Tensor | None, test_metrics: dict[str, float]
) -> list[float]:
    """One threshold per label; logs them and (with complete test predictions) test/<metric>_tuned, or
    test/<metric>_thresholded for a fixed value other than 0.5, adding them to `test_metrics`."""
    setting = cfg.analysis.get("thresholds", 0.5)
    names = dm.label_names
    if setting == "tune":
        probs, targets = validation_probs(net, tokenizer, dm, cfg.dataset.max_length)
        thresholds = tune_thresholds(probs, targets)
        suffix = "tuned"
        log.info(
            "Thresholds tuned on validation (%d rows): %s",
            len(targets),
            ", ".join(f"{n}={t:.2f}" for n, t in zip(names, thresholds, strict=True)),
        )
    else:
        thresholds, suffix = [float(setting)] * len(names), "thresholded"
    run.log_metrics({f"thresholds/{metric_name(n)}": t for n, t in zip(names, thresholds, strict=True)})
    n_test = len(dm.prepared.splits["test"])
    complete = test_probs is not None and len(test_probs) == n_test and not test_probs.isnan().any()
    if complete and (setting == "tune" or float(setting) != 0.5):
        test = dm.prepared.splits["test"]
        targets = torch.as_tensor(np.asarray(test["labels"], dtype=np.float32))
        scores = multilabel_at_thresholds(test_probs, targets, thresholds, names)
        extra = {f"test/{k}_{suffix}": v for k, v in scores.items()}
        run.log_metrics(extra)
        test_metrics.update(extra)
        log.info(
            "Test at the %s thresholds: f1_micro %.4f (0.5: %.4f), f1_macro %.4f (0.5: %.4f)",
            suffix,
            scores["f1_micro"],
            test_metrics.get("test/f1_micro", float("nan")),
            scores["f1_macro"],
            test_metrics.get("test/f1_macro", float("nan")),
        )
    return thresholds
