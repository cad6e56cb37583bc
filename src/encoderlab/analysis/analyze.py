"""After test (or in `encoderlab evaluate`): the report, probes, attention maps and attributions of a
model on a predictions frame, written under one directory, logged to MLflow and joined in report.html."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import PreTrainedTokenizerBase

from encoderlab.analysis.figures import plot_probe_suites
from encoderlab.analysis.html import render_report
from encoderlab.analysis.probes import run_probes
from encoderlab.analysis.progress import timed
from encoderlab.analysis.report import summary_metrics, top_errors, write_report
from encoderlab.inference import predict_proba

log = logging.getLogger(__name__)


def example_texts(frame: pd.DataFrame, n: int) -> list[str]:
    """The most confident errors first (up to half), then the most confident correct predictions."""
    by_conf = frame.sort_values("confidence", ascending=False)
    wrong = by_conf[~by_conf["correct"]]["text"].tolist()[: max(1, n // 2)]
    right = by_conf[by_conf["correct"]]["text"].tolist()
    return (wrong + right)[:n]


def mc_dropout_report(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    frame: pd.DataFrame,
    label_names: list[str],
    mc: DictConfig,
    threshold: float | None,
    out_dir: Path,
    max_length: int,
    split_name: str,
    progress: bool | None = False,
) -> tuple[dict[str, float], Path]:
    """N stochastic passes with dropout on over (a seeded sample of) the split: mean probabilities, their
    spread, accuracy, and selective accuracy at the threshold beside the single deterministic pass."""
    import numpy as np

    from encoderlab.analysis.figures import plot_coverage
    from encoderlab.analysis.report import selective

    sample = frame
    if mc.max_examples is not None and len(frame) > mc.max_examples:
        sample = frame.sample(n=mc.max_examples, random_state=0).sort_index()
    index = {name: i for i, name in enumerate(label_names)}
    y = sample["label"].map(index).to_numpy()
    pairs = sample["text_pair"].tolist() if "text_pair" in sample else None
    out = predict_proba(
        net,
        tokenizer,
        sample["text"].tolist(),
        pairs,
        max_length=max_length,
        mc_dropout=mc.passes,
        progress=progress,
        desc=f"MC dropout ({mc.passes} passes, {len(sample)} rows)",
    )
    single = sample[[f"prob_{n}" for n in label_names]].to_numpy()
    pred = out.probs.argmax(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = sample[["text", "label"]].copy()
    table["prediction"] = [label_names[i] for i in pred]
    table["mc_confidence"] = out.probs.max(1)
    table["mc_std"] = out.std[np.arange(len(pred)), pred]  # spread of the predicted class's probability
    table["single_pass_prediction"] = sample["prediction"].to_numpy()
    table.to_csv(out_dir / "predictions.csv", index=False)
    curves = {
        "single pass": selective(y, single, threshold),
        f"MC dropout ({mc.passes} passes)": selective(y, out.probs, threshold),
    }
    png = plot_coverage(
        curves, threshold, out_dir / "coverage.png", f"Selective prediction, {split_name} (n={len(y)})"
    )
    metrics = {
        "mc_dropout/accuracy": float((pred == y).mean()),
        "mc_dropout/single_pass_accuracy": float((single.argmax(1) == y).mean()),
        "mc_dropout/mean_std": float(table["mc_std"].mean()),
        "mc_dropout/examples": float(len(y)),
    }
    if threshold is not None:
        cov, acc = curves[f"MC dropout ({mc.passes} passes)"]["at_threshold"]
        metrics.update({"mc_dropout/coverage_at_threshold": cov, "mc_dropout/accuracy_at_threshold": acc})
    (out_dir / "metrics.json").write_text(
        json.dumps({**metrics, "passes": mc.passes, "threshold": threshold}, indent=2)
    )
    return metrics, png


def probe_report(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    suites: dict,
    label_names: list[str],
    out_dir: Path,
    max_length: int,
    progress: bool | None,
    labels: list[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
    """Run the suites whose labels the model has (others are skipped before any prediction, with one
    log line); probes/results.{csv,json} and pass_rates.png. Returns the rows, pass rates and skips."""

    def predict(texts: list[str]):
        out = predict_proba(net, tokenizer, texts, max_length=max_length, progress=progress, desc="Probes")
        return out.probs

    results = run_probes(suites, label_names, predict, labels)
    rates, skipped = results.pass_rates(), results.skipped
    if skipped:
        log.info(
            "Probe suites skipped (%d of %d, no prediction run): %s: %s",
            len(skipped),
            len(suites),
            ", ".join(skipped),
            "; ".join(dict.fromkeys(skipped.values())),
        )
    probe_dir = out_dir / "probes"
    probe_dir.mkdir(exist_ok=True)
    probe_frame = pd.DataFrame(results.records())
    probe_frame.to_csv(probe_dir / "results.csv", index=False)
    (probe_dir / "results.json").write_text(
        json.dumps({"pass_rates": rates, "skipped": skipped, "probes": results.records()}, indent=2)
    )
    if rates:
        plot_probe_suites(rates, probe_dir / "pass_rates.png")
    return probe_frame, rates, skipped


def analyze(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    frame: pd.DataFrame,
    label_names: list[str],
    analysis: DictConfig,
    probes: DictConfig,
    out_dir: Path,
    run=None,
    max_length: int = 128,
    split_name: str = "test",
    meta: dict[str, str] | None = None,
    progress: bool | None = None,
    thresholds: list[float] | None = None,
) -> dict[str, float]:
    """Write and log everything `analysis` and `probes` ask for; returns the metrics logged to MLflow,
    with each stage's wall time as analysis/<stage>_seconds. progress: tqdm bars for the stages (False:
    none, as with trainer.enable_progress_bar=false; None: only on a terminal). `thresholds` (one per
    label) marks a multi-label model: its report (encoderlab.analysis.multilabel) replaces the
    single-label one, and MC dropout and the probes, which read one class per text, are skipped."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    logged: dict[str, float] = {}
    timings: dict[str, float] = {}
    figures, tables, per_class, errors = {}, {}, pd.DataFrame(), pd.DataFrame()
    headline: dict[str, float] = {}
    per_class_title = "Per-class report"
    if thresholds is not None and analysis.report.enabled:
        from encoderlab.analysis.multilabel import HEADLINE, multilabel_errors, write_multilabel_report

        with timed("report", timings):
            files = write_multilabel_report(
                frame, label_names, thresholds, out_dir, split_name, analysis.report.top_errors
            )
            headline = {k: files.metrics[k] for k in HEADLINE if k in files.metrics}
            logged.update({f"report/{k}": v for k, v in headline.items()})
            figures, tables = files.figures, files.tables
            per_class = pd.read_csv(tables["per_label"])
            per_class_title = "Per-label report (at the decision thresholds)"
            errors = multilabel_errors(frame, analysis.report.top_errors)
            if run is not None:
                run.log_table(errors, "report/top_errors.json")
    elif analysis.report.enabled:
        with timed("report", timings):
            files = write_report(
                frame,
                label_names,
                out_dir,
                split_name,
                analysis.report.top_errors,
                analysis.report.calibration_bins,
                analysis.report.threshold,
                progress=progress,
            )
            headline = summary_metrics(files.metrics)
            logged.update({f"report/{k}": v for k, v in headline.items()})
            figures, tables = files.figures, files.tables
            per_class = pd.read_csv(tables["classification_report"])
            errors = top_errors(frame, analysis.report.top_errors)
            if run is not None:
                run.log_table(errors, "report/top_errors.json")

    # ---- Monte-Carlo dropout -----------------------------------------------------------------------
    single_label_only = [
        what
        for what, on in (
            ("MC dropout", analysis.mc_dropout.passes > 0),
            ("probes", probes.enabled and probes.suites),
        )
        if on
    ]
    if thresholds is not None and single_label_only:
        log.info(
            "Multi-label model: %s skipped (they read one class per text)", " and ".join(single_label_only)
        )
    if analysis.mc_dropout.passes > 0 and len(frame) and thresholds is None:
        with timed("mc_dropout", timings):
            mc_metrics, mc_png = mc_dropout_report(
                net,
                tokenizer,
                frame,
                label_names,
                analysis.mc_dropout,
                analysis.report.threshold,
                out_dir / "mc_dropout",
                max_length,
                split_name,
                progress,
            )
        logged.update(mc_metrics)
        figures["mc_dropout"] = mc_png

    # ---- behavioural probes ----------------------------------------------------------------------
    probe_frame, rates, skipped = None, None, None
    if probes.enabled and probes.suites and thresholds is None:
        with timed("probes", timings):
            probe_frame, rates, skipped = probe_report(
                net,
                tokenizer,
                OmegaConf.to_container(probes.suites, resolve=True),
                label_names,
                out_dir,
                max_length,
                progress,
                list(probes.labels) if probes.get("labels") else None,
            )
        if rates:
            figures["probes"] = out_dir / "probes" / "pass_rates.png"
        logged.update({f"probes/{s}/pass_rate": r for s, r in rates.items()})

    # ---- attention and attributions -------------------------------------------------------------
    att_cfg, ig_cfg = analysis.attention, analysis.attributions
    attention_pngs: list[Path] = []
    ig_html = None
    if att_cfg.enabled or ig_cfg.enabled:
        default_texts = example_texts(frame, att_cfg.n_examples) if len(frame) else []
        if att_cfg.enabled:
            from encoderlab.analysis.attention import attention_report

            texts = list(att_cfg.texts or default_texts)
            heads = [tuple(h) for h in att_cfg.heads] if att_cfg.heads else None
            with timed("attention", timings):
                paths = attention_report(
                    net,
                    tokenizer,
                    texts,
                    out_dir / "attention",
                    layers=att_cfg.layers,
                    heads=heads,
                    top_k=att_cfg.top_k,
                    max_length=min(att_cfg.max_length, max_length),
                    progress=progress,
                )
            attention_pngs = [p for p in paths if p.suffix == ".png"]
        if ig_cfg.enabled:
            from encoderlab.analysis.attributions import attribution_report

            texts = list(ig_cfg.texts or att_cfg.texts or default_texts)
            with timed("attributions", timings):
                paths = attribution_report(
                    net,
                    tokenizer,
                    texts,
                    out_dir / "attributions",
                    label_names,
                    n_steps=ig_cfg.n_steps,
                    max_length=min(ig_cfg.max_length, max_length),
                    progress=progress,
                )
            ig_html = next((p for p in paths if p.suffix == ".html"), None)

    if analysis.report.enabled:
        with timed("html", timings):
            render_report(
                out_dir / "report.html",
                f"encoderlab evaluation report: {(meta or {}).get('run', '')}".rstrip(": "),
                {**(meta or {}), "split": split_name, "examples": str(len(frame))},
                headline,
                per_class,
                figures,
                errors,
                probe_frame,
                rates,
                skipped,
                attention_pngs,
                ig_html,
                per_class_title=per_class_title,
            )
    if run is not None:
        with timed("upload", timings):
            run.log_artifact(out_dir, "report")
    timings["analysis/total_seconds"] = time.perf_counter() - started
    log.info("Analysis done in %.1f s (%s)", timings["analysis/total_seconds"], out_dir)
    logged.update(timings)
    if run is not None:
        run.log_metrics(logged)
    return logged
