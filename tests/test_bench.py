"""bench/run.py's GPU case at tiny sizes on CPU: the code path a GPU run takes (random bert-base-style
weights, synthetic IMDb-length reviews, HF Trainer fp32 and bf16 against encoderlab, MFU), so a lent GPU
finds a bench that works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def test_gpu_bench_case_runs_end_to_end_and_reports_speedups_and_mfu(isolated):
    out = isolated / "speed.json"
    cmd = [sys.executable, str(BENCH), "--cases", "gpu_bert_base", "--quick", "--peak-tflops", "1.0"]
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    case = json.loads(out.read_text())["cases"]["gpu_bert_base"]
    runs = case["runs"]
    assert set(runs) == {"hf_padmax_bs8", "hf_dynpad_bs8", "hf_dynpad_bs8_bf16", "encoderlab"}
    # the same rows on both sides; padding to 512 wastes what length-grouped batches do not
    assert len({r["train_samples"] for r in runs.values()}) == 1
    assert runs["encoderlab"]["padding_fraction"] < runs["hf_dynpad_bs8"]["padding_fraction"]
    assert runs["hf_dynpad_bs8"]["padding_fraction"] < runs["hf_padmax_bs8"]["padding_fraction"]
    for label, r in runs.items():
        assert 0 < r["mfu"] < 1 and r["model_tflops_per_second"] > 0, label
    ratio = (
        runs["encoderlab"]["train_samples_per_second"]
        / runs["hf_dynpad_bs8_bf16"]["train_samples_per_second"]
    )
    assert abs(case["speedup_vs_hf_bf16_bs8"] - ratio) < 1e-9
    assert case["targets"]["speedup_vs_hf_bf16_bs8"] == 1.3 and case["peak_bf16_tflops"] == 1.0
    table = out.with_suffix(".md").read_text()
    assert "| gpu_bert_base | **vs HF bf16** |" in table and "MFU" in table
