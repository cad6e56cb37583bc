"""One HTML page per evaluation, no CDN, no scripts: the report figures inlined as base64 PNG; of the
attention maps only the rollout per text is inlined, the per-layer head grids (large: a panel per head)
are PNG files next to the page, linked by relative paths, which keeps the page small (< 2 MB)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1180px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .v { font-size: 1.5em; font-weight: 600; } .card .k { color: #666; font-size: 0.8em; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs img { max-width: 540px; border: 1px solid #eee; }
.figs.wide img { max-width: 100%; } .links a { margin-right: 10px; white-space: nowrap; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
td.text { max-width: 620px; }
iframe { width: 100%; height: 520px; border: 1px solid #ddd; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def _probe_table(probes: pd.DataFrame) -> str:
    """One row per probe text: what passing expects of it (a flip pair: label, then flipped_label), the
    prediction, the probability of the suite's label, and whether the probe passed."""
    shown = pd.DataFrame(
        {
            "suite": probes["suite"],
            "probe": probes["probe"],
            "text": probes["text"],
            "expected": probes["expected"],
            "prediction": probes["prediction"],
            "probability": [
                f"P({lab}) = {p:.3f}" for lab, p in zip(probes["label"], probes["p_label"], strict=True)
            ],
            "passed": probes["passed"].map({True: "pass", False: "FAIL"}),
        }
    )
    return _table(shown)


def _table(frame: pd.DataFrame, text_cols: tuple[str, ...] = ("text", "text_pair")) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = row[c]
            if isinstance(v, float):
                cells.append(f'<td class="num">{v:.4f}</td>')
            elif c in text_cols:
                s = str(v)
                cells.append(f'<td class="text">{html.escape(s[:600] + ("…" if len(s) > 600 else ""))}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_report(
    path: Path,
    title: str,
    meta: dict[str, str],
    metrics: dict[str, float],
    per_class: pd.DataFrame,
    figures: dict[str, Path],
    errors: pd.DataFrame,
    probes: pd.DataFrame | None = None,
    probe_rates: dict[str, float] | None = None,
    probe_skipped: dict[str, str] | None = None,
    attention_figures: list[Path] | None = None,
    attributions_html: Path | None = None,
    per_class_title: str = "Per-class report",
) -> Path:
    """Write the report page: headline metrics, per-class table, figures, errors, probes, attention, IG."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    parts.append(
        "<p class='meta'>"
        + " · ".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in meta.items())
        + "</p>"
    )
    parts.append(
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='v'>{v:.3f}</div><div class='k'>{html.escape(k)}</div></div>"
            for k, v in metrics.items()
        )
        + "</div>"
    )
    parts.append(f"<h2>{html.escape(per_class_title)}</h2>" + _table(per_class))
    parts.append(
        "<h2>Figures</h2><div class='figs'>"
        + "".join(_img(p, name) for name, p in figures.items())
        + "</div>"
    )
    parts.append(f"<h2>Most confident errors ({len(errors)})</h2>")
    parts.append(_table(errors) if len(errors) else "<p>No errors.</p>")
    if probe_rates is not None:
        parts.append("<h2>Behavioural probes</h2><table><tr><th>suite</th><th>pass rate</th></tr>")
        parts += [
            f"<tr><td>{html.escape(s)}</td><td class='num'>{r:.0%}</td></tr>" for s, r in probe_rates.items()
        ]
        parts.append("</table>")
        for suite, why in (probe_skipped or {}).items():
            parts.append(
                f"<p class='meta'>Suite <b>{html.escape(suite)}</b> skipped: {html.escape(why)}.</p>"
            )
        if probes is not None and len(probes):
            parts.append(_probe_table(probes))
    if attention_figures:
        rollouts = [p for p in attention_figures if p.stem.endswith("_rollout")]
        linked = [p for p in attention_figures if p not in rollouts]
        parts.append(
            "<h2>Attention</h2><p class='meta'>Attention weights show where the model looks, not "
            "why it decides: read them beside the attributions below. Inlined: the attention rollout "
            "over all layers per text.</p><div class='figs wide'>"
        )
        parts += [_img(p, p.stem) for p in rollouts]
        parts.append("</div>")
        if linked:
            parts.append(
                "<p class='meta'>Every head per layer (PNG files in the attention/ folder next to this page):"
                "</p><p class='links'>"
                + "".join(
                    f"<a href='{html.escape(_relative(p, path.parent), quote=True)}'>"
                    f"{html.escape(p.stem.replace('_', ' '))}</a>"
                    for p in linked
                )
                + "</p>"
            )
    if attributions_html is not None and Path(attributions_html).is_file():
        doc = Path(attributions_html).read_text()
        parts.append(
            "<h2>Integrated Gradients attributions</h2>"
            f"<iframe title='attributions' srcdoc=\"{html.escape(doc, quote=True)}\"></iframe>"
        )
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
