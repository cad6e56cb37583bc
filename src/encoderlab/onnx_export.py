"""ONNX export of a trained model, checked against PyTorch at export time, and an ONNX Runtime adapter.

`export_onnx(model_dir, out_dir)` writes `out_dir/model.onnx` (fp32, dynamic batch and sequence axes,
inputs named as the tokenizer names them, output `logits`), optionally `model_quantized.onnx` (int8
dynamic quantization), and `onnx_parity.json`: ONNX Runtime and PyTorch fp32 run the same held-out texts
(batch size 1 and padded batches, lengths up to the model's max_length) and the largest |logit
difference| is reported. A graph whose difference exceeds its check is not written.

`OnnxClassifier` wraps an InferenceSession as a batch -> logits module, so `inference.predict_proba`
serves ONNX Runtime with the same batched, length-sorted inference as PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
PARITY_FILE = "onnx_parity.json"
QUANTIZE_CHOICES = ("int8",)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # the order the graph takes them in
OPSET = 17
# int8 weights move logits by far more than fp32 rounding does: the quantized graph is checked on the
# share of texts whose label agrees with PyTorch fp32, not on a logit tolerance
INT8_MIN_AGREEMENT = 0.9

# held-out texts for the parity check: short, medium and long (the long ones reach max_length once
# tokenized), positive, negative and neutral, punctuation and digits
_BASE_TEXTS = [
    "Good.",
    "Awful!",
    "It was fine, I guess.",
    "The acting was superb and the story kept me hooked until the very last minute.",
    "I want those two hours of my life back; the plot made no sense at all.",
    "Not bad, not great: a 6/10 film with a few memorable scenes and a weak ending.",
    "What a waste of a talented cast.",
    "A quiet, moving portrait of a family that I will remember for years.",
    "The sound mix was off, the subtitles lagged and the projector broke twice.",
    "Honestly? I laughed, I cried, I bought the soundtrack.",
    "Question: is it worth watching? Answer: only if you enjoy slow, beautiful cinema.",
    "Meh",
]
_LONG = (
    "The film opens with a long, patient shot of the harbour at dawn, and for the first twenty minutes "
    "almost nothing happens, which some viewers will love and others will find unbearable. The lead "
    "performance is restrained, the score is sparse, and the editing trusts the audience. "
)


def parity_texts() -> list[str]:
    """The built-in held-out texts: the base set plus three long texts that fill max_length."""
    return _BASE_TEXTS + [_LONG * 6, "Terrible. " + _LONG * 8, _LONG * 3 + " Wonderful!"]


class _Positional(nn.Module):
    """The batch-dict model as a module of positional tensors, the form torch.onnx.export traces."""

    def __init__(self, net: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.net, self.names = net, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.net(dict(zip(self.names, tensors, strict=True)))


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session as a batch -> logits module (CPU; fp32 logits as a torch tensor).
    It has no dropout to switch on: Monte-Carlo dropout needs the PyTorch backend."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {}
        for name in self.input_names:
            if name in batch:
                feed[name] = batch[name].detach().cpu().numpy().astype(np.int64, copy=False)
            elif name == "token_type_ids":  # a graph exported with segment ids, fed single texts
                feed[name] = np.zeros_like(feed["input_ids"])
            else:
                raise EncoderlabError(
                    f"ONNX graph {self.path} takes input '{name}', which the tokenizer did not produce "
                    f"(it produced {', '.join(batch)}). Re-export the model with its own tokenizer."
                )
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def make_session(path: Path, threads: int | None = None):
    """An InferenceSession on the CPU with `threads` intra-op threads (default: torch's thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about every initializer it folds
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as ex:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EncoderlabError(f"ONNX Runtime could not load {path}: {str(ex).strip()}") from ex


def onnx_file(model_dir: Path, quantized: bool = False, source: str = "<source>") -> Path:
    """The graph file of a model directory; a clear error naming the export command when it is absent."""
    name = QUANTIZED_FILE if quantized else ONNX_FILE
    path = Path(model_dir) / name
    if not path.is_file():
        how = f"encoderlab export {source} --format onnx" + (" --quantize int8" if quantized else "")
        raise EncoderlabError(
            f"Model directory {model_dir} has no {name}, which --backend onnxruntime"
            f"{' --quantized' if quantized else ''} needs. Export it first with `{how}` (the same model "
            "source: run id, run directory or model directory), then predict from the exported directory."
        )
    return path


def _check_quantize(quantize: str | None) -> None:
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise EncoderlabError(
            f"quantize={quantize!r} is not supported. Allowed: {', '.join(QUANTIZE_CHOICES)} (ONNX Runtime "
            "dynamic quantization, int8 weights), or none for the fp32 graph only."
        )


def _batches(n: int) -> list[list[int]]:
    """Every text alone (batch size 1), then padded batches of up to 8 mixing short and long texts."""
    singles = [[i] for i in range(n)]
    mixed = list(range(0, n, 2)) + list(range(1, n, 2))  # interleave, so each batch needs padding
    return singles + [mixed[i : i + 8] for i in range(0, n, 8)]


def _encode(tokenizer, texts: list[str], names: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: enc[k] for k in names}


def _compare(net: nn.Module, session, tokenizer, texts: list[str], names: list[str], max_length: int) -> dict:
    """Max |logit difference| and label agreement of an ORT session vs PyTorch over `_batches`."""
    worst, agree, labelled = 0.0, 0, 0
    for idx in _batches(len(texts)):
        batch = _encode(tokenizer, [texts[i] for i in idx], names, max_length)
        with torch.inference_mode():
            ref = net(batch).float().numpy()
        got = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
        if len(idx) == 1:  # label agreement once per text
            agree += int(ref.argmax(-1)[0] == got.argmax(-1)[0])
            labelled += 1
    return {"max_abs_logit_diff": worst, "label_agreement": agree / max(labelled, 1)}


def export_onnx(
    model_dir: Path,
    out_dir: Path,
    *,
    quantize: str | None = None,
    texts: list[str] | None = None,
    tolerance: float = 1e-3,
) -> dict:
    """Export the model in `model_dir` to `out_dir/model.onnx` (+ `model_quantized.onnx` with
    quantize="int8"), check it against PyTorch fp32 with ONNX Runtime, write `out_dir/onnx_parity.json`
    and return that report. Raises EncoderlabError, writing no failed graph, when fp32 logits differ by
    more than `tolerance` or int8 labels agree on fewer than INT8_MIN_AGREEMENT of the texts."""
    _check_quantize(quantize)
    if tolerance <= 0:
        raise EncoderlabError(f"The ONNX parity tolerance must be > 0, got {tolerance}.")
    from encoderlab.errors import require_extra

    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
        require_extra(module, package, "onnx", "ONNX export")
    from encoderlab.models.trained import load_model

    start = time.perf_counter()
    loaded = load_model(str(model_dir))
    texts = list(texts) if texts else parity_texts()
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise EncoderlabError("ONNX parity texts must be non-empty strings.")
    probe = loaded.tokenizer(["a b", "a"], padding=True)
    names = [k for k in INPUT_NAMES if k in probe]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "family": loaded.family,
        "inputs": names,
        "output": "logits",
        "opset": OPSET,
        "exporter": f"torch.onnx.export (TorchScript), torch {torch.__version__}",
        "max_length": loaded.max_length,
        "texts": len(texts),
        "batches": "each text alone, then padded batches of up to 8",
        "tolerance": tolerance,
        "files": {},
    }
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-export-") as work:
        work = Path(work)
        graph = _export(loaded, names, work / ONNX_FILE)
        import onnxruntime as ort

        report["onnxruntime"] = ort.__version__
        fp32 = _compare(loaded.net, make_session(graph), loaded.tokenizer, texts, names, loaded.max_length)
        fp32["check"] = f"max |logit difference| <= {tolerance:g}"
        fp32["passed"] = fp32["max_abs_logit_diff"] <= tolerance
        report["files"][ONNX_FILE] = fp32
        log.info(
            "ONNX fp32 parity on %d texts: max |logit difference| %.3g",
            len(texts),
            fp32["max_abs_logit_diff"],
        )
        if not fp32["passed"]:
            raise EncoderlabError(
                f"ONNX export of {model_dir} failed its parity check: on {len(texts)} texts ONNX Runtime's "
                f"logits differ from PyTorch fp32 by up to {fp32['max_abs_logit_diff']:.3g}, above the "
                f"tolerance {tolerance:g}. No graph was written. Raise the tolerance only if that difference "
                "is acceptable for your use."
            )
        quantized = None
        if quantize == "int8":
            quantized = _quantize(graph, work / QUANTIZED_FILE)
            int8 = _compare(
                loaded.net, make_session(quantized), loaded.tokenizer, texts, names, loaded.max_length
            )
            int8["check"] = f"labels agree with PyTorch fp32 on >= {INT8_MIN_AGREEMENT:.0%} of the texts"
            int8["passed"] = int8["label_agreement"] >= INT8_MIN_AGREEMENT
            report["files"][QUANTIZED_FILE] = int8
        shutil.move(graph, out_dir / ONNX_FILE)  # fp32 passed: it is kept even if int8 fails below
        fp32["written"] = True
        if quantized is not None and not report["files"][QUANTIZED_FILE]["passed"]:
            int8 = report["files"][QUANTIZED_FILE]
            int8["written"] = False
            _write_report(report, start, out_dir)
            raise EncoderlabError(
                f"int8 quantization of {model_dir} failed its check: its labels agree with PyTorch fp32 on "
                f"{int8['label_agreement']:.0%} of {len(texts)} texts (max |logit difference| "
                f"{int8['max_abs_logit_diff']:.3g}); at least {INT8_MIN_AGREEMENT:.0%} is required. "
                f"{ONNX_FILE} (fp32) was written; {QUANTIZED_FILE} was not. Use the fp32 graph."
            )
        if quantized is not None:
            shutil.move(quantized, out_dir / QUANTIZED_FILE)
            report["files"][QUANTIZED_FILE]["written"] = True
    return _write_report(report, start, out_dir)


