"""The bad-input matrix: every way a user can hand encoderlab something wrong, in one table. Each case
runs the real command in-process and asserts the exit code (2: a config error, caught before anything
runs; 1: any other error, about data, model files or runs), the message's key words in one `error:`
paragraph with no traceback, and that no MLflow run is left RUNNING.

`ENCODERLAB_MATRIX=<file.md>` writes the table of cases, exit codes and messages to that file."""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest

from helpers import FAST, SCRATCH_SMALL, all_runs

TRAIN = ["train", *FAST, "num_threads=1", "trainer.fast_dev_run=true", "analysis=none"]
SCRATCH = [*TRAIN, "model=scratch_tiny", *SCRATCH_SMALL]
CSV = [*SCRATCH, "dataset=csv"]
HF = [*TRAIN, "model=hf", "dataset=csv", "dataset.data_files=good.csv"]
SST2 = [*TRAIN, "experiment=sst2_minilm", "model.name_or_path={bert}"]

GOOD = pd.DataFrame(
    {
        "text": [f"{w} film number {i}" for i, w in enumerate(["great", "awful"] * 15)],
        "label": [1, 0] * 15,
    }
)


def write_data(root: Path) -> None:
    """The small bad (and good) data files the cases point at, in the test's working directory."""
    GOOD.to_csv(root / "good.csv", index=False)
    GOOD.head(0).to_csv(root / "header_only.csv", index=False)
    with_nan = GOOD.copy()
    with_nan.loc[[2, 9], "text"] = None
    with_nan.to_csv(root / "nan_text.csv", index=False)
    blank = GOOD.copy()
    blank.loc[4, "text"] = "   "
    blank.to_csv(root / "blank_text.csv", index=False)
    no_label = GOOD.astype({"label": object})
    no_label.loc[6, "label"] = None
    no_label.to_csv(root / "nan_label.csv", index=False)
    strings = GOOD.assign(label=["pos", "neg"] * 14 + ["pos", "meh"])
    strings.to_csv(root / "str_labels.csv", index=False)
    GOOD.assign(label=1).to_csv(root / "one_class.csv", index=False)
    GOOD.head(1).to_csv(root / "one_row.csv", index=False)
    GOOD.rename(columns={"text": "review"}).to_csv(root / "review.csv", index=False)
    latin = "text,label\n" + "caf\xe9 au lait,1\n" + "".join(f"{t},{y}\n" for t, y in GOOD.values)
    (root / "latin1.csv").write_bytes(latin.encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"text": "na\xefve", "label": 1}\n'.encode("latin-1"))
    (root / "broken.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "cut off", "label": \n')
    GOOD.to_json(root / "good.jsonl", orient="records", lines=True)
    (root / "texts.xml").write_text("<texts/>")
    conf = root / "my_conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("# @package _global_\nmodel:\n  d_model: [32, 64\nseed: 3\n")
    sweeps = root / "sweeps"
    sweeps.mkdir()
    (sweeps / "broken.yaml").write_text("base:\n  - model=scratch_tiny\nstudy:\n  n_trials: [3\nparams: {}\n")
    (sweeps / "a_list.yaml").write_text("- model=scratch_tiny\n")
    (sweeps / "extra.yaml").write_text("base: []\nstudy: {}\nparams: {}\nsearch: {}\n")


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory, tiny_bert) -> Path:
    """Damaged copies of the tiny BERT: weights missing, weights truncated, config.json garbage, and a
    model whose embedding is smaller than its tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("bad_models")
    only_config = root / "only_config"
    only_config.mkdir()
    shutil.copy(tiny_bert / "config.json", only_config)
    truncated = shutil.copytree(tiny_bert, root / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    bad_header = shutil.copytree(tiny_bert, root / "bad_header")
    (bad_header / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    garbage = shutil.copytree(tiny_bert, root / "garbage_config")
    (garbage / "config.json").write_text("{this is not json")
    small = root / "small_embedding"
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertForSequenceClassification(config).save_pretrained(small)
    for f in tiny_bert.glob("*token*"):
        shutil.copy(f, small)
    return root


# (id, argv, exit code, key words of the message); {bert}: the tiny BERT, {bad}: the damaged models,
# {dir}: the test's working directory
CASES = [
    # ---- the command line
    ("unknown command", ["trian"], 2, ["unknown command 'trian'", "train", "evaluate"]),
    ("train: unknown flag", ["train", "--nope"], 2, ["unrecognized arguments: --nope"]),
    ("predict: no model", ["predict"], 2, ["required: model"]),
    ("table: unknown format", ["table", "--format", "xml"], 2, ["--format", "'xml'", "markdown"]),
    (
        "table: McNemar without a baseline",
        ["table", "--example-tests", "mcnemar"],
        2,
        ["--example-tests compares groups with a baseline", "--baseline"],
    ),
    ("table: unknown test", ["table", "--test", "ttest"], 2, ["--test", "'ttest'", "paired-t", "wilcoxon"]),
    ("malformed override", [*SST2, "optimizer.lr=[1e-3"], 2, ["could not parse the override"]),
    # ---- config: keys, types, values (exit 2, nothing opened)
    ("unknown key", [*SST2, "model.foo=1"], 2, ["unknown key 'model.foo'", "name_or_path"]),
    ("appended unknown key", [*SST2, "+dataset.foo=1"], 2, ["unknown key 'dataset.foo'", "val_size"]),
    ("typo in a trainer key", [*SST2, "+trainer.max_epoch=2"], 2, ["max_epoch", "Did you mean 'max_epochs'"]),
    (
        "strategy that pickles the run",
        [*SCRATCH, "trainer.strategy=ddp_spawn"],
        2,
        ["'trainer.strategy'", "ddp"],
    ),
    (
        "fsdp on CPU",
        [*SCRATCH, "trainer.strategy=fsdp", "trainer.accelerator=cpu"],
        2,
        ["fsdp", "GPUs only", "ddp_cpu"],
    ),
    (
        "renamed key",
        [*SCRATCH, "model.max_len=64"],
        2,
        ["'model.max_len' was renamed", "model.max_positions"],
    ),
    (
        "moved key: trainer.num_threads",
        [*SST2, "trainer.num_threads=1"],
        2,
        ["no longer a key", "num_threads=N"],
    ),
    (
        "moved key: val_every_n_steps",
        [*SST2, "trainer.val_every_n_steps=50"],
        2,
        ["'trainer.val_every_n_steps'", "trainer.val_check_interval=N"],
    ),
    ("moved key: optimizer.name", [*SST2, "optimizer.name=sgd"], 2, ["optimizer._target_=torch.optim.SGD"]),
    (
        "moved key under a missing one",
        [*SST2, "callbacks.early_stopping.enabled=true"],
        2,
        ["'callbacks.early_stopping.enabled'", "callbacks=early_stopping"],
    ),
    ("string for a float", [*SST2, "optimizer.lr=abc"], 2, ["'optimizer.lr'", "'abc'", "float"]),
    ("float for an int", [*SST2, "trainer.max_epochs=1.5"], 2, ["'trainer.max_epochs'", "1.5", "int"]),
    ("negative learning rate", [*SST2, "optimizer.lr=-0.1"], 2, ["'optimizer.lr'", "-0.1", "positive"]),
    ("unknown precision", [*SST2, "trainer.precision=17"], 2, ["'trainer.precision'", "bf16-mixed"]),
    ("unknown tokenizer kind", [*SST2, "tokenizer.kind=chars"], 2, ["'tokenizer.kind'", "wordlevel"]),
    ("max_epochs=0", [*SST2, "trainer.max_epochs=0"], 2, ["'trainer.max_epochs'", "untrained model"]),
    ("max_steps=0", [*SST2, "trainer.max_steps=0"], 2, ["'trainer.max_steps'", "-1 for no limit"]),
    ("val_size=1.5", [*SST2, "dataset.val_size=1.5"], 2, ["'dataset.val_size'", "1.5", "between 0 and 1"]),
    ("val_size=0", [*SST2, "dataset.val_size=0"], 2, ["'dataset.val_size'", "whole row count"]),
    ("test_size=-0.2", [*SST2, "dataset.test_size=-0.2"], 2, ["'dataset.test_size'", "-0.2"]),
    ("unknown encoding", [*SST2, "dataset.encoding=klingon"], 2, ["'dataset.encoding'", "latin-1"]),
    ("word_dropout=1", [*SST2, "dataset.word_dropout=1.0"], 2, ["'dataset.word_dropout'", "[0, 1)"]),
    ("unknown class_weights", [*SST2, "loss.class_weights=balanced"], 2, ["'loss.class_weights'", "auto"]),
    ("negative focal_gamma", [*SST2, "loss.focal_gamma=-1"], 2, ["'loss.focal_gamma'", "0 (off)"]),
    ("unknown sampler", [*SST2, "dataset.sampler=stratified"], 2, ["'dataset.sampler'", "balanced"]),
    (
        "balanced sampler with group_by_length",
        [*SST2, "dataset.sampler=balanced", "dataset.group_by_length=true"],
        2,
        ["dataset.sampler=balanced", "dataset.group_by_length=false"],
    ),
    (
        "class_weights of the wrong length",
        [*SST2, "loss.class_weights=[1.0,2.0,3.0]"],
        1,
        ["3 weights", "2 labels", "auto"],
    ),
    ("n_heads not dividing d_model", [*SCRATCH, "model.n_heads=5"], 2, ["model.n_heads=5", "must divide"]),
    (
        "max_positions under max_length",
        [*SCRATCH, "model.max_positions=16", "dataset.max_length=64"],
        2,
        ["'model.max_positions'", "dataset.max_length (64)"],
    ),
    ("unknown dataset", [*SST2, "dataset=nope"], 2, ["dataset/nope", "Available options", "sst2"]),
    ("unknown model", [*TRAIN, "model=gpt9"], 2, ["model/gpt9", "Available options", "minilm"]),
    ("unknown experiment", [*TRAIN, "experiment=nope"], 2, ["experiment/nope", "quickstart"]),
    ("hf model without a path", [*TRAIN, "model=hf"], 2, ["'model.name_or_path' is required"]),
    ("csv without data_files", [*SCRATCH, "dataset=csv"], 2, ["dataset.data_files", "is not set"]),
    (
        "files map without train",
        [*CSV, "dataset.data_files={{fit: good.csv}}"],
        2,
        ["no 'train' entry", "fit"],
    ),
    (
        "test file and test_size",
        [*CSV, "dataset.data_files={{train: good.csv, test: good.csv}}", "dataset.test_size=0.2"],
        2,
        ["'test' file", "dataset.test_size=0.2", "dataset.test_split=test"],
    ),
    (
        "malformed experiment YAML",
        ["train", "--config-dir", "{dir}/my_conf", *SCRATCH[1:], "experiment=broken"],
        2,
        ["my_conf/experiment/broken.yaml", "not valid YAML", "line 4", "starts at line 3"],
    ),
    # ---- data (exit 1; the run that opened is FAILED with the reason)
    ("missing data file", [*CSV, "dataset.data_files=nope.csv"], 1, ["Could not load dataset", "nope.csv"]),
    ("header-only file", [*CSV, "dataset.data_files=header_only.csv"], 1, ["header_only.csv", "empty"]),
    (
        "wrong text column",
        [*CSV, "dataset.data_files=review.csv"],
        1,
        ["Column 'text'", "dataset.text_field", "review, label"],
    ),
    (
        "wrong label column",
        [*CSV, "dataset.data_files=good.csv", "dataset.label_field=stars"],
        1,
        ["Column 'stars'", "dataset.label_field", "text, label"],
    ),
    (
        "NaN texts",
        [*CSV, "dataset.data_files=nan_text.csv"],
        1,
        ["2 of 30 rows", "nan_text.csv", "rows 3, 10", "header line not included", "dataset.drop_empty=true"],
    ),
    (
        "blank text",
        [*CSV, "dataset.data_files=blank_text.csv"],
        1,
        ["1 of 30 rows", "blank_text.csv", "row 5", "drop_empty"],
    ),
    (
        "NaN label",
        [*CSV, "dataset.data_files=nan_label.csv"],
        1,
        ["nan_label.csv", "no label in column 'label'", "row 7 ", "header line not included"],
    ),
    (
        "label outside label_names",
        [*CSV, "dataset.data_files=str_labels.csv", "dataset.label_names=[neg,pos]"],
        1,
        ["Row 30 ", "str_labels.csv", "'meh'", "['neg', 'pos']", "dataset.label_names"],
    ),
    (
        "single class",
        [*CSV, "dataset.data_files=one_class.csv"],
        1,
        ["one_class.csv", "only '1'", "at least 2 classes"],
    ),
    (
        "single class with label_names",
        [*CSV, "dataset.data_files=one_class.csv", "dataset.label_names=[neg,pos]"],
        1,
        ["only class 'pos'", "at least 2 classes", "neg, pos"],
    ),
    (
        "1-row file, val_size=0.1",
        [*CSV, "dataset.data_files=one_row.csv", "dataset.label_names=[neg,pos]"],
        1,
        ["one_row.csv", "has 1 row(s)", "validation split of 10%", "needs at least 6 rows"],
    ),
    (
        "val_size above the row count",
        [*CSV, "dataset.data_files=good.csv", "dataset.val_size=30"],
        1,
        ["dataset.val_size=30", "has 30 row(s)", "at least one for training"],
    ),
    (
        "non-UTF-8 csv",
        [*CSV, "dataset.data_files=latin1.csv"],
        1,
        ["latin1.csv", "not valid utf-8", "byte offset 14", "line 2", "dataset.encoding=latin-1"],
    ),
    (
        "non-UTF-8 jsonl",
        [*SCRATCH, "dataset=jsonl", "dataset.data_files=latin1.jsonl"],
        1,
        ["latin1.jsonl", "byte 0xef", "byte offset 12", "dataset.encoding"],
    ),
    (
        "malformed jsonl",
        [*SCRATCH, "dataset=jsonl", "dataset.data_files=broken.jsonl"],
        1,
        ["Could not load dataset 'local_jsonl'", "JSON parse error"],
    ),
    # ---- model files and limits (exit 1; caught before the run opens)
    (
        "model dir does not exist",
        [*HF, "model.name_or_path=./no_such_model"],
        1,
        ["no_such_model", "does not exist", "save_pretrained"],
    ),
    (
        "model dir with only config.json",
        [*HF, "model.name_or_path={bad}/only_config"],
        1,
        ["only_config", "no weights", "model.safetensors"],
    ),
    (
        "truncated safetensors",
        [*HF, "model.name_or_path={bad}/truncated"],
        1,
        ["truncated/model.safetensors", "is damaged", "truncated"],
    ),
    (
        "safetensors header past the end",
        [*HF, "model.name_or_path={bad}/bad_header"],
        1,
        ["bad_header/model.safetensors", "header claims 1000000000 bytes"],
    ),
    (
        "garbage config.json",
        [*HF, "model.name_or_path={bad}/garbage_config"],
        1,
        ["garbage_config", "config.json is not readable JSON"],
    ),
    (
        "max_length over the positions",
        [*HF, "model.name_or_path={bert}", "dataset.max_length=1024"],
        1,
        ["dataset.max_length=1024", "512 positions", "dataset.max_length=512 or less"],
    ),
    (
        "tokenizer larger than the embedding",
        [*HF, "model.name_or_path={bad}/small_embedding"],
        1,
        ["tokenizer has", "embedding has 50 rows", "ids 50.."],
    ),
    # ---- sweeps
    ("sweep: no name", ["sweep", "n_trials=2"], 2, ["'sweep' is required"]),
    ("sweep: unknown name", ["sweep", "sweep=nope"], 2, ["no search space 'sweep=nope'", "trec_scratch"]),
    (
        "sweep: malformed YAML",
        ["sweep", "sweep=broken"],
        2,
        ["sweeps/broken.yaml", "not valid YAML", "line 5", "starts at line 4"],
    ),
    ("sweep: not a mapping", ["sweep", "sweep=a_list"], 2, ["a_list.yaml", "must be a mapping", "list"]),
    ("sweep: unknown section", ["sweep", "sweep=extra"], 2, ["extra.yaml", "unknown section(s) search"]),
    # ---- predict / evaluate / reproduce sources
    ("predict: no such source", ["predict", "no_such_dir", "good"], 1, ["'no_such_dir'", "run id"]),
    (
        "predict: unknown run id",
        ["predict", "0123456789abcdef0123456789abcdef", "good"],
        1,
        ["No MLflow run with id 0123456789abcdef0123456789abcdef"],
    ),
    (
        "predict: model with only config.json",
        ["predict", "{bad}/only_config", "good"],
        1,
        ["only_config", "no weights"],
    ),
    ("predict: truncated safetensors", ["predict", "{bad}/truncated", "good"], 1, ["truncated"]),
    (
        "predict: threshold over 1",
        ["predict", "{bert}", "--threshold", "2", "good"],
        1,
        ["--threshold", "[0, 1]"],
    ),
    ("predict: empty text", ["predict", "{bert}", "   "], 1, ["1 empty text(s)", "item 1"]),
    (
        "predict: missing file",
        ["predict", "{bert}", "--file", "nope.csv"],
        1,
        ["--file nope.csv", "no such file"],
    ),
    ("predict: unknown file type", ["predict", "{bert}", "--file", "texts.xml"], 1, ["'.xml'", ".jsonl"]),
    (
        "predict: missing column",
        ["predict", "{bert}", "--file", "good.csv", "--column", "review"],
        1,
        ["no column 'review'", "text, label", "--column"],
    ),
    (
        "predict: unregistered model",
        ["predict", "models:/no-such-model/1", "good"],
        1,
        ["models:/no-such-model/1 could not be found", "version (or alias)"],
    ),
    (
        "predict: models:/ without a version",
        ["predict", "models:/sst2", "good"],
        1,
        ["models:/<name>@<alias>"],
    ),
    (
        "predict: onnxruntime without a graph",
        ["predict", "{bert}", "--backend", "onnxruntime", "good"],
        1,
        ["model.onnx", "encoderlab export", "--format onnx"],
    ),
    (
        "register_model with log_model=false",
        [*SCRATCH, "logger.register_model=m", "logger.log_model=false"],
        2,
        ["logger.register_model='m'", "logger.log_model=false"],
    ),
    (
        "register_model with a slash",
        [*SCRATCH, "logger.register_model=team/model"],
        2,
        ["'logger.register_model'", "no '/' or ':'"],
    ),
    ("evaluate: no source", ["evaluate", "dataset=sst2"], 2, ["'source' is required"]),
    (
        "evaluate: truncated model",
        ["evaluate", "source={bad}/truncated", "dataset=sst2"],
        1,
        ["truncated/model.safetensors", "is damaged"],
    ),
    ("reproduce: unknown run", ["reproduce", "0123456789abcdef0123456789abcdef"], 1, ["No MLflow run"]),
]


@pytest.fixture(scope="module")
def matrix_rows() -> list[tuple[str, int, str, str]]:
    rows: list[tuple[str, int, str, str]] = []
    yield rows
    target = os.environ.get("ENCODERLAB_MATRIX")
    if target and rows:
        tmp = re.compile(r"/\S*?/pytest-\d+/[^/\s]+")  # the test's own directory, not the user's
        lines = [
            "# Bad inputs: exit code, MLflow runs opened (and how they ended), the error's first paragraph",
            "",
            "Written by `ENCODERLAB_MATRIX=docs/bad-inputs.md python -m pytest tests/test_bad_inputs.py`;",
            "`<tmp>` is the test's working directory. No case leaves a run RUNNING (each test asserts it).",
            "",
            "| case | exit | MLflow runs | message |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {case} | {code} | {runs} | {tmp.sub('<tmp>', message).replace('|', '/')} |"
            for case, code, message, runs in rows
        ]
        Path(target).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite store (creating the tables costs seconds per store)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("matrix_store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def test_the_bad_input_matrix_covers_40_cases():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "argv", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    cli, isolated, tiny_bert, bad_models, empty_store_file, matrix_rows, case, argv, code, words
):
    from mlflow.tracking import MlflowClient

    write_data(isolated)
    (isolated / "outputs").mkdir()
    shutil.copy(empty_store_file, isolated / "outputs" / "mlflow.db")
    argv = [a.format(bert=tiny_bert, bad=bad_models, dir=isolated) for a in argv]
    res = cli(*argv)

    # In-process only: a library's log handler left from an earlier test points at a closed capture
    # stream, and `logging` reports that with its own "--- Logging error ---" traceback.
    err = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", res.err, flags=re.S)
    errors = [line for line in err.splitlines() if "error: " in line]
    assert errors, res.err
    assert errors[0].startswith(("error: ", "encoderlab ")), res.err  # argparse: "encoderlab <cmd>: error:"
    message = errors[0].split("error: ", 1)[1]
    runs = all_runs(MlflowClient(f"sqlite:///{isolated / 'outputs' / 'mlflow.db'}"))
    matrix_rows.append((case, res.code, message, ", ".join(r.info.status for r in runs) or "none"))
    assert res.code == code, res.err
    assert "Traceback" not in err and "Error executing job" not in err, res.err
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    if code == 2:  # a config error stops before any run opens
        assert runs == []
    for run in runs:  # a run that did open ended FAILED, with the reason
        assert run.info.status == "FAILED"
        assert message[:60] in run.data.tags.get("encoderlab.error", "")
