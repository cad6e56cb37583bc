"""What a finished Optuna study leaves behind: best params, a rerunnable best.yaml, parameter importances,
the trials table and four plots (optimisation history, parallel coordinates, slice, importances)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def best_yaml(trial, path: Path, metric: str) -> Path:
    """A primary config that reruns the trial exactly:
    encoderlab train --config-dir <dir> --config-name best (same groups, same values)."""
    from omegaconf import OmegaConf, open_dict

    from encoderlab.compose import compose, write_rerun_config

    cfg, choices = compose(trial.user_attrs["overrides"])
    with open_dict(cfg):
        cfg.pop("output_dir", None)
    values = OmegaConf.to_container(cfg, resolve=True)
    seeds = trial.user_attrs.get("seed_values")
    value = f"{trial.value:.4f}"
    if seeds:  # seeds_per_trial > 1: the value is a mean; this file reruns the first seed
        value += f" (mean over seeds {', '.join(seeds)}; this config runs seed {cfg.seed})"
    header = (
        f"# Best trial {trial.number} of an encoderlab sweep: {metric} = {value}\n"
        f"# Params: {json.dumps(trial.params)}\n"
        f"# Rerun exactly: encoderlab train --config-dir {path.parent.resolve()} --config-name {path.stem}\n"
    )
    return write_rerun_config(values, dict(choices), path, header)


def write_study_report(study, space, out_dir: Path) -> dict[str, Path]:
    """Files under out_dir/report (logged to the parent run) and out_dir/best.yaml."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    # optuna plots numeric categorical choices (vocab_size 2000/4000/...) as strings, and matplotlib then
    # logs an INFO line per axis that the sweep's log would show once per plot
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    report = out_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    best = study.best_trial
    metric = space.study["metric"]
    files["best_yaml"] = best_yaml(best, out_dir / "best.yaml", metric)
    (report / "best.yaml").write_text(files["best_yaml"].read_text())
    files["best_params"] = report / "best_params.json"
    files["best_params"].write_text(
        json.dumps(
            {
                "trial": best.number,
                "value": best.value,
                "metric": metric,
                "params": best.params,
                "overrides": best.user_attrs.get("overrides"),
            },
            indent=2,
        )
    )
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    files["trials"] = report / "trials.csv"
    frame.to_csv(files["trials"], index=False)

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    importances = {}
    if len(complete) >= 2 and len(best.params) >= 1:
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as ex:  # e.g. every trial has the same params
            log.warning("Parameter importances not computed: %s", ex)
    files["importances"] = report / "importances.json"
    files["importances"].write_text(json.dumps(importances, indent=2))

    plots = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target_name=metric),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target_name=metric),
        "slice": lambda: ovm.plot_slice(study, target_name=metric),
        "param_importances": lambda: ovm.plot_param_importances(study) if importances else None,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, make in plots.items():
            try:
                ax = make()
            except (ValueError, RuntimeError) as ex:
                log.warning("Plot %s skipped: %s", name, ex)
                continue
            if ax is None:
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
            fig.tight_layout()
            files[name] = report / f"{name}.png"
            fig.savefig(files[name], dpi=110)
            plt.close(fig)
    return files
