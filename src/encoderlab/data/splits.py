"""Turn raw splits into train / validation / test with `text`, optional `text_pair` and int `labels`.

Order of operations (each step seeded): column checks -> label mapping -> train pool -> balanced
per-class sampling -> dropping rare classes -> carving test (test_size) -> carving validation (stratified),
or with dataset.cv.folds=K the held-out fold of a stratified K-fold as validation -> per-split caps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, concatenate_datasets
from omegaconf import DictConfig, ListConfig

from encoderlab.data import multilabel as ml
from encoderlab.errors import ConfigError, EncoderlabError
from encoderlab.validate import cv_without_test

log = logging.getLogger(__name__)


@dataclass
class PreparedSplits:
    """The three splits a run uses, their label names, and what was done to build them."""

    splits: DatasetDict
    label_names: list[str]
    test_is_validation: bool = False
    test_source: str = "test"  # the source split, "carved from train", or "validation"
    notes: list[str] = field(default_factory=list)
    cv: tuple[int, int] | None = None  # (fold, folds): validation is held-out fold `fold` of the train split


def _text_fields(ds_cfg: DictConfig) -> list[str]:
    tf = ds_cfg.text_field
    return list(tf) if isinstance(tf, (list, ListConfig)) else [tf]


def _where(split: str, ds_cfg: DictConfig) -> str:
    """The split as a user knows it: its file(s) when local, else the split of the named dataset."""
    files = ds_cfg.data_files
    if isinstance(files, (dict, DictConfig)):
        files = files.get(split)
    elif files is not None and split != ds_cfg.train_split:
        files = None
    if files is None:
        return f"the '{split}' split of dataset '{ds_cfg.name}'"
    names = [files] if isinstance(files, str) else [str(f) for f in files]
    return f"the '{split}' split of dataset '{ds_cfg.name}' ({', '.join(names)})"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_list(rows: list[int]) -> str:
    """'rows 4, 8 and 3 more' from 1-based row numbers."""
    shown = ", ".join(str(r) for r in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _convention(ds_cfg: DictConfig) -> str:
    """How the row numbers of a message count."""
    header = ", the header line not included" if ds_cfg.path == "csv" else ""
    return f"rows are counted from 1{header}"


def _check_columns(split: str, ds: Dataset, ds_cfg: DictConfig) -> None:
    wanted = {f"dataset.text_field={f!r}": f for f in _text_fields(ds_cfg)}
    for column in ml.label_columns(ds_cfg):
        wanted[f"dataset.label_field={column!r}"] = column
    if ds_cfg.text_pair_field:
        wanted[f"dataset.text_pair_field={ds_cfg.text_pair_field!r}"] = ds_cfg.text_pair_field
    for setting, column in wanted.items():
        if column not in ds.column_names:
            raise EncoderlabError(
                f"Column '{column}' ({setting}) does not exist in the '{split}' split of dataset "
                f"'{ds_cfg.name}'. Columns that do: {', '.join(ds.column_names)}."
            )


def _label_names(train: Dataset, ds_cfg: DictConfig) -> list[str]:
    if ml.is_multilabel(ds_cfg):
        return ml.label_names(train, ds_cfg, _where(ds_cfg.train_split, ds_cfg))
    if ds_cfg.label_names is not None:
        names = [str(n) for n in ds_cfg.label_names]
        if len(set(names)) != len(names) or len(names) < 2:
            raise EncoderlabError(f"dataset.label_names must list at least 2 distinct names; got {names}.")
        return names
    feature = train.features[ds_cfg.label_field]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in set(train[ds_cfg.label_field]) if not _missing(v)]
    if len(values) < 2:
        found = f"only {str(values[0])!r}" if values else "none"
        raise EncoderlabError(
            f"{_where(ds_cfg.train_split, ds_cfg)[0].upper()}{_where(ds_cfg.train_split, ds_cfg)[1:]} has "
            f"{len(values)} distinct label(s) in column '{ds_cfg.label_field}' ({found}); classification "
            "needs at least 2 classes in the train split."
        )
    return [str(v) for v in sorted(values)]


def _label_ids(
    split: str, ds: Dataset, ds_cfg: DictConfig, names: list[str], source_rows: list[int] | None = None
) -> np.ndarray:
    """Map the label column to ids in `names`; a missing value or one outside the set is an error naming
    the row (1-based, in the source file: `source_rows` maps rows back when some were dropped).

    Int labels (ClassLabel or declared names) are ids into `names`; strings are looked up by name.
    """
    ids_are_indices = ds_cfg.label_names is not None or isinstance(
        ds.features[ds_cfg.label_field], ClassLabel
    )
    raw = ds[ds_cfg.label_field]
    number = (lambda i: source_rows[i] + 1) if source_rows is not None else (lambda i: i + 1)
    empty = [number(i) for i, v in enumerate(raw) if _missing(v)]
    if empty:
        raise EncoderlabError(
            f"{len(empty)} row(s) of {_where(split, ds_cfg)} have no label in column '{ds_cfg.label_field}' "
            f"(empty, NaN or null): {_row_list(empty)} ({_convention(ds_cfg)}). Every row needs one of the "
            "label names; fix or remove those rows."
        )
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
                f"Row {number(row)} ({_convention(ds_cfg)}) of {_where(split, ds_cfg)} has label {value!r} in column "
                f"'{ds_cfg.label_field}', which is not one of the label names {allowed}. "
                "Fix the data or dataset.label_names."
            )
    return ids


def _empty_texts(
    split: str, ds: Dataset, ds_cfg: DictConfig, columns: list[str], notes: list[str]
) -> tuple[Dataset, list[int] | None]:
    """Rows whose text columns are all missing or blank (a text column joined from several counts as
    empty when every part is), and a missing/blank text pair: an error naming them, or, with
    dataset.drop_empty=true, dropped and counted. Returns the rows kept and their source row numbers."""
    text_cols = [ds[c] for c in columns[: len(_text_fields(ds_cfg))]]
    pair_col = ds[columns[-1]] if ds_cfg.text_pair_field else None

    def blank(v: object) -> bool:
        return _missing(v) or (isinstance(v, str) and not v.strip())

    bad = [
        i
        for i in range(len(ds))
        if all(blank(col[i]) for col in text_cols) or (pair_col is not None and blank(pair_col[i]))
    ]
    if not bad:
        return ds, None
    shown = ", ".join(columns)
    if not ds_cfg.get("drop_empty", False):
        raise EncoderlabError(
            f"{len(bad)} of {len(ds)} rows of {_where(split, ds_cfg)} have an empty or missing text in "
            f"{shown}: {_row_list([i + 1 for i in bad])} ({_convention(ds_cfg)}). They would train as empty "
            "strings. Fix those rows, or set dataset.drop_empty=true to drop them (the count is logged)."
        )
    keep = sorted(set(range(len(ds))) - set(bad))
    message = f"dropped {len(bad)} rows with an empty text from split '{split}' (dataset.drop_empty)"
    log.warning("%s: %s", message, _row_list([i + 1 for i in bad]))
    notes.append(message)
    return ds.select(keep).flatten_indices(), keep


def _normalise(
    split: str, ds: Dataset, ds_cfg: DictConfig, names: list[str], notes: list[str] | None = None
) -> Dataset:
    """Keep only `text`, optional `text_pair` and int `labels`."""
    _check_columns(split, ds, ds_cfg)
    fields = _text_fields(ds_cfg)
    pair = ds_cfg.text_pair_field
    notes = [] if notes is None else notes
    ds, source_rows = _empty_texts(split, ds, ds_cfg, [*fields, *([pair] if pair else [])], notes)
    if ml.is_multilabel(ds_cfg):
        number = (lambda i: source_rows[i] + 1) if source_rows is not None else (lambda i: i + 1)
        ids = ml.label_matrix(ds, ds_cfg, names, _where(split, ds_cfg), number, _convention(ds_cfg))
    else:
        ids = _label_ids(split, ds, ds_cfg, names, source_rows)
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
    """Split off a stratified validation set: `size` < 1 is a fraction, >= 1 a row count. Multi-label
    rows (a 0/1 vector each) are split at random."""
    labels = np.asarray(ds["labels"])
    if labels.ndim == 2:
        labels = np.zeros(len(labels), dtype=np.int64)
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


def cv_setting(ds_cfg: DictConfig) -> tuple[int, int] | None:
    """(fold, folds) of dataset.cv, or None without cross-validation (and for configs from before it)."""
    cv = ds_cfg.get("cv")
    if cv is None or cv.get("folds") is None:
        return None
    return int(cv.fold), int(cv.folds)


def _kfold(
    train: Dataset, fold: int, folds: int, seed: int, names: list[str], ds_cfg: DictConfig
) -> tuple[Dataset, Dataset]:
    """(train, validation): fold `fold` of a stratified, shuffled K-fold (sklearn's StratifiedKFold,
    seeded; multi-label: KFold) held out as validation; the other K-1 folds train. Each class needs >= K rows, else some
    fold's validation would miss it (sklearn only warns): an error naming the classes."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if not 0 <= fold < folds:
        raise ConfigError(f"Config error: dataset.cv.fold={fold} is outside [0, {folds}) (dataset.cv.folds).")
    labels = np.asarray(train["labels"])
    if labels.ndim == 2:  # multi-label: label sets do not stratify; a shuffled, seeded K-fold
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(labels)
        train_idx, val_idx = next(split for i, split in enumerate(splits) if i == fold)
        return (
            train.select(train_idx.tolist()).flatten_indices(),
            train.select(val_idx.tolist()).flatten_indices(),
        )
    labels = labels.astype(np.int64)
    counts = np.bincount(labels, minlength=len(names))
    small = [f"'{names[c]}' ({n})" for c, n in enumerate(counts) if 0 < n < folds]
    if small:
        raise EncoderlabError(
            f"dataset.cv.folds={folds} needs at least {folds} train rows of every class, one per held-out "
            f"fold; dataset '{ds_cfg.name}' has fewer for class(es) {', '.join(small)} (rows counted after "
            "train_pool_size, samples_per_class, min_class_count and test_size). Use fewer folds, or drop "
            f"the rare classes with dataset.min_class_count={folds}."
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = next(
        split for i, split in enumerate(splitter.split(np.zeros(len(labels)), labels)) if i == fold
    )
    return (
        train.select(train_idx.tolist()).flatten_indices(),
        train.select(val_idx.tolist()).flatten_indices(),
    )


def _need_split(raw: DatasetDict, split: str, key: str, ds_cfg: DictConfig) -> Dataset:
    if split not in raw:
        raise EncoderlabError(
            f"Split '{split}' ({key}) does not exist in dataset '{ds_cfg.name}'. "
            f"Splits that do: {', '.join(raw.keys())}."
        )
    return raw[split]


def _file_split(
    kind: str, configured: str | None, carve: float | None, ds_cfg: DictConfig, notes: list[str]
) -> str | None:
    """The split to use as validation/test: the configured one, else a `validation`/`test` entry of a
    local files map (dataset=csv with data_files {train, test}), unless that split is to be carved."""
    files = ds_cfg.data_files
    if configured is not None or carve is not None or ds_cfg.path not in ("csv", "json", "parquet"):
        return configured
    if not isinstance(files, (dict, DictConfig)) or kind not in files:
        return None
    notes.append(f"{kind} split: the '{kind}' file of dataset.data_files ({files[kind]})")
    log.info("Using the '%s' entry of dataset.data_files (%s) as the %s split", kind, files[kind], kind)
    return kind


def _carve_rows(key: str, size: float, pool: int, ds_cfg: DictConfig, left: int | None = None) -> int:
    """Rows to carve for dataset.<key> (a fraction of `pool` or a count) from a split of `left` rows;
    an error in the user's terms when that leaves either side empty."""
    left = pool if left is None else left
    what = "validation" if key == "val_size" else "test"
    if size < 1:
        n = int(round(size * pool))
        if 0 < n < left:
            return n
        need = next((m for m in range(2, 100_000) if 0 < round(size * m) < m), None)
        raise EncoderlabError(
            f"{_where(ds_cfg.train_split, ds_cfg)[0].upper()}{_where(ds_cfg.train_split, ds_cfg)[1:]} has "
            f"{left} row(s) to carve from; a {what} split of {size:.0%} (dataset.{key}={size}) needs at least "
            f"{need} rows, to leave at least one row on each side. Add data, or give a {what} file/split "
            f"(dataset.{'validation_split' if what == 'validation' else 'test_split'})."
        )
    n = int(size)
    if n < left:
        return n
    raise EncoderlabError(
        f"dataset.{key}={n} asks for {n} {what} rows, but {_where(ds_cfg.train_split, ds_cfg)} has {left} "
        f"row(s) to carve them from; it must leave at least one for training. Use a smaller count or a "
        f"fraction in (0, 1)."
    )


def _check_train_classes(train: Dataset, names: list[str], ds_cfg: DictConfig) -> None:
    """The final train split (after subsetting and carving) must hold at least 2 classes (multi-label: at
    least one label on somewhere)."""
    if ml.is_multilabel(ds_cfg):
        if np.asarray(train["labels"]).any():
            return
        raise EncoderlabError(
            f"The train split of dataset '{ds_cfg.name}' has no label on in any of its {len(train)} rows; "
            f"a multi-label classifier needs positive examples (label names: {', '.join(names)}). Check "
            "dataset.label_field."
        )
    present = sorted(set(train["labels"]))
    if len(present) >= 2:
        return
    found = f"only class '{names[present[0]]}'" if present else "no rows"
    raise EncoderlabError(
        f"The train split of dataset '{ds_cfg.name}' has {found} ({len(train)} rows); a classifier needs at "
        f"least 2 classes to learn from (label names: {', '.join(names)}). Add rows of the other classes, "
        "or check dataset.label_field, train_pool_size, samples_per_class and max_train_samples."
    )


def prepare_splits(raw: DatasetDict, ds_cfg: DictConfig) -> PreparedSplits:
    """Build the train/validation/test splits described by the dataset config."""
    notes: list[str] = []
    train = _need_split(raw, ds_cfg.train_split, "dataset.train_split", ds_cfg)
    if len(train) == 0:
        raise EncoderlabError(
            f"The '{ds_cfg.train_split}' split of dataset '{ds_cfg.name}' is empty: nothing to train on."
        )
    _check_columns(ds_cfg.train_split, train, ds_cfg)
    if ml.is_multilabel(ds_cfg):
        for key in ("samples_per_class", "min_class_count"):
            if ds_cfg.get(key):
                raise EncoderlabError(
                    f"dataset.{key}={ds_cfg[key]} works on single-label classes; with dataset.task=multilabel "
                    f"a row has several labels. Drop dataset.{key} (use max_train_samples / train_pool_size)."
                )
    names = _label_names(train, ds_cfg)
    train = _normalise(ds_cfg.train_split, train, ds_cfg, names, notes)
    for extra in ds_cfg.extra_train_splits:
        more = _need_split(raw, extra, "dataset.extra_train_splits", ds_cfg)
        more = _normalise(extra, more, ds_cfg, names, notes)
        train = concatenate_datasets([train, more])
        notes.append(f"split '{extra}' ({len(more)} rows) concatenated into train")

    def given(split: str | None, key: str) -> Dataset | None:
        """The split named by dataset.<key>, normalised; None when the config names none."""
        if split is None:
            return None
        return _normalise(split, _need_split(raw, split, key, ds_cfg), ds_cfg, names, notes)

    cv = cv_setting(ds_cfg)
    val_split = _file_split("validation", ds_cfg.validation_split, None, ds_cfg, [] if cv else notes)
    if cv is not None and val_split is not None:
        message = f"validation split '{val_split}' unused: dataset.cv validates on held-out fold {cv[0]}"
        log.info("%s", message)
        notes.append(message)
        val_split = None
    test_split = _file_split("test", ds_cfg.test_split, ds_cfg.test_size, ds_cfg, notes)
    val = given(val_split, "dataset.validation_split")
    test = given(test_split, "dataset.test_split")
    if cv is not None and test is None and ds_cfg.test_size is None:
        raise ConfigError(cv_without_test(ds_cfg))

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
        n_test = _carve_rows("test_size", ds_cfg.test_size, len(train), ds_cfg)
        train, test = _stratified_carve(train, n_test, ds_cfg.split_seed)
        notes.append(f"test carved from train: {len(test)} rows (stratified, seed {ds_cfg.split_seed})")
    if cv is not None:
        train, val = _kfold(train, *cv, ds_cfg.split_seed, names, ds_cfg)
    elif val is None:
        val_rows = _carve_rows("val_size", ds_cfg.val_size, pool, ds_cfg, left=len(train))
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
    if cv is not None:
        fold_line = (
            f"fold {cv[0]}/{cv[1]}: {len(train):,} train / {len(val):,} validation "
            f"(stratified, split_seed {ds_cfg.split_seed})"
        )
        notes.append(fold_line)

    for split, ds in (("train", train), ("validation", val), ("test", test)):
        if len(ds) == 0:
            raise EncoderlabError(
                f"The {split} split of dataset '{ds_cfg.name}' is empty after subsetting "
                f"(max_train_samples={ds_cfg.max_train_samples}, max_eval_samples={ds_cfg.max_eval_samples}, "
                f"max_test_samples={ds_cfg.max_test_samples}, train_pool_size={ds_cfg.train_pool_size}, "
                f"samples_per_class={ds_cfg.samples_per_class}). Each split needs at least one row."
            )
    _check_train_classes(train, names, ds_cfg)
    splits = DatasetDict(train=train, validation=val, test=test)
    log.info(
        "Dataset %s: %s; %s",
        ds_cfg.name,
        {k: len(v) for k, v in splits.items()},
        "; ".join(notes) or "splits as given",
    )
    test_source = "validation" if test_is_validation else ("carved from train" if carved_test else test_split)
    if cv is not None:
        log.info(
            "Cross-validation %s; test: %s (%d rows, not in any fold)", fold_line, test_source, len(test)
        )
    return PreparedSplits(
        splits=splits,
        label_names=names,
        test_is_validation=test_is_validation,
        test_source=test_source,
        notes=notes,
        cv=cv,
    )
