"""The real offline mirror (ENCODERLAB_DATA_DIR at session start, ../shared/data in CI) loads through the
same load_dataset path users hit. Skipped without it."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from encoderlab.config import conf_dir, register_configs
from encoderlab.data.loading import load_raw_splits
from encoderlab.data.splits import prepare_splits
from encoderlab.paths import bundled_data_dir
from helpers import REAL_MIRROR

pytestmark = pytest.mark.mirror


def _dataset_cfg(*overrides: str):
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides)).dataset


@pytest.mark.parametrize(
    ("dataset", "sizes", "labels"),
    [
        ("sst2", {"train": 67349, "validation": 872}, ["negative", "positive"]),
        ("trec", {"train": 5452, "test": 500}, ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]),
        ("uci_sentences", {"train": 2400, "test": 600}, ["negative", "positive"]),
        ("amazon_reviews", {"train": 6400, "test": 1600}, ["negative", "positive"]),
    ],
)
def test_mirror_datasets_load_with_documented_counts(monkeypatch, dataset, sizes, labels):
    monkeypatch.setenv("ENCODERLAB_DATA_DIR", str(REAL_MIRROR))
    cfg = _dataset_cfg(f"dataset={dataset}")
    raw = load_raw_splits(cfg)
    assert {k: len(v) for k, v in raw.items() if k in sizes} == sizes
    prepared = prepare_splits(raw, cfg)
    assert prepared.label_names == labels
    split = prepared.splits["train"]
    assert set(split["labels"]) == set(range(len(labels)))


def test_trec_fine_takes_its_50_labels_from_the_data(monkeypatch):
    monkeypatch.setenv("ENCODERLAB_DATA_DIR", str(REAL_MIRROR))
    cfg = _dataset_cfg("dataset=trec_fine")
    prepared = prepare_splits(load_raw_splits(cfg), cfg)
    assert len(prepared.label_names) == 50 and "DESC:manner" in prepared.label_names
    assert len(prepared.splits["test"]) == 500


@pytest.mark.parametrize("split", ["train", "test"])
def test_bundled_quickstart_data_is_the_mirrors_uci_sentences(split):
    """The files shipped in the package are the mirror's, byte for byte (same split, same provenance)."""
    bundled = bundled_data_dir() / "uci_sentences" / f"{split}.parquet"
    assert bundled.read_bytes() == (REAL_MIRROR / "uci_sentences" / f"{split}.parquet").read_bytes()
