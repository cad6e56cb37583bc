"""k-fold cross-validation (dataset.cv): the folds, the errors, `train -m` over folds and the table."""

from __future__ import annotations

import io
from collections import Counter

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from encoderlab.data.splits import prepare_splits
from encoderlab.errors import ConfigError, EncoderlabError
from encoderlab.results_table import group_runs, render, varying_keys
from encoderlab.validate import validate_config
from helpers import FAST, all_runs
from test_data import _csv_files, col, decoded, local_cfg, synthetic

COUNTS = {"a": 203, "b": 101, "c": 47}  # 351 rows, no class a multiple of 5


def _raw(**extra: dict) -> DatasetDict:
    return DatasetDict(
        train=Dataset.from_dict(synthetic(COUNTS)),
        **{k: Dataset.from_dict(v) for k, v in extra.items()},
    )


def _fold(fold: int, *overrides: str, raw: DatasetDict | None = None, folds: int = 5):
    raw = raw or _raw(test=synthetic({"a": 4, "b": 4, "c": 4}, prefix="test"))
    cfg = local_cfg(
        f"dataset.cv.folds={folds}", f"dataset.cv.fold={fold}", "dataset.test_split=test", *overrides
    )
    return prepare_splits(raw, cfg)


def test_folds_are_disjoint_cover_train_and_are_stratified():
    outs = [_fold(i) for i in range(5)]
    held_out = [col(o.splits["validation"], "text") for o in outs]
    every_train_row = sorted(synthetic(COUNTS)["text"])
    # each fold's validation is disjoint from its train, and together they are the whole train split
    for o, val in zip(outs, held_out, strict=True):
        assert not set(val) & set(col(o.splits["train"], "text"))
        assert sorted(val + col(o.splits["train"], "text")) == every_train_row
    # the held-out folds are disjoint and cover the train split once
    assert sorted(t for val in held_out for t in val) == every_train_row
    # stratified: per class, fold sizes differ by at most one row
    for label in COUNTS:
        sizes = [Counter(decoded(o.splits["validation"], o.label_names))[label] for o in outs]
        assert max(sizes) - min(sizes) <= 1, (label, sizes)
        assert sum(sizes) == COUNTS[label]
    # labels travel with their rows
    o = outs[2]
    pairs = zip(held_out[2], decoded(o.splits["validation"], o.label_names), strict=True)
    assert all(t.split("|")[0] == y for t, y in pairs)
    assert o.cv == (2, 5) and any(n.startswith("fold 2/5: ") for n in o.notes)


def test_folds_are_seeded_by_split_seed():
    def fold0(seed: int) -> list[str]:
        return col(_fold(0, f"dataset.split_seed={seed}").splits["validation"], "text")

    assert fold0(7) == fold0(7)
    assert set(fold0(7)) != set(fold0(8))


def test_the_test_split_is_untouched_and_a_given_validation_split_unused():
    test = synthetic({"a": 4, "b": 4, "c": 4}, prefix="test")
    val = synthetic({"a": 3, "b": 3, "c": 3}, prefix="val")
    raw = _raw(test=test, validation=val)
    out = _fold(1, "dataset.validation_split=validation", raw=raw)
    assert col(out.splits["test"], "text") == test["text"] and out.test_source == "test"
    assert not out.test_is_validation
    assert not set(val["text"]) & set(col(out.splits["validation"], "text"))  # the fold, not the split
    assert any("validation split 'validation' unused" in n for n in out.notes)


def test_a_carved_test_split_is_out_of_every_fold():
    raw = _raw()
    outs = [
        prepare_splits(raw, local_cfg("dataset.cv.folds=3", f"dataset.cv.fold={i}", "dataset.test_size=51"))
        for i in range(3)
    ]
    test = col(outs[0].splits["test"], "text")
    assert len(test) == 51 and all(col(o.splits["test"], "text") == test for o in outs)
    held_out = [t for o in outs for t in col(o.splits["validation"], "text")]
    assert sorted(held_out + test) == sorted(synthetic(COUNTS)["text"])  # folds cover train minus test


