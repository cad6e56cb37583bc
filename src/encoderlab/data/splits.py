"""Turn raw splits into train / validation / test with `text`, optional `text_pair` and int `labels`.

Order of operations (each step seeded): column checks -> label mapping -> train pool -> balanced
per-class sampling -> dropping rare classes -> carving validation (stratified) -> per-split caps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, concatenate_datasets
from omegaconf import DictConfig, ListConfig

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)


@dataclass
class PreparedSplits:
    """The three splits a run uses, their label names, and what was done to build them."""

    splits: DatasetDict
    label_names: list[str]
    test_is_validation: bool = False
    test_source: str = "test"  # the source split, "carved from train", or "validation"
    notes: list[str] = field(default_factory=list)


def _text_fields(ds_cfg: DictConfig) -> list[str]:
    tf = ds_cfg.text_field
    return list(tf) if isinstance(tf, (list, ListConfig)) else [tf]


def _check_columns(split: str, ds: Dataset, ds_cfg: DictConfig) -> None:
    wanted = {f"dataset.text_field={f!r}": f for f in _text_fields(ds_cfg)}
    wanted[f"dataset.label_field={ds_cfg.label_field!r}"] = ds_cfg.label_field
    if ds_cfg.text_pair_field:
        wanted[f"dataset.text_pair_field={ds_cfg.text_pair_field!r}"] = ds_cfg.text_pair_field
    for setting, column in wanted.items():
        if column not in ds.column_names:
            raise EncoderlabError(
                f"Column '{column}' ({setting}) does not exist in the '{split}' split of dataset "
                f"'{ds_cfg.name}'. Columns that do: {', '.join(ds.column_names)}."
            )


def _label_names(train: Dataset, ds_cfg: DictConfig) -> list[str]:
    if ds_cfg.label_names is not None:
        names = [str(n) for n in ds_cfg.label_names]
        if len(set(names)) != len(names) or len(names) < 2:
            raise EncoderlabError(f"dataset.label_names must list at least 2 distinct names; got {names}.")
        return names
    feature = train.features[ds_cfg.label_field]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in set(train[ds_cfg.label_field]) if v is not None]
    if len(values) < 2:
        raise EncoderlabError(
            f"The train split of '{ds_cfg.name}' has {len(values)} distinct label(s) in column "
            f"'{ds_cfg.label_field}'; classification needs at least 2."
        )
    return [str(v) for v in sorted(values)]


def _label_ids(split: str, ds: Dataset, ds_cfg: DictConfig, names: list[str]) -> np.ndarray:
    """Map the label column to ids in `names`; a value outside the set is an error naming the row.

    Int labels (ClassLabel or declared names) are ids into `names`; strings are looked up by name.
    """
    ids_are_indices = ds_cfg.label_names is not None or isinstance(
        ds.features[ds_cfg.label_field], ClassLabel
    )
    raw = ds[ds_cfg.label_field]
    index = {n: i for i, n in enumerate(names)}
    ids = np.empty(len(raw), dtype=np.int64)
    for row, value in enumerate(raw):
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if is_int and ids_are_indices and 0 <= value < len(names):
            ids[row] = value
        elif value is not None and not (is_int and ids_are_indices) and str(value) in index:
            ids[row] = index[str(value)]
        else:
            allowed = f"{names}" + (f" (or their ids 0..{len(names) - 1})" if ids_are_indices else "")
            raise EncoderlabError(
                f"Row {row} of the '{split}' split of '{ds_cfg.name}' has label {value!r} in column "
                f"'{ds_cfg.label_field}', which is not one of the label names {allowed}. "
                "Fix the data or dataset.label_names."
            )
    return ids


def _normalise(split: str, ds: Dataset, ds_cfg: DictConfig, names: list[str]) -> Dataset:
    """Keep only `text`, optional `text_pair` and int `labels`."""
    _check_columns(split, ds, ds_cfg)
    ids = _label_ids(split, ds, ds_cfg, names)
    fields = _text_fields(ds_cfg)
    pair = ds_cfg.text_pair_field
    joiner = ds_cfg.text_join

    def build(batch: dict) -> dict:
        cols = [batch[f] for f in fields]
        texts = [joiner.join("" if v is None else str(v) for v in row) for row in zip(*cols, strict=True)]
        out = {"text": texts}
        if pair:
            out["text_pair"] = ["" if v is None else str(v) for v in batch[pair]]
        return out

    keep = ["text", "text_pair"] if pair else ["text"]
    ds = ds.map(
        build,
        batched=True,
        remove_columns=[c for c in ds.column_names if c not in keep],
        desc=f"Reading {split}",
    )
    ds = ds.add_column("labels", ids.tolist())
    return ds


def _shuffle_take(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n)).flatten_indices()


def _per_class(ds: Dataset, n: int, seed: int, names: list[str], notes: list[str]) -> Dataset:
    labels = np.asarray(ds["labels"])
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(names)):
        rows = np.flatnonzero(labels == c)
        if len(rows) < n:
            notes.append(
                f"class '{names[c]}' has {len(rows)} train rows, fewer than samples_per_class={n}: all kept"
            )
        chosen.append(rng.permutation(rows)[:n])
    order = rng.permutation(np.concatenate(chosen))
    return ds.select(order.tolist()).flatten_indices()


def _stratified_carve(ds: Dataset, size: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split off a stratified validation set: `size` < 1 is a fraction, >= 1 a row count."""
    labels = np.asarray(ds["labels"])
    n_total = len(labels)
    n_val = int(round(size * n_total)) if size < 1 else int(size)
    if not 0 < n_val < n_total:
        raise EncoderlabError(
            f"dataset.val_size={size} asks for {n_val} validation rows from a train split of {n_total}; "
            f"it must leave at least one row on each side."
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # proportional allocation, largest remainder so the total is exactly n_val
    exact = counts * n_val / n_total
    alloc = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - alloc))[: n_val - alloc.sum()]:
        alloc[i] += 1
    val_rows = []
    for c, k in zip(classes, alloc, strict=True):
        rows = rng.permutation(np.flatnonzero(labels == c))
        val_rows.append(rows[:k])
    val_idx = np.sort(np.concatenate(val_rows))
    mask = np.ones(n_total, dtype=bool)
    mask[val_idx] = False
    train_idx = rng.permutation(np.flatnonzero(mask))
    return ds.select(train_idx.tolist()).flatten_indices(), ds.select(val_idx.tolist()).flatten_indices()


