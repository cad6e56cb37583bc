"""Bad input gets one clear paragraph on stderr (the key, column, value or row, and what is allowed),
a non-zero exit code, and never an MLflow run left RUNNING."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import FAST, all_runs


def train(cli, *args: str):
    return cli("train", "experiment=sst2_minilm", *FAST, "trainer.fast_dev_run=true", *args)


def error_paragraph(res) -> str:
    """The one `error: ...` paragraph on stderr (log lines may surround it), and no traceback."""
    lines = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.err
    # In-process only: a library's log handler created during an earlier test still points at that
    # test's closed capture stream, and `logging` reports it with a "--- Logging error ---" traceback.
    err = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", res.err, flags=re.S)
    assert "Traceback" not in err, res.err
    return lines[0]


def assert_mentions(text: str, *words: str) -> None:
    for word in words:
        assert word in text, f"{word!r} missing from: {text}"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, migrated once (creating the tables costs seconds per store)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store, isolated):
    """A client on ./outputs/mlflow.db, the store `encoderlab train` writes to by default."""
    from mlflow.tracking import MlflowClient

    (isolated / "outputs").mkdir()
    shutil.copy(empty_store, isolated / "outputs" / "mlflow.db")
    return MlflowClient(f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}")


def assert_failed_run(store, *reason: str) -> None:
    """Exactly one run, marked FAILED, with the reason in its `encoderlab.error` tag."""
    runs = all_runs(store)
    assert [r.info.status for r in runs] == ["FAILED"], [(r.info.run_id, r.info.status) for r in runs]
    assert_mentions(runs[0].data.tags.get("encoderlab.error", ""), *reason)


def assert_no_run_started(isolated: Path) -> None:
    assert not (isolated / "outputs" / "mlflow.db").exists(), "a tracking store was opened"


# ---- config errors: caught before anything heavy runs ---------------------------------------------

COMPOSITION_ERRORS = {
    "unknown_key": (
        ["model.foo=1"],
        ["'model.foo'", "unknown key", "Keys allowed in model", "name_or_path", "dropout"],
    ),
    "str_for_float": (["optimizer.lr=abc"], ["'optimizer.lr'", "'abc'", "float"]),
    "float_for_int": (["trainer.max_epochs=1.5"], ["'trainer.max_epochs'", "1.5", "int"]),
    "unknown_dataset": (
        ["dataset=nope"],
        ["dataset/nope", "Available options", "sst2", "imdb", "trec", "parquet"],
    ),
}


@pytest.mark.parametrize("case", COMPOSITION_ERRORS)
def test_composition_errors_exit_2(cli, tiny_bert, isolated, case):
    overrides, words = COMPOSITION_ERRORS[case]
    res = train(cli, f"model.name_or_path={tiny_bert}", *overrides)
    assert res.code == 2, res.err
    assert_mentions(error_paragraph(res), "Config error", *words)
    assert_no_run_started(isolated)


VALIDATION_ERRORS = {
    "appended_unknown_key": (
        ["+model.foo=1"],
        ["'model.foo'", "unknown key", "Keys allowed in model", "name_or_path"],
    ),
    "precision": (["trainer.precision=17"], ["'trainer.precision'", "17", "Allowed", "32", "bf16-mixed"]),
    "scheduler": (["scheduler.decay=step"], ["'scheduler.decay'", "'step'", "linear, cosine, constant"]),
    "word_dropout": (["dataset.word_dropout=1.0"], ["'dataset.word_dropout'", "1.0", "[0, 1)"]),
    "tokenizer_kind": (["tokenizer.kind=chars"], ["'tokenizer.kind'", "'chars'", "wordpiece", "wordlevel"]),
}


@pytest.mark.parametrize("case", VALIDATION_ERRORS)
def test_disallowed_values_are_rejected_before_the_run(cli, tiny_bert, isolated, case):
    overrides, words = VALIDATION_ERRORS[case]
    res = train(cli, f"model.name_or_path={tiny_bert}", *overrides)
    assert res.code == 2  # config errors, like composition errors
    assert_mentions(error_paragraph(res), "Config error", *words)
    assert_no_run_started(isolated)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optimizer.lr=abc", ["'optimizer.lr'", "abc"]),
        ("trainer.precision=17", ["trainer.precision", "bf16-mixed"]),
        ("model=scratch_tiny model.n_heads=5", ["model.n_heads=5", "must divide model.d_model=128"]),
        ("model=scratch_tiny model.pooling=sum", ["'model.pooling'", "'sum'", "cls, mean, max"]),
    ],
)
def test_config_error_exits_2_without_importing_torch_or_lightning(tmp_path, override, words):
    code = (
        f"import sys; from encoderlab.cli import main; rc = main(['train', *{override.split()!r}]); "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules; sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert_mentions(res.stderr, "error: Config error", *words)
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


RENAMED = "Config error: 'model.max_len' was renamed to 'model.max_positions'; use model.max_positions=64."


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.max_len=64", RENAMED),
        ("+model.max_len=64", RENAMED),  # appended past the schema: caught by the key check
        (
            "model.attention=sdpa",
            "Config error: 'model.attention' was renamed to 'model.attn_implementation'; "
            "use model.attn_implementation=sdpa.",
        ),
        (
            "model.attention=explicit",  # the old value has a new name too: list the allowed ones
            "Config error: 'model.attention' was renamed to 'model.attn_implementation'; "
            "use model.attn_implementation (auto, sdpa, eager).",
        ),
    ],
)
def test_renamed_keys_name_their_new_key(cli, isolated, override, message):
    res = cli("train", "model=scratch_tiny", override)
    assert res.code == 2, res.err
    assert error_paragraph(res) == f"error: {message}"
    assert_no_run_started(isolated)


def test_renamed_key_in_a_yaml_file_names_the_new_key(cli, isolated):
    (isolated / "conf" / "experiment").mkdir(parents=True)
    (isolated / "conf" / "experiment" / "old.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: scratch_tiny\nmodel:\n  max_len: 64\n"
    )
    res = cli("train", "--config-dir", str(isolated / "conf"), "experiment=old")
    assert res.code == 2, res.err
    assert_mentions(error_paragraph(res), "'model.max_len' was renamed to 'model.max_positions'")
    assert_no_run_started(isolated)


# ---- data and model errors: raised after the run started, so the run is FAILED ----------------------


def test_missing_text_column_lists_the_columns(cli, tiny_bert, store):
    res = train(cli, f"model.name_or_path={tiny_bert}", "dataset.text_field=nope")
    assert res.code != 0
    words = ["Column 'nope'", "dataset.text_field", "'train' split", "sst2", "sentence, label, idx"]
    assert_mentions(error_paragraph(res), *words)
    assert_failed_run(store, "Column 'nope'", "sentence, label, idx")


def test_label_outside_label_names_names_the_row_and_value(cli, tiny_bert, tiny_mirror, store):
    labels = pd.read_parquet(tiny_mirror / "trec" / "train.parquet")["coarse_label"].tolist()
    row = labels.index("NUM") + 1  # rows are counted from 1
    res = train(
        cli, f"model.name_or_path={tiny_bert}", "dataset=trec", "dataset.label_names=[ABBR,ENTY,DESC,HUM,LOC]"
    )
    assert res.code != 0
    message = error_paragraph(res)
    assert_mentions(message, f"Row {row} ", "'train' split", "'NUM'", "coarse_label", "'ABBR'", "'LOC'")
    assert_mentions(message, "dataset.label_names")
    assert_failed_run(store, f"Row {row} ", "'NUM'")


def test_empty_train_split_says_so(cli, tiny_bert, store, isolated):
    empty = pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype="int64")})
    empty.to_parquet(isolated / "empty.parquet", index=False)
    pd.DataFrame({"text": ["fine", "bad"], "label": [1, 0]}).to_parquet(
        isolated / "test.parquet", index=False
    )
    res = train(
        cli,
        f"model.name_or_path={tiny_bert}",
        "dataset=parquet",
        "dataset.data_files={train: empty.parquet, test: test.parquet}",
        "dataset.test_split=test",
    )
    assert res.code != 0
    runs = all_runs(store)
    assert [r.info.status for r in runs] == ["FAILED"]
    message = error_paragraph(res)
    assert "empty" in message or "no rows" in message, message
    assert_mentions(message, "'train'", "local_parquet")
    assert_failed_run(store, "'train'")


def test_nonexistent_model_dir(cli, store, isolated):
    missing = isolated / "no_such_model"
    res = train(cli, f"model.name_or_path={missing}")
    assert res.code != 0
    message = error_paragraph(res)
    assert_mentions(message, "model.name_or_path", str(missing), "does not exist", "save_pretrained")
    assert all_runs(store) == []  # checked before the run opens


def test_model_dir_with_garbage_config(cli, store, isolated):
    broken = isolated / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not json")
    res = train(cli, f"model.name_or_path={broken}")
    assert res.code != 0
    message = error_paragraph(res)
    assert_mentions(message, "model.name_or_path", str(broken), "config.json is not readable JSON")
    assert all_runs(store) == []  # checked before the run opens