def test_caps_apply_to_the_fold_after_it_is_made():
    full, capped = _fold(3), _fold(3, "dataset.max_train_samples=100", "dataset.max_eval_samples=20")
    assert len(capped.splits["train"]) == 100 and len(capped.splits["validation"]) == 20
    assert set(col(capped.splits["validation"], "text")) <= set(col(full.splits["validation"], "text"))
    assert set(col(capped.splits["train"], "text")) <= set(col(full.splits["train"], "text"))


def test_a_class_with_fewer_rows_than_folds_is_an_error_naming_it():
    raw = DatasetDict(
        train=Dataset.from_dict(synthetic({"a": 40, "b": 40, "c": 3})),
        test=Dataset.from_dict(synthetic({"a": 2, "b": 2, "c": 2}, prefix="test")),
    )
    with pytest.raises(EncoderlabError, match=r"class\(es\) 'c' \(3\).*dataset.min_class_count=5"):
        _fold(0, raw=raw)
    out = _fold(0, "dataset.min_class_count=5", raw=raw)  # the way out the message names
    assert out.label_names == ["a", "b"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset.cv.folds=1"], r"'dataset.cv.folds': 1. Allowed: null .* or an integer >= 2"),
        (
            ["dataset.cv.folds=5", "dataset.cv.fold=5"],
            r"'dataset.cv.fold': 5. Allowed: an integer in \[0, 5\)",
        ),
        (["dataset.cv.folds=5", "dataset.cv.fold=-1"], r"'dataset.cv.fold': -1"),
        (["dataset.cv.fold=2"], r"dataset.cv.fold=2 is set but dataset.cv.folds is not"),
        # sst2 has no labelled test split: testing would fall back on the held-out fold
        (["dataset.cv.folds=5"], r"dataset.test_size .* or dataset.test_split=<a labelled split>"),
    ],
)
def test_bad_cv_settings_are_config_errors(overrides, message):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from encoderlab.config import conf_dir, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=sst2_minilm", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_no_test_split_is_an_error_in_prepare_splits_too():
    """Configs that bypass validate_config (an older run's config) still never test on the fold."""
    cfg = local_cfg("dataset.cv.folds=3")  # one file: no test split, no test_size
    with pytest.raises(ConfigError, match="the test stage would report on the held-out fold"):
        prepare_splits(_raw(), cfg)


def test_bad_cv_input_through_the_cli_exits_cleanly_and_leaves_no_running_run(cli, tmp_path, mlflow_client):
    files = _csv_files(
        tmp_path,
        train=synthetic({"a": 30, "b": 30, "c": 3}),
        test=synthetic({"a": 3, "b": 3, "c": 3}, prefix="test"),
    )
    common = ["dataset=csv", f"dataset.data_files={files}", "model=scratch_tiny", *FAST]
    res = cli("train", *common, "dataset.cv.folds=5", "dataset.cv.fold=7")
    assert res.code == 2 and "'dataset.cv.fold': 7" in res.err and "Traceback" not in res.err
    assert all_runs(mlflow_client) == []  # refused before a run starts
    res = cli("train", *common, "dataset.cv.folds=5")
    assert res.code == 1 and "class(es) 'c' (3)" in res.err and "Traceback" not in res.err
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FAILED" and "dataset.cv.folds=5" in run.data.tags["encoderlab.error"]


# ---- the results table ---------------------------------------------------------------------------


def _frame(models: list[str], seeds: list[int], folds: int | None) -> pd.DataFrame:
    rows = []
    for m, model in enumerate(models):
        for s in seeds:
            for f in range(folds or 1):
                rows.append(
                    {
                        "run_id": f"{model}-{s}-{f}",
                        "params.seed": str(s),
                        "params.model": model,
                        "params.dataset.cv.folds": str(folds),
                        "params.dataset.cv.fold": str(f),
                        "metrics.test/accuracy": 0.5 + 0.1 * m + 0.01 * f + 0.001 * s,
                    }
                )
    return pd.DataFrame(rows)


