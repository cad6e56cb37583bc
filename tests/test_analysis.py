"""Attention maps, rollout, reports and Integrated-Gradients attributions (encoderlab/analysis)."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch
import transformers

from encoderlab.analysis.attention import (
    TextAttention,
    attention_report,
    attention_rollout,
    cls_top_tokens,
    collect_attentions,
)
from encoderlab.analysis.attributions import (
    TokenAttribution,
    attribution_report,
    attributions_html,
    ig_baseline,
    integrated_gradients,
)
from encoderlab.models.hf_encoder import HFEncoderClassifier
from encoderlab.models.scratch import ScratchConfig, ScratchEncoder
from encoderlab.paths import conf_dir

SHORT = "a gripping , funny film"
LONG = "the plot is thin and the dialogue is flat , but the cast & the music <b>save</b> it"
LABELS = ["negative", "positive"]


@pytest.fixture
def tok(tiny_bert):
    return transformers.AutoTokenizer.from_pretrained(tiny_bert)


def _build(family: str, tiny_bert, tok, spread: float | None = None) -> torch.nn.Module:
    """A model in training mode; `spread` re-draws the weight matrices wider so logits are far from flat."""
    torch.manual_seed(0)
    if family == "hf":
        net = HFEncoderClassifier(str(tiny_bert), num_labels=2, attn_implementation="sdpa")
    else:
        cfg = ScratchConfig(
            vocab_size=len(tok),
            d_model=32,
            n_layers=2,
            n_heads=2,
            d_ff=64,
            pad_token_id=tok.pad_token_id,
        )
        net = ScratchEncoder(cfg)
    if spread:
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, spread)
    return net.train()


def _logits(net, tok, ids: torch.Tensor) -> torch.Tensor:
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if isinstance(net, HFEncoderClassifier):
        batch["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        return net(batch)[0]


@pytest.mark.parametrize("family", ["hf", "scratch"])
def test_attentions_strip_padding_and_restore_the_model(family, tiny_bert, tok):
    net = _build(family, tiny_bert, tok)
    batch = collect_attentions(net, tok, [SHORT, LONG])
    alone = collect_attentions(net, tok, [SHORT])[0]

    for att, text in zip(batch, [SHORT, LONG], strict=True):
        ids = tok(text)["input_ids"]
        assert att.tokens == tok.convert_ids_to_tokens(ids)
        assert att.maps.shape == (2, 2, len(ids), len(ids))
        np.testing.assert_allclose(att.maps.sum(axis=-1), 1.0, atol=1e-5)
    assert batch[0].maps.shape[-1] < batch[1].maps.shape[-1]  # SHORT really was padded in the batch
    np.testing.assert_allclose(batch[0].maps, alone.maps, atol=1e-5)
    assert all(m.training for m in net.modules())
    if family == "hf":
        assert net.hf_model.config._attn_implementation == "sdpa"


def test_rollout_of_a_known_pattern():
    # every head of both layers sends all attention to token 0: rows i>0 become 0.5 e0 + 0.5 ei after
    # one layer (residual), then 0.75 e0 + 0.25 ei after two
    maps = np.zeros((2, 3, 4, 4))
    maps[..., 0] = 1.0
    rollout = attention_rollout(maps)
    expected = 0.25 * np.eye(4)
    expected[:, 0] += 0.75
    np.testing.assert_allclose(rollout, expected)


@pytest.mark.parametrize("family", ["hf", "scratch"])
def test_rollout_rows_and_top_tokens(family, tiny_bert, tok):
    att = collect_attentions(_build(family, tiny_bert, tok, spread=0.3), tok, [LONG])[0]
    rollout = attention_rollout(att.maps)
    assert rollout.shape == (len(att.tokens), len(att.tokens))
    np.testing.assert_allclose(rollout.sum(axis=-1), 1.0, atol=1e-5)

    top = cls_top_tokens(att, k=3)
    assert len(top) == att.maps.shape[0] + 1  # one list per layer, then the rollout
    for layer, entries in enumerate(top):
        weights = [w for _, w in entries]
        assert len(entries) == 3 and weights == sorted(weights, reverse=True)
        assert all(t in att.tokens for t, _ in entries)
        row = rollout[0] if layer == len(top) - 1 else att.maps[layer, :, 0].mean(axis=0)
        assert weights[0] == pytest.approx(row.max())


def test_cls_top_tokens_caps_k_at_the_length():
    att = TextAttention("x", ["[CLS]", "x", "[SEP]"], np.full((1, 1, 3, 3), 1 / 3))
    assert [len(entries) for entries in cls_top_tokens(att, k=10)] == [3, 3]


def test_attention_report_writes_figures_and_json(tiny_bert, tok):
    net = _build("scratch", tiny_bert, tok)
    paths = attention_report(net, tok, [SHORT, LONG], "report", layers=[1], heads=[0], top_k=4)
    names = {p.name for p in paths}
    for i in (0, 1):
        assert {f"text{i}_layer1_heads.png", f"text{i}_layer1_head0.png", f"text{i}_rollout.png"} <= names
    assert "text0_layer0_heads.png" not in names
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((paths[0].parent / "attention.json").read_text())
    assert report["num_layers"] == 2 and report["num_heads"] == 2 and report["layers"] == [1]
    first = report["texts"][0]
    assert {"text", "tokens", "cls_attention", "top_tokens", "rollout_cls"} <= set(first)
    assert first["text"] == SHORT
    assert first["tokens"] == tok.convert_ids_to_tokens(tok(SHORT)["input_ids"])
    assert set(first["cls_attention"]) == {"0", "1"}  # the CLS rows are kept for every layer
    assert len(first["cls_attention"]["1"]) == len(first["tokens"]) == len(first["rollout_cls"])
    assert set(first["top_tokens"]) == {"0", "1", "rollout"}
    assert all(len(v) == 4 for v in first["top_tokens"].values())


def test_attention_report_defaults_to_every_layer_and_checks_indices(tiny_bert, tok):
    net = _build("hf", tiny_bert, tok)
    names = {p.name for p in attention_report(net, tok, [SHORT], "hf")}
    assert names == {
        "text0_layer0_heads.png",
        "text0_layer1_heads.png",
        "text0_rollout.png",
        "attention.json",
    }
    with pytest.raises(ValueError, match="layer 5"):
        attention_report(net, tok, [SHORT], "bad", layers=[5])


def test_baseline_keeps_only_cls_and_sep(tok):
    ids = tok([SHORT], return_tensors="pt")["input_ids"]
    base = ig_baseline(ids, tok)[0].tolist()
    assert base[0] == tok.cls_token_id and base[-1] == tok.sep_token_id
    assert set(base[1:-1]) == {tok.pad_token_id}


@pytest.mark.parametrize("family", ["hf", "scratch"])
def test_integrated_gradients_completeness(family, tiny_bert, tok):
    net = _build(family, tiny_bert, tok, spread=0.3)
    attrs = integrated_gradients(net, tok, [SHORT, LONG], LABELS, n_steps=64)
    assert all(m.training for m in net.modules())

    for a, text in zip(attrs, [SHORT, LONG], strict=True):
        ids = tok([text], return_tensors="pt")["input_ids"]
        assert a.tokens == tok.convert_ids_to_tokens(ids[0].tolist())
        assert len(a.scores) == len(a.tokens)
        assert np.linalg.norm(a.scores) == pytest.approx(1.0)
        assert a.scores[0] == 0.0 and a.scores[-1] == 0.0  # [CLS]/[SEP] are the same in the baseline
        net.eval()
        logits = _logits(net, tok, ids)
        gap = float(logits[a.target] - _logits(net, tok, ig_baseline(ids, tok))[a.target])
        net.train()
        assert a.target == int(logits.argmax()) and a.target_label == LABELS[a.target]
        assert a.probability == pytest.approx(float(logits.softmax(-1)[a.target]), abs=1e-5)
        assert abs(gap) > 0.05  # the check below means something
        # completeness, checked against our own forward passes, and captum's delta agrees
        assert a.raw_sum == pytest.approx(gap, abs=0.02)
        assert abs(a.delta) < 0.02
        assert a.raw_sum - a.delta == pytest.approx(gap, abs=1e-4)


def test_integrated_gradients_toward_a_given_label(tiny_bert, tok):
    net = _build("scratch", tiny_bert, tok, spread=0.3)
    predicted = integrated_gradients(net, tok, [SHORT], LABELS, n_steps=16)[0]
    other = integrated_gradients(net, tok, [SHORT], LABELS, target=1 - predicted.target, n_steps=16)[0]
    assert other.target == 1 - predicted.target and other.target_label == LABELS[other.target]
    assert other.probability == pytest.approx(1 - predicted.probability, abs=1e-5)
    with pytest.raises(ValueError, match="target=7"):
        integrated_gradients(net, tok, [SHORT], LABELS, target=7, n_steps=4)


def test_attribution_report_is_offline_html_and_json(tiny_bert, tok):
    net = _build("hf", tiny_bert, tok)
    html_path, json_path = attribution_report(net, tok, [SHORT, LONG], "attr", LABELS, n_steps=8)
    page = html_path.read_text(encoding="utf-8")
    assert "http" not in page and "<script" not in page
    assert "attention is not explanation" in page.lower()
    assert html.escape(LONG) in page and "<b>save</b>" not in page
    for t in tok.convert_ids_to_tokens(tok(LONG)["input_ids"]):
        assert html.escape(t.removeprefix("##")) in page
    data = json.loads(json_path.read_text())
    assert [t["text"] for t in data["texts"]] == [SHORT, LONG]
    assert {"tokens", "scores", "target", "target_label", "probability", "delta"} <= set(data["texts"][0])


def test_wordpiece_pieces_are_joined_in_the_html(tmp_path):
    tokens = ["[CLS]", "gri", "##pp", "##ing", "film", "[SEP]"]
    attr = TokenAttribution("gripping film", tokens, [0.0, 0.5, -0.5, 0.1, 0.7, 0.0], 1, "positive", 0.9, 0.0)
    page = attributions_html([attr], tmp_path / "a.html").read_text(encoding="utf-8")
    visible = re.sub(r"<[^>]+>", "", page.split('class="tokens">')[1].split("</div>")[0])
    assert visible == "[CLS] gripping film [SEP]"
    assert "rgba(22,163,74" in page and "rgba(220,38,38" in page  # positive green, negative red


# ---- reliability diagram ------------------------------------------------------------------------------
def test_reliability_diagram_shows_under_confidence_as_a_gap_up_to_accuracy():
    """An under-confident model (confidence 0.6-0.7, every answer right) draws its gap from the bin's
    mean confidence up to its accuracy, labelled under-confident; nothing is labelled over-confident."""
    from encoderlab.analysis.figures import UNDER_CONFIDENT, reliability_figure
    from encoderlab.analysis.report import expected_calibration_error

    top = np.array([0.62, 0.64, 0.66, 0.68, 0.61, 0.69])
    probs = np.stack([top, 1 - top], axis=1)  # class 0 is predicted, and right
    ece, bins = expected_calibration_error(np.zeros(len(top), dtype=int), probs, n_bins=10)
    assert ece > 0.3
    fig, artists = reliability_figure(bins, ece)
    try:
        assert "over" not in artists
        under = artists["under"]
        assert under.get_label() == UNDER_CONFIDENT
        filled = [b for b in bins if b["count"]]
        assert len(under.patches) == len(filled)
        for patch, b in zip(under.patches, filled, strict=True):
            assert b["accuracy"] > b["confidence"]
            assert patch.get_y() == pytest.approx(b["confidence"])  # starts at the confidence ...
            assert patch.get_y() + patch.get_height() == pytest.approx(b["accuracy"])  # ... up to accuracy
            assert patch.get_height() > 0
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert UNDER_CONFIDENT in legend and "mean confidence in the bin" in legend
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_reliability_diagram_shows_over_confidence_from_accuracy_up_to_confidence():
    from encoderlab.analysis.figures import OVER_CONFIDENT, reliability_figure
    from encoderlab.analysis.report import expected_calibration_error

    probs = np.tile([0.95, 0.05], (10, 1))
    y = np.array([0] * 5 + [1] * 5)  # half right at confidence 0.95
    ece, bins = expected_calibration_error(y, probs, n_bins=10)
    fig, artists = reliability_figure(bins, ece)
    try:
        assert "under" not in artists and artists["over"].get_label() == OVER_CONFIDENT
        (patch,) = artists["over"].patches
        assert patch.get_y() == pytest.approx(0.5) and patch.get_y() + patch.get_height() == pytest.approx(
            0.95
        )
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ---- analyze: probes skipped at no cost, progress bars, wall times -----------------------------------
def _analysis(**over):
    from omegaconf import OmegaConf

    from encoderlab.config import AnalysisConfig, ProbesConfig

    cfg = OmegaConf.structured(AnalysisConfig)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    sentiment = OmegaConf.load(conf_dir() / "probes" / "sentiment_basic.yaml")
    return cfg, OmegaConf.merge(OmegaConf.structured(ProbesConfig), sentiment)


def _frame(labels: list[str], n: int = 40):
    from encoderlab.analysis.report import predictions_frame

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(labels)), size=n)
    return predictions_frame([f"text {i}" for i in range(n)], rng.integers(0, len(labels), n), probs, labels)


def test_probe_suites_for_other_labels_cost_no_prediction_and_one_log_line(
    tiny_bert, tok, tmp_path, monkeypatch, caplog
):
    import logging

    from encoderlab.analysis import analyze as analyze_module

    def no_prediction(*args, **kwargs):
        raise AssertionError("a skipped probe suite must not run the model")

    monkeypatch.setattr(analyze_module, "predict_proba", no_prediction)
    labels = ["ABBR", "DESC", "ENTY"]  # TREC-like: none of the sentiment suites fits
    analysis, probes = _analysis()
    with caplog.at_level(logging.INFO):
        logged = analyze_module.analyze(
            _build("hf", tiny_bert, tok),
            tok,
            _frame(labels),
            labels,
            analysis,
            probes,
            tmp_path,
            progress=False,
        )
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1, skipped
    assert "5 of 5" in skipped[0] and "ABBR, DESC, ENTY" in skipped[0]
    assert not any(k.startswith("probes/") for k in logged)
    results = json.loads((tmp_path / "probes" / "results.json").read_text())
    assert set(results["skipped"]) == {
        "basic",
        "negation",
        "intensifiers_positive",
        "intensifiers_negative",
        "typos",
    }


@pytest.mark.parametrize("progress", [True, False])
def test_analysis_stages_show_progress_unless_disabled_and_report_wall_times(
    progress, tiny_bert, tok, tmp_path, capsys, caplog
):
    import logging

    from encoderlab.analysis.analyze import analyze

    analysis, probes = _analysis(
        **{"attention.enabled": True, "attention.n_examples": 2, "mc_dropout.passes": 2}
    )
    with caplog.at_level(logging.INFO):
        logged = analyze(
            _build("hf", tiny_bert, tok),
            tok,
            _frame(LABELS),
            LABELS,
            analysis,
            probes,
            tmp_path,
            progress=progress,
        )
    err = capsys.readouterr().err
    for bar in ("Report figures", "MC dropout (2 passes", "Probes", "Attention maps"):
        assert (bar in err) is progress, bar
    for stage in ("report", "mc_dropout", "probes", "attention", "html"):
        assert logged[f"analysis/{stage}_seconds"] >= 0
        assert any(r.getMessage().startswith(f"Analysis {stage.replace('_', ' ')}: ") for r in caplog.records)
    assert logged["analysis/total_seconds"] >= logged["analysis/report_seconds"]
