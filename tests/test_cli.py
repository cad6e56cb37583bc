"""The command line: help without heavy imports, config printing for every preset, Hydra features."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import PRESETS


def test_presets_listed():
    assert {
        "imdb_bert",
        "sst2_bert",
        "imdb_balanced_bert",
        "amazon_bert",
        "sst2_minilm",
        "imdb_minilm",
        "trec_minilm",
        "amazon_reviews_minilm",
        "quickstart",
    } <= set(PRESETS)


def _run_without(argv: list[str], heavy: tuple[str, ...], cwd) -> subprocess.CompletedProcess:
    """`encoderlab <argv>` in a fresh interpreter that fails if any of `heavy` got imported."""
    code = (
        f"import sys; from encoderlab.cli import main; rc = main({argv!r});"
        f"heavy = [m for m in {heavy!r} if m in sys.modules];"
        "assert not heavy, heavy; sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return res


def test_help_answers_without_torch_or_lightning(tmp_path):
    res = _run_without(["--help"], ("torch", "lightning", "transformers", "datasets", "mlflow"), tmp_path)
    assert "encoderlab train" in res.stdout


def test_console_script_help(tmp_path):
    res = subprocess.run(["encoderlab", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and "usage: encoderlab" in res.stdout


def test_unknown_command(cli):
    res = cli("fly")
    assert res.code == 2 and "unknown command 'fly'" in res.err


def test_train_help_answers_from_the_config_files_without_heavy_imports(tmp_path):
    res = _run_without(
        ["train", "--help"], ("torch", "lightning", "transformers", "hydra", "mlflow"), tmp_path
    )
    assert "minilm*" in res.stdout
    assert "scratch_small" in res.stdout and "trec_scratch" in res.stdout


def test_train_help_full_is_hydras_with_the_composed_config(cli):
    res = cli("train", "--help-full")
    assert res.code == 0
    assert "Powered by Hydra" in res.out and "experiment_name: encoderlab" in res.out


def test_train_help_lists_config_groups(cli):
    res = cli("train", "--help")
    assert res.code == 0
    for group in (
        "model",
        "dataset",
        "trainer",
        "optimizer",
        "scheduler",
        "logger",
        "callbacks",
        "experiment",
    ):
        assert group in res.out


def test_evaluate_help_lists_its_keys_with_one_line_each(cli):
    res = cli("evaluate", "--help")
    assert res.code == 0
    lines = {line.split()[0]: line for line in res.out.splitlines() if line.startswith("  ") and "=" in line}
    for key in ("source", "split", "max_length", "device", "enable_progress_bar", "experiment_name", "seed"):
        (line,) = [v for k, v in lines.items() if k.startswith(key + "=")]
        assert len(line.split(maxsplit=1)) == 2, line  # key=default, then what it does
    assert "MLflow run id, run directory" in res.out and "split=test" in res.out
    assert "analysis:   full, none, report*" in res.out


def test_old_analysis_option_names_fail_with_the_available_ones(cli):
    res = cli("train", "analysis=default", "--cfg", "job")
    assert res.code == 2
    assert (
        "Could not find 'analysis/default'" in res.err and "Available options: full, none, report" in res.err
    )


def test_table_without_a_sweep_in_the_store_says_what_to_pass(cli, isolated):
    res = cli("table")
    assert res.code == 1 and "No MLflow store at" in res.err and "--experiment" in res.err
    assert not (isolated / "outputs").exists()  # looking did not create an empty store


@pytest.mark.parametrize("preset", PRESETS)
def test_cfg_job_prints_full_config_for_every_preset(cli, preset):
    res = cli("train", "--cfg", "job", f"experiment={preset}")
    assert res.code == 0, res.err
    cfg = yaml.safe_load(res.out)
    assert cfg["experiment_name"] == preset
    for section in ("model", "dataset", "trainer", "optimizer", "scheduler", "logger", "callbacks"):
        assert section in cfg
    assert cfg["model"]["_target_"].startswith("encoderlab.models.") and cfg["dataset"]["name"]
    if cfg["model"]["_target_"].endswith("ScratchEncoder"):  # trains its tokenizer on the train split
        assert cfg["model"]["d_model"] % cfg["model"]["n_heads"] == 0
        assert cfg["tokenizer"]["kind"] in ("wordpiece", "bpe", "wordlevel")
    else:
        assert cfg["model"]["name_or_path"]
    assert cfg["optimizer"]["lr"] > 0


def test_recipes_match_the_seed_notebooks(cli):
    imdb = yaml.safe_load(cli("train", "--cfg", "job", "experiment=imdb_bert").out)
    assert imdb["model"]["name_or_path"] == "bert-base-uncased"
    assert (
        imdb["dataset"]["max_length"],
        imdb["dataset"]["max_train_samples"],
        imdb["dataset"]["val_size"],
    ) == (256, 4000, 1000)
    assert imdb["dataset"]["max_test_samples"] == 2000 and imdb["dataset"]["split_seed"] != imdb["seed"]
    assert (imdb["optimizer"]["lr"], imdb["dataset"]["batch_size"], imdb["trainer"]["max_epochs"]) == (
        2e-5,
        8,
        2,
    )
    assert imdb["callbacks"]["checkpoint"]["monitor"] == "val/f1_macro"
    bal = yaml.safe_load(cli("train", "--cfg", "job", "experiment=imdb_balanced_bert").out)
    assert bal["dataset"]["samples_per_class"] == 500 and bal["dataset"]["max_length"] == 512
    assert bal["trainer"]["accumulate_grad_batches"] == 4 and bal["scheduler"]["warmup_ratio"] == 0.1
    assert bal["trainer"]["val_check_interval"] == 200  # batches: every 50 optimizer steps of 4 batches
    assert (
        bal["trainer"]["check_val_every_n_epoch"] is None
        and bal["callbacks"]["checkpoint"]["monitor"] == "val/f1"
    )
    amazon = yaml.safe_load(cli("train", "--cfg", "job", "experiment=amazon_bert").out)
    assert (
        amazon["dataset"]["text_field"] == ["title", "content"]
        and amazon["dataset"]["train_pool_size"] == 10000
    )
    assert amazon["scheduler"]["warmup_steps"] == 500 and amazon["trainer"]["max_epochs"] == 3
    minilm = yaml.safe_load(cli("train", "--cfg", "job", "experiment=sst2_minilm").out)
    assert minilm["model"]["name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm["trainer"]["val_check_interval"] == 50


def test_shell_style_overrides_and_search_path(cli, tmp_path):
    """Users add config dirs without forking: --config-dir (or hydra.searchpath) adds their options."""
    own = tmp_path / "my_conf" / "dataset"
    own.mkdir(parents=True)
    (own / "reviews.yaml").write_text(
        "defaults:\n  - csv\n  - _self_\nname: reviews\ndata_files: data/reviews.csv\n"
    )
    res = cli(
        "train",
        "--config-dir",
        str(tmp_path / "my_conf"),
        "--cfg",
        "job",
        "dataset=reviews",
        "optimizer.lr=3e-5",
        "dataset.text_field=[title,body]",
    )
    assert res.code == 0, res.err
    cfg = yaml.safe_load(res.out)
    assert cfg["dataset"]["name"] == "reviews" and cfg["dataset"]["path"] == "csv"
    assert cfg["dataset"]["text_field"] == ["title", "body"] and cfg["optimizer"]["lr"] == 3e-5
    res = cli("train", "--cfg", "job", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "dataset=reviews")
    assert res.code == 0, res.err
    assert yaml.safe_load(res.out)["dataset"]["name"] == "reviews"


def test_works_from_any_directory(tmp_path):
    """The packaged conf/ is found wherever the command runs."""
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(
        ["encoderlab", "train", "--cfg", "job", "experiment=trec_minilm"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["dataset"]["name"] == "trec"
    assert not (Path(elsewhere) / "conf").exists()
