"""The data layer on real `datasets` objects: split building, label mapping, text joining, subsetting,
tokenization caching, dynamic padding and length-grouped batching.

Dataset configs are composed through Hydra exactly as `encoderlab train` composes them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from encoderlab.config import conf_dir, register_configs
from encoderlab.data.loading import load_raw_splits
from encoderlab.data.sampler import LengthGroupedBatchSampler
from encoderlab.data.splits import prepare_splits
from encoderlab.errors import EncoderlabError

# ---- helpers ------------------------------------------------------------------------------------


def dataset_cfg(*overrides: str):
    """cfg.dataset of `encoderlab train <overrides>`, composed the real way (schema included)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return cfg.dataset


def local_cfg(*overrides: str):
    """A local-files dataset config for in-memory data handed straight to prepare_splits."""
    return dataset_cfg("dataset=parquet", "dataset.data_files=unused.parquet", *overrides)


def prepared(*overrides: str):
    """Load through the offline mirror and build the splits, as the data module does."""
    cfg = dataset_cfg(*overrides)
    return prepare_splits(load_raw_splits(cfg), cfg)


def col(ds: Dataset, name: str) -> list:
    """A column as a plain list (datasets returns a lazy Column)."""
    return list(ds[name])


def decoded(ds: Dataset, names: list[str]) -> list[str]:
    return [names[i] for i in col(ds, "labels")]


def synthetic(counts: dict[str, int], prefix: str = "train", seed: int = 0) -> dict[str, list]:
    """Rows whose text names their class and a unique row id ("c|train-17 ..."), with varied lengths."""
    rng = np.random.default_rng(seed)
    rows = [(label, i) for label, n in counts.items() for i in range(n)]
    order = rng.permutation(len(rows))
    texts, labels = [], []
    for k in order:
        label, i = rows[k]
        texts.append(f"{label}|{prefix}-{i} " + "word " * int(rng.integers(1, 30)))
        labels.append(label)
    return {"text": texts, "label": labels}


def class_of(text: str) -> str:
    return text.split("|", 1)[0]


IMBALANCED = {"a": 500, "b": 300, "c": 150, "d": 50}


# ---- carving validation from train --------------------------------------------------------------


@pytest.mark.parametrize("val_size, n_val", [(0.1, 100), (137, 137), (0.25, 250)])
def test_validation_carved_from_train_is_stratified_disjoint_and_exact(val_size, n_val):
    raw = DatasetDict(train=Dataset.from_dict(synthetic(IMBALANCED)))
    out = prepare_splits(raw, local_cfg(f"dataset.val_size={val_size}"))
    train, val = out.splits["train"], out.splits["validation"]

    assert len(val) == n_val and len(train) == 1000 - n_val
    # disjoint, and together exactly the source rows
    assert not set(col(train, "text")) & set(col(val, "text"))
    assert sorted(col(train, "text") + col(val, "text")) == sorted(col(raw["train"], "text"))
    # stratified: every class keeps its share of the validation rows, within one row
    val_counts = Counter(decoded(val, out.label_names))
    for label, n in IMBALANCED.items():
        assert abs(val_counts[label] - n * n_val / 1000) < 1, (label, val_counts)
    # labels survive the carve
    assert all(class_of(t) == y for t, y in zip(col(val, "text"), decoded(val, out.label_names), strict=True))
    assert out.test_is_validation and col(out.splits["test"], "text") == col(val, "text")
    assert any("carved" in note for note in out.notes)


def test_carve_is_reproducible_for_a_split_seed_and_changes_with_it():
    raw = DatasetDict(train=Dataset.from_dict(synthetic(IMBALANCED)))

    def val_texts(seed: int) -> list[str]:
        out = prepare_splits(raw, local_cfg("dataset.val_size=0.1", f"dataset.split_seed={seed}"))
        return col(out.splits["validation"], "text")

    first, again, other = val_texts(7), val_texts(7), val_texts(8)
    assert first == again
    assert set(first) != set(other)