def test_table_units_are_folds_and_seeds():
    frame = _frame(["x", "y"], [1, 2], folds=3)
    assert varying_keys(frame) == ["model"]  # the fold, like the seed, is not a factor
    x, y = group_runs(frame, ["test/accuracy"], ["model"])
    assert x.n == 6 and x.units[:4] == ["seed=1/fold=0", "seed=1/fold=1", "seed=1/fold=2", "seed=2/fold=0"]
    assert x.values["test/accuracy"]["seed=2/fold=1"] == pytest.approx(0.512)
    assert set(x.units) == set(y.units)  # the stats helper pairs groups on shared units
    table = pd.read_csv(io.StringIO(render([x, y], ["test/accuracy"], "csv")))
    assert table["n"].tolist() == [6, 6] and table["n counts"].tolist() == ["3 folds × 2 seeds"] * 2
    # folds are a factor: 3 vs 5 folds of the same model are two groups
    both = pd.concat([_frame(["x"], [1], folds=3), _frame(["x"], [1], folds=5)], ignore_index=True)
    assert varying_keys(both) == ["dataset.cv.folds"]


def test_table_without_cv_keeps_its_columns():
    frame = _frame(["x", "y"], [1, 2, 3], folds=None)
    x, _ = group_runs(frame, ["test/accuracy"], varying_keys(frame))
    assert x.units == ["seed=1", "seed=2", "seed=3"] and x.n == 3
    header = render([x], ["test/accuracy"], "markdown").splitlines()[0]
    assert header.startswith("| group | n | test/accuracy (mean ± std) | test/accuracy 95% CI")
    assert "n counts" not in header


# ---- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_m_over_folds_gives_child_runs_and_a_table_over_folds(cli, tiny_bert, mlflow_client):
    res = cli(
        "train",
        "-m",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.test_split=validation",  # GLUE's test labels are hidden: its validation split tests
        "dataset.cv.folds=3",
        "dataset.cv.fold=range(0,3)",
        "seed=1,2",
        "trainer.max_steps=2",
        "analysis=none",
        "probes=none",
        "num_threads=1",
        *FAST,
    )
    assert res.code == 0, res.err
    runs = all_runs(mlflow_client)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 7 and len(children) == 6 and all(r.info.status == "FINISHED" for r in runs)
    got = {(c.data.params["seed"], c.data.params["dataset.cv.fold"]) for c in children}
    assert got == {(s, f) for s in ("1", "2") for f in ("0", "1", "2")}
    assert {c.data.params["dataset.cv.folds"] for c in children} == {"3"}
    for c in children:
        assert c.info.run_name.split("-")[-2] == f"fold{c.data.params['dataset.cv.fold']}"
        # 600 train rows: 400 train / 200 validation per fold; the test split is GLUE's validation
        m = c.data.metrics
        assert (m["data/train_rows"], m["data/validation_rows"], m["data/test_rows"]) == (400, 200, 120)
        assert c.data.tags["encoderlab.test_split"] == "validation"
    assert "Cross-validation fold 0/3: 400 train / 200 validation" in res.out + res.err

    def table(*args: str) -> pd.DataFrame:
        out = cli("table", "--metrics", "test/accuracy", "--format", "csv", *args)
        assert out.code == 0, out.err
        return pd.read_csv(io.StringIO(out.out))

    one_seed = table("--experiment", "sst2_minilm", "--filter", "params.seed = '1'")
    assert one_seed["group"].tolist() == ["all runs"] and one_seed["n"].tolist() == [3]
    assert one_seed["n counts"].tolist() == ["3 folds"]
    both = table()  # the most recent sweep: folds × seeds
    assert both["n"].tolist() == [6] and both["n counts"].tolist() == ["3 folds × 2 seeds"]
    accs = [c.data.metrics["test/accuracy"] for c in children]
    mean = float(both["test/accuracy (mean ± std)"][0].split(" ± ")[0])
    assert mean == pytest.approx(sum(accs) / 6, abs=1e-4)
