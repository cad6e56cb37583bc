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


TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt")


def _check_decodes(path: Path, encoding: str) -> None:
    """A csv/jsonl file that is not valid `encoding` text: name the file, the byte offset and the line,
    instead of the reader's traceback."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)()
    offset, line = 0, 1
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as ex:
                at = offset + ex.start
                line += chunk[: ex.start].count(b"\n")
                raise EncoderlabError(
                    f"{path} is not valid {encoding} text: byte 0x{chunk[ex.start]:02x} at byte offset {at} "
                    f"(line {line}) cannot be decoded ({ex.reason}). Set the file's encoding with "
                    f"dataset.encoding=<codec>, e.g. dataset.encoding=latin-1 (Western European) or "
                    f"dataset.encoding=cp1252 (Windows), or re-save the file as UTF-8."
                ) from ex
            offset += len(chunk)
            line += chunk.count(b"\n")


def _rows(path: Path, encoding: str = "utf-8") -> int | None:
    """Row count of a local data file, when cheap to know (None: unknown or not local)."""
    if not path.is_file():
        return None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    if path.suffix in TEXT_SUFFIXES:
        _check_decodes(path, encoding)
    if path.suffix in (".csv", ".tsv"):
        with path.open(encoding=encoding) as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)  # minus the header
    if path.suffix in (".json", ".jsonl"):
        with path.open(encoding=encoding) as f:
            return sum(1 for line in f if line.strip())
    return None


def _check_not_empty(name: str, files: dict, encoding: str = "utf-8") -> None:
    """`load_dataset` fails obscurely on a zero-row or undecodable file; say which split and file instead."""
    for split, paths in files.items():
        paths = [paths] if isinstance(paths, str) else list(paths)
        counts = [_rows(Path(p).expanduser(), encoding) for p in paths]
        if counts and all(c == 0 for c in counts):
            raise EncoderlabError(
                f"The '{split}' split of dataset '{name}' ({', '.join(map(str, paths))}) is empty: it has no rows. "
                "Every split needs at least one row (the train split to train on)."
            )


def load_raw_splits(ds_cfg: DictConfig) -> DatasetDict:
    """All splits the source offers, as a DatasetDict keyed by split name."""
    folder = mirror_folder(ds_cfg.name)
    if folder is not None:
        files = {p.stem: str(p) for p in sorted(folder.glob("*.parquet"))}
        if not files:
            raise EncoderlabError(f"The offline mirror folder {folder} holds no <split>.parquet files.")
        _check_not_empty(ds_cfg.name, files)
        return load_dataset("parquet", data_files=files)

    kwargs = {}
    if ds_cfg.data_files is not None:
        kwargs["data_files"] = (
            OmegaConf.to_container(ds_cfg.data_files, resolve=True)
            if OmegaConf.is_config(ds_cfg.data_files)
            else ds_cfg.data_files
        )
        files = kwargs["data_files"]
        encoding = ds_cfg.get("encoding", "utf-8")
        _check_not_empty(
            ds_cfg.name, files if isinstance(files, dict) else {ds_cfg.train_split: files}, encoding
        )
        if ds_cfg.path in ("csv", "json"):
            kwargs["encoding"] = encoding
    try:
        loaded = load_dataset(ds_cfg.path, ds_cfg.config_name, **kwargs)
    except Exception as ex:  # datasets raises many types (FileNotFound, ConnectionError, DatasetNotFound...)
        mirror = os.environ.get(DATA_DIR_ENV)
        if ds_cfg.path in ("csv", "json", "parquet"):
            hint = "check dataset.data_files (paths are relative to the directory you run in)"
        elif mirror:
            hint = (
                f"check the Hub id or local path; ENCODERLAB_DATA_DIR={mirror} has no '{ds_cfg.name}' folder"
            )
        else:
            hint = f"check the Hub id or local path; offline, set ENCODERLAB_DATA_DIR to a folder holding {ds_cfg.name}/<split>.parquet"
        cause = ex.__cause__ or ex
        reason = f"{type(ex).__name__}: " + " ".join(f"{cause}".split())[:500]
        raise EncoderlabError(
            f"Could not load dataset '{ds_cfg.name}' (dataset.path={ds_cfg.path!r}, "
            f"dataset.config_name={ds_cfg.config_name!r}): {reason}. "
            f"{hint[0].upper()}{hint[1:]}."
        ) from ex
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({ds_cfg.train_split: loaded})
    return loaded