def test_carve_from_the_imdb_mirror_keeps_test_and_class_balance():
    out = prepared("dataset=imdb", "dataset.val_size=200")
    sizes = {k: len(v) for k, v in out.splits.items()}
    assert sizes == {"train": 1200, "validation": 200, "test": 200}
    assert out.label_names == ["negative", "positive"] and not out.test_is_validation
    raw_share = np.mean(col(load_raw_splits(dataset_cfg("dataset=imdb"))["train"], "label"))
    assert abs(np.sum(col(out.splits["validation"], "labels")) - raw_share * 200) < 1


def test_val_size_larger_than_train_is_an_error():
    raw = DatasetDict(train=Dataset.from_dict(synthetic({"a": 5, "b": 5})))
    with pytest.raises(EncoderlabError, match=r"dataset.val_size=.*10 "):
        prepare_splits(raw, local_cfg("dataset.val_size=10"))


# ---- balanced sampling and rare classes ---------------------------------------------------------


def test_samples_per_class_gives_exactly_n_per_class():
    raw = DatasetDict(
        train=Dataset.from_dict(synthetic(IMBALANCED)),
        validation=Dataset.from_dict(synthetic({"a": 10, "b": 10, "c": 10, "d": 10}, "val")),
    )
    out = prepare_splits(
        raw, local_cfg("dataset.samples_per_class=40", "dataset.validation_split=validation")
    )
    train = out.splits["train"]
    assert Counter(decoded(train, out.label_names)) == {"a": 40, "b": 40, "c": 40, "d": 40}
    assert all(
        class_of(t) == y for t, y in zip(col(train, "text"), decoded(train, out.label_names), strict=True)
    )
    assert len(out.splits["validation"]) == 40  # a given validation split is not subsampled
    # classes not sorted into contiguous blocks (the balanced pool is shuffled)
    assert decoded(train, out.label_names)[:40] != ["a"] * 40


def test_samples_per_class_keeps_every_row_of_a_smaller_class_and_says_so():
    raw = DatasetDict(
        train=Dataset.from_dict(synthetic({"a": 100, "b": 12})),
        validation=Dataset.from_dict(synthetic({"a": 3, "b": 3}, "val")),
    )
    out = prepare_splits(
        raw, local_cfg("dataset.samples_per_class=30", "dataset.validation_split=validation")
    )
    assert Counter(decoded(out.splits["train"], out.label_names)) == {"a": 30, "b": 12}
    assert any("'b' has 12 train rows" in note for note in out.notes)


def test_samples_per_class_on_the_imdb_mirror_then_carve():
    """The imdb_balanced recipe: N per class drawn first, then a stratified validation carved from them."""
    out = prepared("dataset=imdb", "dataset.samples_per_class=150", "dataset.val_size=0.2")
    train, val = out.splits["train"], out.splits["validation"]
    both = Counter(decoded(train, out.label_names) + decoded(val, out.label_names))
    assert both == {"negative": 150, "positive": 150}
    assert Counter(decoded(val, out.label_names)) == {"negative": 30, "positive": 30}


def _write_parquet(path, data: dict[str, list]) -> str:
    pd.DataFrame(data).to_parquet(path, index=False)
    return path.name


def test_min_class_count_drops_rare_classes_everywhere_and_reindexes(tmp_path):
    train = synthetic({"a": 60, "b": 4, "c": 40, "d": 2})
    test = synthetic({"a": 5, "b": 5, "c": 5, "d": 5}, "test")
    files = (
        f"{{train: {_write_parquet(tmp_path / 'train.parquet', train)}, "
        f"test: {_write_parquet(tmp_path / 'test.parquet', test)}}}"
    )
    common = ("dataset=parquet", f"dataset.data_files={files}", "dataset.test_split=test")

    before = prepared(*common)
    assert before.label_names == ["a", "b", "c", "d"] and len(before.splits["test"]) == 20

    out = prepared(*common, "dataset.min_class_count=5")
    assert out.label_names == ["a", "c"]
    for split in ("train", "validation", "test"):
        ds = out.splits[split]
        assert set(col(ds, "labels")) == {0, 1}, split  # consecutive ids, 'c' moved from 2 to 1
        assert all(
            class_of(t) == y for t, y in zip(col(ds, "text"), decoded(ds, out.label_names), strict=True)
        )
    assert len(out.splits["train"]) + len(out.splits["validation"]) == 100
    assert Counter(decoded(out.splits["test"], out.label_names)) == {"a": 5, "c": 5}
    assert any("dropped 2 classes" in note and "'b'" in note and "'d'" in note for note in out.notes)


