"""LightningDataModule: load -> build splits -> tokenize (cached on disk) -> dynamically padded batches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from encoderlab.data.loading import load_raw_splits
from encoderlab.data.sampler import (
    BalancedSampler,
    EpochShuffleSampler,
    LengthGroupedBatchSampler,
    balance_groups,
    eval_batches,
)
from encoderlab.data.splits import PreparedSplits, prepare_splits
from encoderlab.data.word_dropout import WordDropoutCollator

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the tokenized layout changes


def cache_root(ds_cfg: DictConfig) -> Path:
    """Tokenization cache: dataset.cache_dir, else $ENCODERLAB_CACHE_DIR, else ~/.cache/encoderlab."""
    root = ds_cfg.cache_dir or os.environ.get("ENCODERLAB_CACHE_DIR") or "~/.cache/encoderlab"
    return Path(root).expanduser() / "tokenized"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer by what it does (class, vocabulary, special tokens, casing), not its path."""
    payload = json.dumps(
        [
            type(tokenizer).__name__,
            sorted(tokenizer.get_vocab().items()),
            tokenizer.all_special_tokens,
            getattr(tokenizer, "do_lower_case", None),
            tokenizer.model_input_names,
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _own_generator() -> torch.Generator:
    """A train loader's own generator (its workers' base seeds), seeded without drawing from the global RNG:
    creating the loader's iterator then leaves the dropout RNG alone, which a resumed run relies on."""
    return torch.Generator().manual_seed(torch.initial_seed())


class TextClassificationDataModule(L.LightningDataModule):
    """Train/validation/test batches for sequence classification from one dataset config."""

    def __init__(
        self, ds_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 42
    ) -> None:
        super().__init__()
        self.cfg = ds_cfg
        self.seed = seed
        self.prepared: PreparedSplits | None = None
        self.tokenized: dict[str, Dataset] = {}
        self.tokenization: dict[str, dict[str, Any]] = {}  # per split: rows, seconds, cache hit, file
        self.tokenizer: PreTrainedTokenizerBase | None = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """The tokenizer may depend on the prepared train split (a scratch model trains its own)."""
        self.tokenizer = tokenizer
        self.collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=self.cfg.pad_to_multiple_of)
        self.train_collator = self.collator
        if self.cfg.get("word_dropout", 0.0) > 0:
            self.train_collator = WordDropoutCollator(self.collator, tokenizer, self.cfg.word_dropout)

    # ---- building -------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        assert self.prepared is not None, "call setup() first"
        return self.prepared.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def task(self) -> str:
        """single_label, or multilabel (dataset.task)."""
        return str(self.cfg.get("task", "single_label") or "single_label")

    @property
    def label_counts(self) -> torch.Tensor:
        """(C,) train rows per label, after subsampling (multi-label: rows with the label on)."""
        assert self.prepared is not None, "call prepare() first"
        labels = np.asarray(self.prepared.splits["train"]["labels"])
        if labels.ndim == 2:
            return torch.as_tensor(labels.sum(axis=0), dtype=torch.long)
        return torch.as_tensor(np.bincount(labels.astype(np.int64), minlength=self.num_labels))

    def prepare(self) -> PreparedSplits:
        """Load and build the splits (no tokenization)."""
        if self.prepared is None:
            self.prepared = prepare_splits(load_raw_splits(self.cfg), self.cfg)
        return self.prepared

    def setup(self, stage: str | None = None) -> None:
        if self.tokenized:
            return
        self.prepare()
        assert self.tokenizer is not None, "set_tokenizer() before setup()"
        tok_id = tokenizer_fingerprint(self.tokenizer)
        settings = {
            "max_length": self.cfg.max_length,
            "pair": bool(self.cfg.text_pair_field),
            "format": CACHE_FORMAT,
        }
        for split, ds in self.prepared.splits.items():
            if split == "test" and self.prepared.test_is_validation:
                self.tokenized["test"] = self.tokenized["validation"]
                continue
            key = hashlib.sha256(json.dumps([ds._fingerprint, tok_id, settings]).encode()).hexdigest()[:24]
            self.tokenized[split] = self._tokenize(split, ds, key)

    def _tokenize(self, split: str, ds: Dataset, key: str) -> Dataset:
        folder = cache_root(self.cfg) / key
        folder.mkdir(parents=True, exist_ok=True)
        cache_file = folder / "tokens.arrow"
        hit = cache_file.is_file()
        tokenizer, max_length, pair = self.tokenizer, self.cfg.max_length, bool(self.cfg.text_pair_field)

        def encode(batch: dict) -> dict:
            second = batch["text_pair"] if pair else None
            return tokenizer(batch["text"], second, truncation=True, max_length=max_length)

        start = time.perf_counter()
        out = ds.map(
            encode,
            batched=True,
            batch_size=1000,
            remove_columns=[c for c in ds.column_names if c != "labels"],
            cache_file_name=str(cache_file),
            load_from_cache_file=True,
            new_fingerprint=key,
            desc=f"Tokenizing {split}",
        )
        seconds = time.perf_counter() - start
        self.tokenization[split] = {
            "rows": len(out),
            "seconds": seconds,
            "cache_hit": hit,
            "file": str(cache_file),
        }
        if hit:
            log.info(
                "Tokenized %s split loaded from cache %s (%d rows, %.2f s)",
                split,
                cache_file,
                len(out),
                seconds,
            )
        else:
            log.info(
                "Tokenized %s split: %d rows in %.2f s (cached to %s)", split, len(out), seconds, cache_file
            )
        return out

    def fingerprint(self) -> str:
        """Identity of the prepared (pre-tokenization) splits: same data + same split settings."""
        assert self.prepared is not None
        parts = [self.prepared.splits[s]._fingerprint for s in ("train", "validation", "test")]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _label_counts(self, split: Dataset) -> dict[str, int]:
        """Examples per label name in one split (the model card's label distribution); multi-label: rows
        where the label is on."""
        labels = np.asarray(split["labels"])
        if labels.ndim == 2:
            return {name: int((labels[:, i] > 0.5).sum()) for i, name in enumerate(self.label_names)}
        counts = np.bincount(np.asarray(split["labels"], dtype=np.int64), minlength=len(self.label_names))
        return {name: int(counts[i]) for i, name in enumerate(self.label_names)}

    def summary(self) -> dict[str, Any]:
        assert self.prepared is not None
        return {
            "sizes": {k: len(v) for k, v in self.prepared.splits.items()},
            "label_names": self.label_names,
            "label_counts": {k: self._label_counts(v) for k, v in self.prepared.splits.items()},
            "test_is_validation": self.prepared.test_is_validation,
            "test_source": self.prepared.test_source,
            "notes": self.prepared.notes,
            "tokenization": self.tokenization,
            "fingerprint": self.fingerprint(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    # ---- loaders --------------------------------------------------------------------------------
    def _replicas(self) -> tuple[int, int]:
        """(processes, this process's rank) of the fit or test being run: each loads its share."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def eval_batches(self, split: str, batch_size: int) -> list[list[int]]:
        """This process's validation/test batches (row indices): longest rows first when
        dataset.sort_eval_by_length, else in dataset order."""
        ds = self.tokenized[split]
        lengths = [len(ids) for ids in ds["input_ids"]] if self.cfg.sort_eval_by_length else None
        return eval_batches(len(ds), batch_size, lengths, *self._replicas())

    def _common(self, collate_fn) -> dict[str, Any]:
        return {
            "collate_fn": collate_fn,
            "num_workers": self.cfg.num_workers,
            "pin_memory": torch.cuda.is_available(),  # page-locked host batches copy to the GPU async
            "persistent_workers": self.cfg.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        """Shuffled from (seed, epoch) (resumable, independent of the global RNG); length-grouped when
        dataset.group_by_length; class-balanced draws when dataset.sampler=balanced. dataset.batch_size is
        per process."""
        ds = self.tokenized["train"]
        batch_size, (replicas, rank) = self.cfg.batch_size, self._replicas()
        if self.cfg.group_by_length:
            lengths = [len(ids) for ids in ds["input_ids"]]
            sampler = LengthGroupedBatchSampler(
                lengths, batch_size, self.seed, num_replicas=replicas, rank=rank
            )
        elif self.cfg.get("sampler", "shuffle") == "balanced":
            groups = balance_groups(np.asarray(ds["labels"]))
            sampler = BalancedSampler(groups, batch_size, self.seed, replicas, rank)
        else:
            sampler = EpochShuffleSampler(len(ds), batch_size, self.seed, replicas, rank)
        return DataLoader(
            ds, batch_sampler=sampler, generator=_own_generator(), **self._common(self.train_collator)
        )

    def _eval_loader(self, split: str) -> DataLoader:
        batches = self.eval_batches(split, self.cfg.eval_batch_size)
        return DataLoader(
            RowIndexed(self.tokenized[split]), batch_sampler=batches, **self._common(self.collator)
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class RowIndexed(torch.utils.data.Dataset):
    """A tokenized split whose rows carry their index (`row_index`): predictions made in length order, or
    by several processes, go back to the split's row order."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return {**self.ds[i], "row_index": i}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [
            {**row, "row_index": i} for row, i in zip(self.ds.__getitems__(indices), indices, strict=True)
        ]