def _write_report(report: dict, start: float, out_dir: Path) -> dict:
    report["seconds"] = round(time.perf_counter() - start, 2)
    (out_dir / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _export(loaded, names: list[str], path: Path) -> Path:
    """torch.onnx.export with dynamic batch and sequence axes. The TorchScript exporter: it traces both
    families in seconds, where the dynamo exporter takes tens of seconds for the same graph (both pass the
    parity check). Tracing runs Python branches once, so the example batch is padded (a real attention
    mask) and the parity check covers batch size 1 and padded batches."""
    example = _encode(loaded.tokenizer, ["a short one", "a longer example text with padding"], names, 32)
    wrapper = _Positional(loaded.net, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as chatter:
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes
        try:
            torch.onnx.export(
                wrapper,
                tuple(example[k] for k in names),
                str(path),
                input_names=names,
                output_names=["logits"],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except Exception as ex:
            log.debug("torch.onnx.export output:\n%s", chatter.getvalue())
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
            raise EncoderlabError(
                f"torch.onnx.export could not export the {loaded.family} model in {loaded.directory}: "
                f"{type(ex).__name__}: {first}"
            ) from ex
    return path


def _quantize(graph: Path, path: Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights, one scale per output channel (per-tensor scales
    changed 4% of a MiniLM SST-2 model's labels, per-channel 1.5%), activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor it skips on the root logger
    try:
        quantize_dynamic(str(graph), str(path), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return path