def test_min_class_count_on_trec_fine_labels():
    cfg = dataset_cfg("dataset=trec_fine", "dataset.min_class_count=10")
    raw = load_raw_splits(cfg)
    train_counts = Counter(col(raw["train"], "fine_label"))
    # the tiny mirror's test split has fine classes that its 600 train rows lack; keep those it has
    raw["test"] = raw["test"].filter(lambda row: row["fine_label"] in train_counts)
    out = prepare_splits(raw, cfg)
    kept = sorted(k for k, n in train_counts.items() if n >= 10)
    assert 2 <= len(kept) < len(train_counts)
    assert out.label_names == kept
    for split in ("train", "validation", "test"):
        assert set(col(out.splits[split], "labels")) <= set(range(len(kept))), split
    assert len(out.splits["train"]) + len(out.splits["validation"]) == sum(train_counts[k] for k in kept)
    test_labels = col(raw["test"], "fine_label")
    assert sorted(decoded(out.splits["test"], kept)) == sorted(y for y in test_labels if y in kept)


# ---- label names ----------------------------------------------------------------------------------


def test_string_labels_without_names_are_sorted():
    data = {"text": ["x", "y", "z", "w", "v"], "label": ["pos", "neg", "neu", "pos", "neg"]}
    raw = DatasetDict(train=Dataset.from_dict(data), validation=Dataset.from_dict(data))
    out = prepare_splits(raw, local_cfg("dataset.validation_split=validation"))
    assert out.label_names == ["neg", "neu", "pos"]
    assert decoded(out.splits["train"], out.label_names) == data["label"]


def test_trec_mirror_string_labels_with_null_names():
    out = prepared("dataset=trec", "dataset.label_names=null")
    assert out.label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    declared = prepared("dataset=trec")  # the preset's own order
    assert declared.label_names == ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    assert sorted(decoded(out.splits["test"], out.label_names)) == sorted(
        decoded(declared.splits["test"], declared.label_names)
    )


def test_int_labels_with_declared_names():
    data = {"text": ["a", "b", "c", "d"], "label": [2, 0, 1, 2]}
    raw = DatasetDict(train=Dataset.from_dict(data), validation=Dataset.from_dict(data))
    out = prepare_splits(
        raw, local_cfg("dataset.validation_split=validation", "dataset.label_names=[neg,neu,pos]")
    )
    assert out.label_names == ["neg", "neu", "pos"]
    assert col(out.splits["train"], "labels") == [2, 0, 1, 2]


def test_int_label_outside_declared_names_names_the_row():
    data = {"text": ["a", "b", "c", "d"], "label": [0, 1, 3, 1]}
    raw = DatasetDict(train=Dataset.from_dict(data))
    with pytest.raises(EncoderlabError, match=r"Row 3 .*label 3 .*0\.\.1"):  # counted from 1
        prepare_splits(raw, local_cfg("dataset.label_names=[neg,pos]"))


def _classlabel(names: list[str], labels: list[int]) -> Dataset:
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"text": [f"t{i}" for i in range(len(labels))], "label": labels}, features)


