"""`encoderlab sweep ... --retest K,N`: retrain the best K configs of a study with N fresh seeds each and
evaluate them on test, so the number reported is a mean over seeds, not one lucky seed's winner."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("encoderlab.sweep")

FRESH_SEED_BASE = 10_000  # far from the seeds a search typically uses


def test_metric(val_metric: str) -> str:
    return "test/" + val_metric.split("/", 1)[1] if val_metric.startswith("val/") else val_metric


def ensemble_accuracy(prediction_files: list[Path]) -> float | None:
    """Accuracy of the runs' averaged class probabilities (their test_predictions.csv, same test rows in
    the same order); None when a run wrote no predictions (logger.log_predictions=false)."""
    import pandas as pd

    if not prediction_files or not all(p.is_file() for p in prediction_files):
        return None
    frames = [pd.read_csv(p) for p in prediction_files]
    classes = [c for c in frames[0].columns if c.startswith("prob_") and c != "prob_true_label"]
    probs = np.mean([f[classes].to_numpy() for f in frames], axis=0)  # (rows, classes)
    predicted = np.array([c.removeprefix("prob_") for c in classes])[probs.argmax(axis=1)]
    return float((predicted == frames[0]["label"].astype(str).to_numpy()).mean())


def retest(study, space, overrides: list[str], client, parent_id: str | None, k: int, n: int) -> list[dict]:
    from optuna.trial import TrialState

    from encoderlab.compose import compose
    from encoderlab.train import TEST_PREDICTIONS, train

    reverse = space.study["direction"] == "maximize"
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: t.value,
        reverse=reverse,
    )
    picked, seen = [], set()
    for t in complete:  # distinct configurations only
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            picked.append(t)
        if len(picked) == k:
            break
    metric = test_metric(space.study["metric"])
    out_root = Path("outputs") / "sweeps" / study.study_name / "retest"
    results = []
    for rank, trial in enumerate(picked, 1):
        scores, files = {}, []
        for j in range(n):
            seed = FRESH_SEED_BASE + j
            out_dir = (out_root / f"trial_{trial.number:04d}_seed{seed}").resolve()
            cfg, _ = compose([*trial.user_attrs["overrides"], f"seed={seed}"], out_dir)
            tags = {
                "encoderlab.study": study.study_name,
                "encoderlab.retest_of_trial": str(trial.number),
                "encoderlab.retest_rank": str(rank),
            }
            train(cfg, parent_run_id=parent_id, tags=tags)
            files.append(out_dir / TEST_PREDICTIONS)
            scores[seed] = json.loads((out_dir / "metrics.json").read_text())["test"][metric]
            log.info("Retest of trial %d, seed %d: %s=%.4f", trial.number, seed, metric, scores[seed])
        values = np.array(list(scores.values()))
        results.append(
            {
                "rank": rank,
                "trial": trial.number,
                "val_best": trial.value,
                "params": trial.params,
                "seeds": scores,
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if n > 1 else 0.0,
                # not the reported number: what averaging the N models' probabilities would give
                "ensemble_accuracy": ensemble_accuracy(files) if n > 1 else None,
            }
        )
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "retest.json").write_text(json.dumps({"metric": metric, "results": results}, indent=2))
    lines = [
        f"| rank | trial | val (search) | {metric} mean ± std over {n} fresh seeds | "
        f"accuracy of their {n}-model ensemble | params |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rank']} | {r['trial']} | {r['val_best']:.4f} | {r['mean']:.4f} ± {r['std']:.4f} | "
        f"{'—' if r['ensemble_accuracy'] is None else format(r['ensemble_accuracy'], '.4f')} | "
        f"{json.dumps(r['params'])} |"
        for r in results
    ]
    table = "\n".join(lines) + "\n"
    (out_root / "retest.md").write_text(table)
    print(table)
    if client is not None and parent_id is not None:
        client.log_artifact(parent_id, str(out_root / "retest.json"), "study")
        client.log_artifact(parent_id, str(out_root / "retest.md"), "study")
        if results:
            client.log_metric(parent_id, f"retest/{metric}_mean", results[0]["mean"])
            client.log_metric(parent_id, f"retest/{metric}_std", results[0]["std"])
            if results[0]["ensemble_accuracy"] is not None:
                client.log_metric(parent_id, "retest/ensemble_accuracy", results[0]["ensemble_accuracy"])
    return results
