"""bench/run.py: its GPU case at tiny sizes on CPU (the code path a GPU run takes: random bert-base-style
weights, synthetic IMDb-length reviews, HF Trainer recipes up to its best settings against encoderlab, MFU
and the fraction of the measured matmul peak), so a lent GPU finds a bench that works; and the matmul
microbenchmark the fractions are measured against."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from encoderlab.inference import cpu_supports_bf16

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def _bench_module():
    """bench/run.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_bench_case_runs_end_to_end_and_reports_speedups_and_mfu(isolated):
    out = isolated / "speed.json"
    cmd = [sys.executable, str(BENCH), "--cases", "gpu_bert_base", "--quick", "--peak-tflops", "1.0"]
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    results = json.loads(out.read_text())
    case = results["cases"]["gpu_bert_base"]
    runs = case["runs"]
    # torch_compile needs CUDA here: on a CPU its row is skipped and says so
    assert set(runs) == {
        "hf_padmax_bs8",
        "hf_dynpad_bs8",
        "hf_dynpad_bs8_bf16",
        "hf_best_bs8",
        "encoderlab",
        "encoderlab_adamw",
    }
    assert "hf_best_compile_bs8" in case["skipped_runs"]
    # the same rows on both sides; padding to 512 wastes what length-grouped batches do not
    assert len({r["train_samples"] for r in runs.values()}) == 1
    assert runs["encoderlab"]["padding_fraction"] < runs["hf_dynpad_bs8"]["padding_fraction"]
    assert runs["hf_dynpad_bs8"]["padding_fraction"] < runs["hf_padmax_bs8"]["padding_fraction"]
    # the HF best recipe pads per batch (its length groups need more rows than --quick has), in bf16
    # where the CPU has it
    assert runs["hf_best_bs8"]["padding_fraction"] < runs["hf_padmax_bs8"]["padding_fraction"]
    assert runs["hf_best_bs8"]["precision"] == ("bf16" if cpu_supports_bf16() else "32")
    peak = results["machine"]["matmul_peak"]
    for label, r in runs.items():
        assert 0 < r["mfu"] < 1 and r["model_tflops_per_second"] > 0, label
        dtype = "bf16" if "bf16" in str(r["precision"]) else "fp32"
        assert r["fraction_of_matmul_peak"] == pytest.approx(
            r["model_gflops_per_second"] / peak[dtype]["large"]
        ), label
        assert r["fraction_of_matmul_peak_at_run_shapes"] > 0, label
    el, best = runs["encoderlab"], runs["hf_best_bs8"]
    assert case["hf_best_run"] == "hf_best_bs8"
    assert case["speedup_vs_hf_best"] == pytest.approx(
        el["train_samples_per_second"] / best["train_samples_per_second"]
    )
    assert case["val_acc_delta_vs_hf_best"] == pytest.approx(el["val_accuracy"] - best["val_accuracy"])
    # the headline trains every weight with the lazy optimizer; plain AdamW is a labelled variant
    assert "optimizer=lazy_adamw" in case["command"] and "freeze_embeddings" not in case["command"]
    assert "optimizer=" not in case["commands"]["encoderlab_adamw"]
    ratio = el["train_samples_per_second"] / runs["hf_dynpad_bs8_bf16"]["train_samples_per_second"]
    assert abs(case["speedup_vs_hf_bf16_bs8"] - ratio) < 1e-9
    assert case["targets"]["speedup_vs_hf_best"] == 1.3
    assert case["targets"]["speedup_vs_hf_bf16_bs8"] == 1.3 and case["peak_bf16_tflops"] == 1.0
    table = out.with_suffix(".md").read_text()
    assert "| gpu_bert_base | **speed-up** | **" in table and "x vs HF best** (hf_best_bs8)" in table
    assert "| gpu_bert_base | **vs HF bf16** |" in table and "MFU" in table


def test_matmul_peak_is_measured_per_dtype_at_large_and_run_shapes():
    """The GEMM worker, in its own process as the bench runs it: GFLOP/s for fp32 (and bf16 where the CPU
    runs it natively) at the large shape and every run shape asked for."""
    run = _bench_module()
    shapes = run.run_shapes({"hidden": 32, "intermediate": 64, "layers": 1}, 16)
    peak = run._spawn("gemm", {"large": 128, "shapes": shapes, "repeats": 2})
    assert set(peak) >= ({"fp32", "bf16"} if cpu_supports_bf16() else {"fp32"})
    for dtype in ("fp32", "bf16"):
        if dtype in peak:
            assert peak[dtype]["large"] == peak[dtype]["128x128x128"] > 0
            assert all(peak[dtype]["x".join(map(str, s))] > 0 for s in shapes)


def test_fraction_of_matmul_peak_uses_the_dtype_each_row_trained_in():
    run = _bench_module()
    dims = {"hidden": 4, "intermediate": 8, "layers": 1}
    per_shape = {
        "x".join(map(str, s)): g for s, g in zip(run.run_shapes(dims, 2), (10.0, 20.0, 40.0), strict=True)
    }
    peak = {"fp32": {"large": 100.0, **per_shape}, "bf16": {"large": 400.0, **per_shape}}
    case = {
        "model_dims": dims,
        "matmul_m": 2,
        "runs": {
            "hf_dynpad_bs8": {"model_gflops_per_second": 50.0, "precision": "32"},
            "hf_best_bs8": {"model_gflops_per_second": 100.0, "precision": "bf16"},
            "encoderlab": {"model_gflops_per_second": 200.0, "precision": "bf16-mixed"},
        },
    }
    run.attach_matmul_fractions(case, peak)
    rows = case["runs"]
    assert rows["hf_dynpad_bs8"]["fraction_of_matmul_peak"] == pytest.approx(0.5)
    assert rows["hf_best_bs8"]["fraction_of_matmul_peak"] == pytest.approx(0.25)
    assert rows["encoderlab"]["fraction_of_matmul_peak"] == pytest.approx(0.5)
    # run shapes: Q/K/V/O 4 x 2*2*4*4 FLOPs at 10, FFN up and down 2*2*4*8 each at 20 and 40 GFLOP/s
    flops, seconds = 4 * 64 + 128 + 128, 4 * 64 / 10 + 128 / 20 + 128 / 40
    assert case["matmul_peak_gflops_at_run_shapes"]["fp32"] == pytest.approx(flops / seconds, abs=0.01)
    assert rows["hf_dynpad_bs8"]["fraction_of_matmul_peak_at_run_shapes"] == pytest.approx(
        50 / (flops / seconds)
    )