def test_classlabel_feature_gives_the_names():
    ds = _classlabel(["sad", "happy", "angry"], [0, 1, 2, 1, 0, 2])
    raw = DatasetDict(train=ds, validation=ds)
    out = prepare_splits(raw, local_cfg("dataset.validation_split=validation"))
    assert out.label_names == ["sad", "happy", "angry"]  # the feature's order, not sorted
    assert col(out.splits["train"], "labels") == [0, 1, 2, 1, 0, 2]
    same = prepare_splits(
        raw, local_cfg("dataset.validation_split=validation", "dataset.label_names=[sad,happy,angry]")
    )
    assert same.label_names == ["sad", "happy", "angry"] and col(same.splits["train"], "labels") == [
        0,
        1,
        2,
        1,
        0,
        2,
    ]


def test_declared_names_may_rename_classlabel_classes():
    """Hub IMDb's ClassLabel says neg/pos while the preset declares negative/positive: ids win."""
    ds = _classlabel(["neg", "pos"], [0, 1, 1, 0])
    out = prepare_splits(
        DatasetDict(train=ds, validation=ds),
        local_cfg("dataset.validation_split=validation", "dataset.label_names=[negative,positive]"),
    )
    assert out.label_names == ["negative", "positive"] and col(out.splits["train"], "labels") == [0, 1, 1, 0]


# ---- the bundled quickstart data ----------------------------------------------------------------------


def test_uci_sentences_load_from_the_package_without_a_mirror(monkeypatch):
    monkeypatch.delenv("ENCODERLAB_DATA_DIR")
    cfg = dataset_cfg("dataset=uci_sentences")
    raw = load_raw_splits(cfg)
    assert {k: len(v) for k, v in raw.items()} == {"train": 2400, "test": 600}
    out = prepare_splits(raw, cfg)
    assert out.label_names == ["negative", "positive"]
    assert len(out.splits["train"]) + len(out.splits["validation"]) == 2400 and len(out.splits["test"]) == 600
    assert Counter(col(raw["test"], "label")) == {0: 300, 1: 300}


