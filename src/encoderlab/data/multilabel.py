"""Multi-label targets (dataset.task=multilabel): a (C,) 0/1 float vector per row.

Two layouts: one list column (`label_field: labels`, each row a list of label ids or names, empty for a
row with no label) or several 0/1 columns (`label_field: [joy, anger, ...]`, the column names are the
label names unless dataset.label_names says otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from datasets import ClassLabel, Dataset, Sequence
from omegaconf import DictConfig, ListConfig

from encoderlab.errors import EncoderlabError

SEPARATOR = ";"  # between the labels of a set in predictions files and `encoderlab predict` output


def is_multilabel(ds_cfg: DictConfig) -> bool:
    return ds_cfg.get("task", "single_label") == "multilabel"


def label_columns(ds_cfg: DictConfig) -> list[str]:
    """The label column(s) a config reads."""
    field = ds_cfg.label_field
    return [str(f) for f in field] if isinstance(field, (list, ListConfig)) else [str(field)]


def _is_columns(ds_cfg: DictConfig) -> bool:
    return isinstance(ds_cfg.label_field, (list, ListConfig))


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def label_names(train: Dataset, ds_cfg: DictConfig, where: str) -> list[str]:
    """dataset.label_names, else the 0/1 column names, the list column's ClassLabel names, the sorted
    names found in train, or (int ids without names) "0".."max id"."""
    if ds_cfg.label_names is not None:
        names = [str(n) for n in ds_cfg.label_names]
        if len(set(names)) != len(names) or len(names) < 2:
            raise EncoderlabError(f"dataset.label_names must list at least 2 distinct names; got {names}.")
        if _is_columns(ds_cfg) and len(names) != len(ds_cfg.label_field):
            raise EncoderlabError(
                f"dataset.label_names has {len(names)} names but dataset.label_field lists "
                f"{len(ds_cfg.label_field)} 0/1 columns: give one name per column, or drop label_names to "
                "use the column names."
            )
        return names
    if _is_columns(ds_cfg):
        return label_columns(ds_cfg)
    feature = train.features[ds_cfg.label_field]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, (Sequence, list)) and isinstance(inner, ClassLabel):
        return list(inner.names)
    if isinstance(feature, list) and feature and isinstance(feature[0], ClassLabel):
        return list(feature[0].names)
    values = {v for row in train[ds_cfg.label_field] if isinstance(row, (list, tuple)) for v in row}
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [str(i) for i in range(max(2, int(max(values)) + 1))]
    names = sorted(str(v) for v in values if not _empty(v))
    if len(names) < 2:
        raise EncoderlabError(
            f"{where} has {len(names)} distinct label(s) in the list column '{ds_cfg.label_field}'; "
            "multi-label classification needs at least 2 (or set dataset.label_names)."
        )
    return names


def label_matrix(
    ds: Dataset,
    ds_cfg: DictConfig,
    names: list[str],
    where: str,
    number: Callable[[int], int],
    convention: str,
) -> np.ndarray:
    """(N, C) float32 0/1 targets; an id out of range, an unknown name or a value other than 0/1 in a
    label column is an error naming the row (`number`: 0-based index -> the user's row number)."""
    n, c = len(ds), len(names)
    out = np.zeros((n, c), dtype=np.float32)
    if _is_columns(ds_cfg):
        for j, column in enumerate(label_columns(ds_cfg)):
            for row, value in enumerate(ds[column]):
                if isinstance(value, (bool, np.bool_)) or (
                    isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1)
                ):
                    out[row, j] = float(value)
                else:
                    raise EncoderlabError(
                        f"Row {number(row)} ({convention}) of {where} has {value!r} in label column "
                        f"'{column}'; with dataset.label_field a list of columns (dataset.task=multilabel) "
                        "each of them must hold 0 or 1 (or true/false) in every row. Fix the data."
                    )
        return out
    index = {name: i for i, name in enumerate(names)}
    for row, value in enumerate(ds[ds_cfg.label_field]):
        if _empty(value):
            continue  # a row with no label
        if not isinstance(value, (list, tuple)):
            raise EncoderlabError(
                f"Row {number(row)} ({convention}) of {where} has {value!r} in column "
                f"'{ds_cfg.label_field}'; dataset.task=multilabel reads a list of label ids or names per row "
                '(e.g. [0, 3] or ["joy", "love"]), or several 0/1 columns (dataset.label_field=[col_a, '
                "col_b, ...])."
            )
        for v in value:
            is_int = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            if is_int and 0 <= v < c:
                out[row, int(v)] = 1.0
            elif not is_int and str(v) in index:
                out[row, index[str(v)]] = 1.0
            else:
                allowed = f"ids 0..{c - 1}" if is_int else f"names {names}"
                raise EncoderlabError(
                    f"Row {number(row)} ({convention}) of {where} has label {v!r} in column "
                    f"'{ds_cfg.label_field}', which is not one of the label {allowed}. Fix the data or "
                    "dataset.label_names."
                )
    return out


def label_sets(targets: np.ndarray, names: list[str]) -> list[str]:
    """'joy;love' per row of a (N, C) 0/1 matrix ('' for a row with no label)."""
    return [SEPARATOR.join(names[j] for j in np.flatnonzero(row > 0.5)) for row in np.asarray(targets)]
