"""Load the raw splits of a dataset config through `datasets.load_dataset`.

With ENCODERLAB_DATA_DIR set and `<dir>/<dataset.name>/` present, the splits come from the parquet
files there (`<split>.parquet`) through the same `load_dataset` call, so nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import DatasetDict, load_dataset
from omegaconf import DictConfig, OmegaConf

from encoderlab.errors import EncoderlabError

DATA_DIR_ENV = "ENCODERLAB_DATA_DIR"


def mirror_folder(name: str) -> Path | None:
    """The offline-mirror folder for a dataset, when ENCODERLAB_DATA_DIR holds one."""
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        return None
    folder = Path(root).expanduser() / name
    return folder if folder.is_dir() else None


def load_raw_splits(ds_cfg: DictConfig) -> DatasetDict:
    """All splits the source offers, as a DatasetDict keyed by split name."""
    folder = mirror_folder(ds_cfg.name)
    if folder is not None:
        files = {p.stem: str(p) for p in sorted(folder.glob("*.parquet"))}
        if not files:
            raise EncoderlabError(f"The offline mirror folder {folder} holds no <split>.parquet files.")
        return load_dataset("parquet", data_files=files)

    kwargs = {}
    if ds_cfg.data_files is not None:
        kwargs["data_files"] = (
            OmegaConf.to_container(ds_cfg.data_files)
            if OmegaConf.is_config(ds_cfg.data_files)
            else ds_cfg.data_files
        )
    try:
        loaded = load_dataset(ds_cfg.path, ds_cfg.config_name, **kwargs)
    except Exception as ex:  # datasets raises many types (FileNotFound, ConnectionError, DatasetNotFound...)
        mirror = os.environ.get(DATA_DIR_ENV)
        hint = (
            f"ENCODERLAB_DATA_DIR={mirror} has no '{ds_cfg.name}' folder"
            if mirror
            else f"offline, set ENCODERLAB_DATA_DIR to a folder holding {ds_cfg.name}/<split>.parquet"
        )
        reason = " ".join(str(ex).split())[:500]
        raise EncoderlabError(
            f"Could not load dataset '{ds_cfg.name}' (dataset.path={ds_cfg.path!r}, "
            f"dataset.config_name={ds_cfg.config_name!r}): {type(ex).__name__}: {reason}. "
            f"Check the Hub id or local path; {hint}."
        ) from ex
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({ds_cfg.train_split: loaded})
    return loaded