def test_a_mirror_folder_for_uci_sentences_wins_over_the_bundled_files(tmp_path, monkeypatch):
    (tmp_path / "uci_sentences").mkdir()
    for split, n in (("train", 40), ("test", 10)):
        _write_parquet(
            tmp_path / "uci_sentences" / f"{split}.parquet", synthetic({0: n // 2, 1: n // 2}, split)
        )
    monkeypatch.setenv("ENCODERLAB_DATA_DIR", str(tmp_path))
    raw = load_raw_splits(dataset_cfg("dataset=uci_sentences"))
    assert {k: len(v) for k, v in raw.items()} == {"train": 40, "test": 10}
    assert all("|train-" in t for t in col(raw["train"], "text"))


# ---- text fields ----------------------------------------------------------------------------------


def test_title_and_content_are_joined_like_amazon_polarity():
    cfg = dataset_cfg("dataset=amazon_polarity")
    assert list(cfg.text_field) == ["title", "content"] and cfg.text_join == ". "
    raw = load_raw_splits(cfg)
    out = prepare_splits(raw, cfg)
    expected = [
        f"{t}. {c}" for t, c in zip(col(raw["train"], "title"), col(raw["train"], "content"), strict=True)
    ]
    got = col(out.splits["train"], "text") + col(out.splits["validation"], "text")
    assert sorted(got) == sorted(expected)
    assert out.splits["test"].column_names == ["text", "labels"]


def test_text_join_and_list_from_overrides(tmp_path):
    data = {"head": ["Great", "Awful", None], "body": ["loved it", "broke", "meh"], "label": [1, 0, 0]}
    name = _write_parquet(tmp_path / "reviews.parquet", data)
    out = prepared(
        "dataset=parquet",
        f"dataset.data_files={{train: {name}, validation: {name}}}",
        "dataset.validation_split=validation",
        "dataset.text_field=[head,body]",
        "dataset.text_join=' | '",
    )
    assert col(out.splits["validation"], "text") == ["Great | loved it", "Awful | broke", " | meh"]


# ---- caps -------------------------------------------------------------------------------------------


def test_caps_are_seeded_random_subsets():
    full = prepared("dataset=imdb")
    capped = prepared(
        "dataset=imdb",
        "dataset.max_train_samples=100",
        "dataset.max_eval_samples=30",
        "dataset.max_test_samples=50",
    )
    assert {k: len(v) for k, v in capped.splits.items()} == {"train": 100, "validation": 30, "test": 50}
    for split in ("train", "validation", "test"):
        texts = col(capped.splits[split], "text")
        assert set(texts) <= set(col(full.splits[split], "text"))
        assert texts != col(full.splits[split], "text")[: len(texts)], (
            f"{split}: the first N rows, not a sample"
        )
    raw_test = col(load_raw_splits(dataset_cfg("dataset=imdb"))["test"], "text")
    assert col(capped.splits["test"], "text") != raw_test[:50]

    again = prepared(
        "dataset=imdb",
        "dataset.max_train_samples=100",
        "dataset.max_eval_samples=30",
        "dataset.max_test_samples=50",
    )
    for split in ("train", "validation", "test"):
        assert col(again.splits[split], "text") == col(capped.splits[split], "text")
    reseeded = prepared("dataset=imdb", "dataset.max_train_samples=100", "dataset.subset_seed=1")
    assert set(col(reseeded.splits["train"], "text")) != set(col(capped.splits["train"], "text"))
    # the cap applies after the carve: the validation split is the same 140 rows either way
    assert set(col(capped.splits["validation"], "text")) <= set(col(full.splits["validation"], "text"))


def test_no_test_split_reports_on_validation():
    out = prepared("dataset=sst2", "dataset.max_eval_samples=40")
    assert out.test_is_validation
    assert len(out.splits["validation"]) == 40
    assert col(out.splits["test"], "text") == col(out.splits["validation"], "text")


def _csv_files(tmp_path, **splits: dict) -> str:
    """Write {split: columns} as csv files; the dataset.data_files map for them."""
    for split, columns in splits.items():
        pd.DataFrame(columns).to_csv(tmp_path / f"{split}.csv", index=False)
    return "{" + ", ".join(f"{s}: {tmp_path / s}.csv" for s in splits) + "}"


def test_a_test_file_in_the_files_map_is_the_test_split(tmp_path):
    files = _csv_files(
        tmp_path,
        train=synthetic({"a": 20, "b": 20}),
        test=synthetic({"a": 3, "b": 3}, prefix="test"),
        validation=synthetic({"a": 2, "b": 2}, prefix="val"),
    )
    cfg = dataset_cfg("dataset=csv", f"dataset.data_files={files}")
    assert cfg.test_split is None and cfg.validation_split is None  # the csv config names neither
    out = prepare_splits(load_raw_splits(cfg), cfg)
    assert not out.test_is_validation and out.test_source == "test"
    assert col(out.splits["test"], "text") == synthetic({"a": 3, "b": 3}, prefix="test")["text"]
    assert len(out.splits["validation"]) == 4 and len(out.splits["train"]) == 40  # nothing carved
    assert any("'test' file of dataset.data_files" in n for n in out.notes)


def test_empty_texts_are_an_error_naming_rows_or_dropped_with_drop_empty(tmp_path):
    data = synthetic({"a": 20, "b": 20})
    data["text"][4] = None
    data["text"][11] = "  "
    files = _csv_files(tmp_path, train=data)
    cfg = dataset_cfg("dataset=csv", f"dataset.data_files={files}")
    with pytest.raises(EncoderlabError, match=r"2 of 40 rows .*train.csv.*rows 5, 12 .*drop_empty=true"):
        prepare_splits(load_raw_splits(cfg), cfg)
    cfg = dataset_cfg("dataset=csv", f"dataset.data_files={files}", "dataset.drop_empty=true")
    out = prepare_splits(load_raw_splits(cfg), cfg)
    kept = [*col(out.splits["train"], "text"), *col(out.splits["validation"], "text")]
    assert len(kept) == 38 and all(t.strip() for t in kept)
    assert any("dropped 2 rows with an empty text" in n for n in out.notes)


def test_a_latin1_file_reads_with_dataset_encoding(tmp_path):
    (tmp_path / "train.csv").write_bytes("text,label\ncaf\xe9,a\nna\xefve,b\n".encode("latin-1") * 1)
    with (tmp_path / "train.csv").open("ab") as f:
        f.write("".join(f"row {i},{'ab'[i % 2]}\n" for i in range(20)).encode("latin-1"))
    files = f"dataset.data_files={tmp_path / 'train.csv'}"
    with pytest.raises(EncoderlabError, match=r"train.csv is not valid utf-8.*byte offset 14 \(line 2\)"):
        load_raw_splits(dataset_cfg("dataset=csv", files))
    cfg = dataset_cfg("dataset=csv", files, "dataset.encoding=latin-1")
    out = prepare_splits(load_raw_splits(cfg), cfg)
    texts = [*col(out.splits["train"], "text"), *col(out.splits["validation"], "text")]
    assert {"café", "naïve"} <= set(texts)


def test_a_missing_label_names_its_row_counted_from_1():
    data = {"text": ["a", "b", "c", "d"], "label": ["x", "y", None, "x"]}
    raw = DatasetDict(train=Dataset.from_dict(data))
    with pytest.raises(
        EncoderlabError, match=r"no label in column 'label' .*: row 3 \(rows are counted from 1"
    ):
        prepare_splits(raw, local_cfg())


# ---- tokenization and batches -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _datamodule(tokenizer, *overrides: str):
    from encoderlab.data.datamodule import TextClassificationDataModule

    dm = TextClassificationDataModule(dataset_cfg(*overrides), tokenizer, seed=0)
    dm.setup()
    return dm


def test_batches_are_dynamically_padded(tokenizer, tmp_path):
    dm = _datamodule(
        tokenizer,
        "dataset=trec",
        "dataset.max_length=64",
        "dataset.batch_size=16",
        f"dataset.cache_dir={tmp_path}",
    )
    assert dm.num_labels == 6
    widths = []
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            assert ids.shape == mask.shape and labels.shape == (ids.shape[0],)
            assert str(labels.dtype) == "torch.int64" and int(labels.min()) >= 0 and int(labels.max()) < 6
            longest = int(mask.sum(dim=1).max())
            assert ids.shape[1] == longest  # padded to the longest row of this batch only
            assert (ids[mask == 0] == tokenizer.pad_token_id).all()
            widths.append(ids.shape[1])
    assert max(widths) <= 64 and min(widths) < 64 and len(set(widths)) > 1


def test_word_dropout_replaces_real_training_tokens_with_unk_only(tokenizer, tmp_path):
    common = ("dataset=trec", "dataset.batch_size=64", f"dataset.cache_dir={tmp_path}")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    plain, dropped = (
        _datamodule(tokenizer, *common),
        _datamodule(tokenizer, *common, "dataset.word_dropout=0.3"),
    )
    special = set(tokenizer.all_special_ids)
    unk = tokenizer.unk_token_id
    n_real = n_dropped = 0
    train_batch = next(iter(dropped.train_dataloader()))
    rows = {tuple(r) for r in dropped.tokenized["train"]["input_ids"]}
    for ids, mask in zip(train_batch["input_ids"], train_batch["attention_mask"], strict=True):
        real = ids[mask.bool()].tolist()
        assert real[0] == tokenizer.cls_token_id and real[-1] == tokenizer.sep_token_id  # specials kept
        assert (ids[~mask.bool()] == tokenizer.pad_token_id).all()  # padding kept
        # the row it came from: same length, equal wherever the token is not [UNK]
        match = [
            r
            for r in rows
            if len(r) == len(real) and all(x in (y, unk) for x, y in zip(real, r, strict=True))
        ]
        assert match, "a dropped row must differ from a training row only by [UNK]s"
        inner = [t for t in real if t not in special or t == unk]
        n_real += len(inner)
        n_dropped += sum(t == unk for t in real)
    assert 0.2 < n_dropped / n_real < 0.4  # about word_dropout of the real words
    for a, b in zip(plain.val_dataloader(), dropped.val_dataloader(), strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])  # validation is never dropped


def test_group_by_length_pads_less(tokenizer, tmp_path):
    common = (
        "dataset=imdb",
        "dataset.max_length=96",
        "dataset.batch_size=8",
        f"dataset.cache_dir={tmp_path}",
    )

    def padding(dm) -> tuple[int, list[int]]:
        pad, seen = 0, []
        for batch in dm.train_dataloader():
            pad += int((batch["attention_mask"] == 0).sum())
            seen += batch["labels"].tolist()
        return pad, seen

    random_pad, random_labels = padding(_datamodule(tokenizer, *common))
    grouped_pad, grouped_labels = padding(_datamodule(tokenizer, *common, "dataset.group_by_length=true"))
    assert sorted(grouped_labels) == sorted(random_labels)  # every train row, once
    assert grouped_pad < 0.5 * random_pad


def test_tokenization_cache_hits_for_the_same_data_and_tokenizer(tokenizer, tmp_path):
    common = ("dataset=trec", "dataset.max_length=64", f"dataset.cache_dir={tmp_path / 'tok'}")
    first = _datamodule(tokenizer, *common)
    assert set(first.tokenization) == {"train", "validation", "test"}
    assert all(info["cache_hit"] is False for info in first.tokenization.values()), first.tokenization
    assert all(str(tmp_path / "tok") in info["file"] for info in first.tokenization.values())

    second = _datamodule(tokenizer, *common)
    assert all(info["cache_hit"] is True for info in second.tokenization.values()), second.tokenization
    assert second.fingerprint() == first.fingerprint()
    for split in ("train", "validation", "test"):
        assert col(second.tokenized[split], "input_ids") == col(first.tokenized[split], "input_ids")

    shorter = _datamodule(
        tokenizer, "dataset=trec", "dataset.max_length=16", f"dataset.cache_dir={tmp_path / 'tok'}"
    )
    assert all(info["cache_hit"] is False for info in shorter.tokenization.values()), shorter.tokenization
    assert max(len(ids) for ids in col(shorter.tokenized["train"], "input_ids")) == 16


# ---- length-grouped sampler -----------------------------------------------------------------------


def _lengths(n: int = 1003, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(1, 200, size=n).tolist()


def test_length_grouped_sampler_covers_every_index_once_per_epoch():
    lengths = _lengths()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3, group_size=10)
    for _epoch in range(3):
        batches = list(sampler)
        assert len(batches) == len(sampler) == 126
        assert all(1 <= len(b) <= 8 for b in batches)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))


def test_length_grouped_sampler_batches_are_length_homogeneous():
    lengths = np.asarray(_lengths())
    batches = list(LengthGroupedBatchSampler(lengths.tolist(), batch_size=8, seed=3, group_size=10))
    spreads = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(lengths)), len(batches))
    random_spreads = [int(lengths[b].max() - lengths[b].min()) for b in random_batches]
    assert np.median(spreads) < 0.2 * np.median(random_spreads)
    assert np.mean([s <= 25 for s in spreads]) > 0.8  # mostly homogeneous
    # batches are not served longest-first: the order is shuffled too
    firsts = [lengths[b].max() for b in batches]
    assert firsts != sorted(firsts, reverse=True)


def test_length_grouped_sampler_is_deterministic_per_seed():
    lengths = _lengths()
    a = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5)
    b = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5)
    a_epochs, b_epochs = [list(a), list(a)], [list(b), list(b)]
    assert a_epochs == b_epochs
    assert a_epochs[0] != a_epochs[1]  # reshuffled each epoch
    assert list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=6)) != a_epochs[0]
