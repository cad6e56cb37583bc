"""A run's data as MLflow dataset inputs: one per split (train, validation, test), each with the dataset's
name, the split's fingerprint as digest, where it came from, its columns and types, and its row count;
the split is the input's `mlflow.data.context` tag (the UI's Dataset column and filters)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from encoderlab.data.loading import mirror_folder
from encoderlab.data.splits import PreparedSplits

# datasets' Value dtypes -> MLflow column types (anything else: string)
_TYPES = {
    "string": "string",
    "large_string": "string",
    "int64": "long",
    "int32": "integer",
    "int16": "integer",
    "int8": "integer",
    "float64": "double",
    "float32": "float",
    "bool": "boolean",
}


def _column_type(feature: Any) -> str:
    if type(feature).__name__ == "ClassLabel":
        return "long"
    return _TYPES.get(str(getattr(feature, "dtype", "string")), "string")


def _schema(features: Any) -> str:
    """Columns and types, in the `mlflow_colspec` form MLflow's own datasets log."""
    cols = [{"type": _column_type(f), "name": name, "required": True} for name, f in features.items()]
    return json.dumps({"mlflow_colspec": cols})


def _files(ds_cfg: DictConfig, raw_split: str) -> list[str] | None:
    """The local files the raw split was read from (dataset.data_files), when the config names files."""
    files = ds_cfg.data_files
    if files is None:
        return None
    files = OmegaConf.to_container(files, resolve=True) if OmegaConf.is_config(files) else files
    if isinstance(files, dict):
        files = files.get(raw_split, files.get(ds_cfg.train_split))
    if files is None:
        return None
    return [str(files)] if isinstance(files, str) else [str(f) for f in files]


def _source(ds_cfg: DictConfig, raw_split: str) -> tuple[str, dict[str, Any]]:
    """(source type, source) of a raw split: the offline mirror's parquet file, the local files, or the
    Hub dataset (path, config name, split)."""
    folder = mirror_folder(ds_cfg.name)
    if folder is not None:
        return "local", {"uri": (folder / f"{raw_split}.parquet").resolve().as_uri(), "split": raw_split}
    files = _files(ds_cfg, raw_split)
    if files is not None and ds_cfg.path in ("csv", "json", "parquet", "text"):
        uris = [Path(f).expanduser().resolve().as_uri() if "://" not in f else f for f in files]
        return "local", {"uri": uris[0] if len(uris) == 1 else uris, "format": ds_cfg.path}
    return "hugging_face", {"path": ds_cfg.path, "config_name": ds_cfg.config_name, "split": raw_split}


def split_inputs(ds_cfg: DictConfig, prepared: PreparedSplits) -> list[dict[str, Any]]:
    """One input per split (JSON-ready, as TrackedRun.log_inputs takes them). A test stage that reports on
    the validation split (GLUE) has the same rows: that split is logged once, as validation."""
    carved = ds_cfg.train_split  # a split carved from train comes from the train split's source
    raw = {
        "train": ds_cfg.train_split,
        "validation": carved if prepared.cv else (ds_cfg.validation_split or carved),
        "test": carved if prepared.test_source == "carved from train" else prepared.test_source,
    }
    out, seen = [], set()
    for split in ("train", "validation", "test"):
        ds = prepared.splits[split]
        if ds._fingerprint in seen:  # the same rows twice: MLflow links a dataset to a run once
            continue
        seen.add(ds._fingerprint)
        source_type, source = _source(ds_cfg, raw[split])
        out.append(
            {
                "name": str(ds_cfg.name),
                "digest": ds._fingerprint[:36],
                "source_type": source_type,
                "source": json.dumps(source),
                "schema": _schema(ds.features),
                "profile": json.dumps({"num_rows": len(ds)}),
                "context": split,
            }
        )
    return out
