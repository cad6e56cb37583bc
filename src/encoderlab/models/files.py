"""Checks on a model directory's files and on what a model can take, before anything is built from them:
a missing or damaged file is named here instead of deep inside `from_pretrained`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from omegaconf import DictConfig

from encoderlab.errors import EncoderlabError

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")  # positions offset by the padding index


def read_config(directory: Path, what: str) -> dict:
    """config.json of a model directory, or an error naming the file."""
    path = directory / "config.json"
    if not path.is_file():
        raise EncoderlabError(
            f"{what} {directory} has no config.json: it is not a save_pretrained model directory "
            "(expected config.json, model.safetensors and the tokenizer files)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as ex:
        raise EncoderlabError(
            f"{what} {directory}: {path.name} is not readable JSON ({' '.join(str(ex).split())}); "
            "the file is damaged or not a model config. Re-export the model (save_pretrained)."
        ) from ex
    if not isinstance(config, dict):
        raise EncoderlabError(f"{what} {directory}: {path.name} must hold a JSON object.")
    return config


def check_safetensors(path: Path, what: str) -> None:
    """A safetensors file whose header is unreadable or whose tensors run past the end of the file
    (an interrupted copy or download)."""
    size = path.stat().st_size
    damaged = f"{what}: {path} is damaged"
    redo = "Copy or export the model again (an interrupted copy or download leaves such a file)."
    if size < 8:
        raise EncoderlabError(f"{damaged}: it holds {size} bytes, less than a safetensors header. {redo}")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise EncoderlabError(
                f"{damaged}: its header claims {header_len} bytes, but the file holds {size}. {redo}"
            )
        try:
            header = json.loads(f.read(header_len))
        except ValueError as ex:
            raise EncoderlabError(f"{damaged}: its header is not valid JSON. {redo}") from ex
    offsets = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    needed = 8 + header_len + max(offsets, default=0)
    if needed > size:
        raise EncoderlabError(
            f"{damaged}: it is truncated, {size} bytes where its header needs {needed}. {redo}"
        )


def check_model_dir(directory: Path, what: str, tokenizer: bool = True) -> dict:
    """config.json, the weights (an intact safetensors file) and, with `tokenizer`, tokenizer files;
    returns the config."""
    config = read_config(directory, what)
    present = [w for w in WEIGHTS if (directory / w).is_file()]
    if not present:
        raise EncoderlabError(
            f"{what} {directory} has a config.json but no weights ({' or '.join(WEIGHTS)}): was the save "
            "interrupted, or were the weights left out of the copy?"
        )
    if present[0] == "model.safetensors":
        check_safetensors(directory / "model.safetensors", what)
    if tokenizer and not any((directory / t).is_file() for t in TOKENIZER_FILES):
        raise EncoderlabError(
            f"{what} {directory} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer "
            "beside the model (tokenizer.save_pretrained), or name one with tokenizer.name_or_path."
        )
    return config


def position_limit(config: dict) -> int | None:
    """The longest input (in tokens) a Hugging Face config's position embeddings cover."""
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    return limit - 2 if config.get("model_type") in ROBERTA_LIKE else limit


def check_model_source(cfg: DictConfig) -> None:
    """Before a training run opens: a local `model.name_or_path` directory holds an intact model, and
    `dataset.max_length` fits its position embeddings. Hub ids are left to the load (they need the
    network or its cache)."""
    from encoderlab.config import HFModelConfig

    if not isinstance(cfg.model, DictConfig) or cfg.model.get("_target_") != HFModelConfig._target_:
        return  # a model class of the user's own: its files are its business
    name = cfg.model.get("name_or_path")
    if not isinstance(name, str):
        return
    from encoderlab.models.hf_encoder import resolve_source

    directory = Path(resolve_source(name)).expanduser()
    if not directory.exists():
        if name.startswith((".", "/", "~")):
            raise EncoderlabError(
                f"model.name_or_path={name!r}: the local directory {directory} does not exist. It must be a "
                "Hub model id or a directory made by save_pretrained (config.json, weights, tokenizer files)."
            )
        return
    if not directory.is_dir():
        raise EncoderlabError(f"model.name_or_path={name!r} is a file; pass a save_pretrained directory.")
    own_tokenizer = cfg.tokenizer.kind in ("auto", "pretrained") and not (
        cfg.tokenizer.get("name_or_path") or cfg.model.get("tokenizer_name_or_path")
    )
    config = check_model_dir(directory, "model.name_or_path", tokenizer=own_tokenizer)
    limit = position_limit(config)
    if limit is not None and cfg.dataset.max_length > limit:
        raise EncoderlabError(
            f"dataset.max_length={cfg.dataset.max_length} is longer than the model takes: {directory} has "
            f"{limit} positions (max_position_embeddings in config.json). Set dataset.max_length={limit} or less."
        )


def check_vocabulary(net: object, tokenizer: object) -> None:
    """A tokenizer with more ids than the model's embedding rows would index past it at the first batch
    holding such a token (an IndexError mid-training): name both sizes instead."""
    embeddings = getattr(net, "input_embeddings", None)
    if not callable(embeddings):
        return
    rows = getattr(embeddings(), "num_embeddings", None)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    if rows is not None and size is not None and size > rows:
        raise EncoderlabError(
            f"The tokenizer has {size} tokens but the model's embedding has {rows} rows: ids {rows}..{size - 1} "
            "would index past it. Use the model's own tokenizer (tokenizer=auto), a tokenizer with at most "
            f"{rows} tokens, or a model sized for this one."
        )
