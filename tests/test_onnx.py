"""ONNX export with its parity check, and `encoderlab predict --backend onnxruntime`, on a trained
from-scratch run (quickstart, shrunk) and on the tiny BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import FAST, SCRATCH_SMALL, isolate

LABELS = ["negative", "positive"]
# lengths from one token to past max_length (64 for both models): sorted batches hold different lengths
TEXTS = [
    "Good.",
    "The film was far too long and the jokes fell flat.",
    "Bad",
    "A warm, funny and surprisingly moving story; the cast is wonderful and the ending earned. " * 6,
    "I would not watch it again.",
    "Great acting, weak plot, lovely music, and a finale that almost saves it.",
    "Meh!",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert, tiny_mirror, session_cache) -> dict[str, Path]:
    """family -> an exported model directory (save_pretrained files + model.onnx + model_quantized.onnx):
    a from-scratch encoder trained by `encoderlab train experiment=quickstart`, and the tiny BERT."""
    from encoderlab.cli import main
    from encoderlab.models.trained import write_metadata
    from encoderlab.onnx_export import export_onnx

    workdir = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, workdir, tiny_mirror, session_cache)
        args = ["train", "experiment=quickstart", *SCRATCH_SMALL, "trainer.max_epochs=1", "analysis=none"]
        assert main([*args, *FAST, "logger=none"]) == 0
    (run_dir,) = (workdir / "outputs" / "runs").glob("*/*")
    bert = workdir / "bert"
    shutil.copytree(tiny_bert, bert)
    write_metadata(bert, LABELS, 64, "hf")
    dirs = {"scratch": workdir / "scratch_export", "hf": bert}
    shutil.copytree(run_dir / "model", dirs["scratch"])
    for directory in dirs.values():
        export_onnx(directory, directory, quantize="int8")
    return dirs


@pytest.mark.slow  # the module's fixture trains a scratch run and exports two models
@pytest.mark.parametrize("family", ["scratch", "hf"])
def test_export_reports_parity_under_tolerance_with_dynamic_axes(models, family):
    import onnx
    from transformers import AutoTokenizer

    directory = models[family]
    report = json.loads((directory / "onnx_parity.json").read_text())
    assert report["family"] == family and report["tolerance"] == 1e-3 and report["texts"] >= 12
    fp32, int8 = report["files"]["model.onnx"], report["files"]["model_quantized.onnx"]
    assert fp32["passed"] and fp32["max_abs_logit_diff"] <= 1e-3 and fp32["label_agreement"] == 1.0
    assert int8["passed"] and int8["label_agreement"] >= 0.9 and int8["max_abs_logit_diff"] > 0
    assert not list(directory.glob(".onnx-export-*"))  # no temporary leftovers

    graph = onnx.load(directory / "model.onnx")
    tokenizer_inputs = [
        k for k in AutoTokenizer.from_pretrained(directory)(["x"]) if k != "special_tokens_mask"
    ]
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input
    }
    assert set(inputs) == set(tokenizer_inputs) & {"input_ids", "attention_mask", "token_type_ids"}
    assert all(dims == ["batch", "sequence"] for dims in inputs.values())
    assert [o.name for o in graph.graph.output] == ["logits"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["scratch", "hf"])
def test_predict_onnxruntime_gives_torch_probabilities(cli, models, family, isolated):
    def predict(*options: str) -> pd.DataFrame:
        out = isolated / f"{len(options)}-{'-'.join(options)}.csv"
        res = cli("predict", str(models[family]), *TEXTS, "--batch-size", "3", "--output", str(out), *options)
        assert res.code == 0, res.err
        return pd.read_csv(out)

    torch_ = predict("--precision", "32")
    onnx_ = predict("--backend", "onnxruntime")
    int8 = predict("--backend", "onnxruntime", "--quantized")
    probs = [f"prob_{n}" for n in LABELS]
    assert onnx_["text"].tolist() == TEXTS  # input order kept across the length-sorted batches (3, 3, 1)
    np.testing.assert_allclose(onnx_[probs].to_numpy(), torch_[probs].to_numpy(), atol=1e-4, rtol=0)
    assert onnx_["label"].tolist() == torch_["label"].tolist()
    np.testing.assert_allclose(int8[probs].to_numpy(), torch_[probs].to_numpy(), atol=0.05, rtol=0)


def test_export_failing_its_parity_check_writes_no_graph(tiny_bert, isolated):
    from encoderlab.errors import EncoderlabError
    from encoderlab.onnx_export import export_onnx

    out = isolated / "export"
    with pytest.raises(EncoderlabError) as err:
        export_onnx(tiny_bert, out, tolerance=1e-30, texts=["Good.", "Not good at all."])
    message = str(err.value)
    assert "parity check" in message and "above the tolerance 1e-30" in message and "2 texts" in message
    assert not list(out.rglob("*.onnx")) and not list(out.iterdir())  # no graph, no temporary directory


def test_unknown_quantize_value_is_refused_naming_the_allowed_ones(tiny_bert, isolated):
    from encoderlab.errors import EncoderlabError
    from encoderlab.onnx_export import export_onnx

    with pytest.raises(EncoderlabError, match=r"quantize='int4' is not supported\. Allowed: int8"):
        export_onnx(tiny_bert, isolated / "export", quantize="int4")
    assert not (isolated / "export").exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--backend", "onnxruntime"], ["has no model.onnx", "encoderlab export {bert} --format onnx`"]),
        (["--backend", "onnxruntime", "--quantized"], ["has no model_quantized.onnx", "--quantize int8"]),
        (["--backend", "onnxruntime", "--mc-dropout", "5"], ["--mc-dropout 5 needs --backend torch"]),
        (["--backend", "onnxruntime", "--precision", "bf16"], ["--precision bf16", "fp32 graph"]),
        (["--quantized"], ["use it with --backend onnxruntime"]),
    ],
)
def test_onnxruntime_predict_errors_are_one_clear_line(cli, tiny_bert, options, expected):
    res = cli("predict", str(tiny_bert), "Good.", *options)
    assert res.code == 1 and res.out == ""
    assert res.err.count("error:") == 1 and "Traceback" not in res.err, res.err
    line = next(x for x in res.err.splitlines() if x.startswith("error:"))
    assert all(e.format(bert=tiny_bert) in line for e in expected), line