def _need_split(raw: DatasetDict, split: str, key: str, ds_cfg: DictConfig) -> Dataset:
    if split not in raw:
        raise EncoderlabError(
            f"Split '{split}' ({key}) does not exist in dataset '{ds_cfg.name}'. "
            f"Splits that do: {', '.join(raw.keys())}."
        )
    return raw[split]


def prepare_splits(raw: DatasetDict, ds_cfg: DictConfig) -> PreparedSplits:
    """Build the train/validation/test splits described by the dataset config."""
    notes: list[str] = []
    train = _need_split(raw, ds_cfg.train_split, "dataset.train_split", ds_cfg)
    if len(train) == 0:
        raise EncoderlabError(
            f"The '{ds_cfg.train_split}' split of dataset '{ds_cfg.name}' is empty: nothing to train on."
        )
    _check_columns(ds_cfg.train_split, train, ds_cfg)
    names = _label_names(train, ds_cfg)
    train = _normalise(ds_cfg.train_split, train, ds_cfg, names)
    for extra in ds_cfg.extra_train_splits:
        more = _normalise(extra, _need_split(raw, extra, "dataset.extra_train_splits", ds_cfg), ds_cfg, names)
        train = concatenate_datasets([train, more])
        notes.append(f"split '{extra}' ({len(more)} rows) concatenated into train")

    def given(split: str | None, key: str) -> Dataset | None:
        """The split named by dataset.<key>, normalised; None when the config names none."""
        return (
            None if split is None else _normalise(split, _need_split(raw, split, key, ds_cfg), ds_cfg, names)
        )

    val = given(ds_cfg.validation_split, "dataset.validation_split")
    test = given(ds_cfg.test_split, "dataset.test_split")

    if ds_cfg.train_pool_size is not None:
        train = _shuffle_take(train, ds_cfg.train_pool_size, ds_cfg.subset_seed)
        notes.append(f"train pool: {len(train)} random rows")
    if ds_cfg.samples_per_class is not None:
        train = _per_class(train, ds_cfg.samples_per_class, ds_cfg.subset_seed, names, notes)
        notes.append(f"balanced: up to {ds_cfg.samples_per_class} rows per class")

    if ds_cfg.min_class_count > 0:
        counts = np.bincount(np.asarray(train["labels"], dtype=np.int64), minlength=len(names))
        kept = [i for i, c in enumerate(counts) if c >= ds_cfg.min_class_count]
        if len(kept) < len(names):
            dropped = [names[i] for i in range(len(names)) if i not in kept]
            if len(kept) < 2:
                raise EncoderlabError(
                    f"dataset.min_class_count={ds_cfg.min_class_count} leaves {len(kept)} class(es); at least 2 are needed."
                )
            remap = {old: new for new, old in enumerate(kept)}
            notes.append(
                f"dropped {len(dropped)} classes under {ds_cfg.min_class_count} train rows: {dropped}"
            )

            def _keep(ds: Dataset | None) -> Dataset | None:
                if ds is None:
                    return None
                ds = ds.filter(lambda b: [y in remap for y in b["labels"]], batched=True)
                return ds.map(lambda b: {"labels": [remap[y] for y in b["labels"]]}, batched=True)

            train, val, test = _keep(train), _keep(val), _keep(test)
            names = [names[i] for i in kept]

    pool, carved_test = len(train), False
    if test is None and ds_cfg.test_size is not None:
        carved_test = True
        train, test = _stratified_carve(train, ds_cfg.test_size, ds_cfg.split_seed)
        notes.append(f"test carved from train: {len(test)} rows (stratified, seed {ds_cfg.split_seed})")
    if val is None:
        val_rows = round(ds_cfg.val_size * pool) if ds_cfg.val_size < 1 else ds_cfg.val_size
        train, val = _stratified_carve(
            train, val_rows, ds_cfg.split_seed + 1 if carved_test else ds_cfg.split_seed
        )
        notes.append(f"validation carved from train: {len(val)} rows (stratified, seed {ds_cfg.split_seed})")

    train = _shuffle_take(train, ds_cfg.max_train_samples, ds_cfg.subset_seed)
    val = _shuffle_take(val, ds_cfg.max_eval_samples, ds_cfg.subset_seed)
    test_is_validation = test is None
    test = val if test is None else _shuffle_take(test, ds_cfg.max_test_samples, ds_cfg.subset_seed)
    if test_is_validation:
        notes.append("no test split: the test stage reports on the validation split")

    for split, ds in (("train", train), ("validation", val), ("test", test)):
        if len(ds) == 0:
            raise EncoderlabError(
                f"The {split} split of dataset '{ds_cfg.name}' is empty after subsetting "
                f"(max_train_samples={ds_cfg.max_train_samples}, max_eval_samples={ds_cfg.max_eval_samples}, "
                f"max_test_samples={ds_cfg.max_test_samples}, train_pool_size={ds_cfg.train_pool_size}, "
                f"samples_per_class={ds_cfg.samples_per_class}). Each split needs at least one row."
            )
    splits = DatasetDict(train=train, validation=val, test=test)
    log.info(
        "Dataset %s: %s; %s",
        ds_cfg.name,
        {k: len(v) for k, v in splits.items()},
        "; ".join(notes) or "splits as given",
    )
    test_source = (
        "validation" if test_is_validation else ("carved from train" if carved_test else ds_cfg.test_split)
    )
    return PreparedSplits(
        splits=splits,
        label_names=names,
        test_is_validation=test_is_validation,
        test_source=test_source,
        notes=notes,
    )
