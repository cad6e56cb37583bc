"""Word dropout: training tokens replaced by [UNK] at random (Iyyer et al. 2015; Sennrich et al. 2016).

With a word-level vocabulary every word unseen in training is [UNK] at test time. Training on some
[UNK]s teaches the model to classify from the rest of the sentence (the question word, the syntax)
instead of from whichever rare word it memorised.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


class WordDropoutCollator:
    """Wraps a padding collator: after padding, each real non-special token becomes [UNK] with
    probability `p`. Uses torch's global RNG, so Lightning's seed_everything makes it reproducible."""

    def __init__(self, collator: Any, tokenizer: PreTrainedTokenizerBase, p: float) -> None:
        if tokenizer.unk_token_id is None:
            raise ValueError("dataset.word_dropout needs a tokenizer with an [UNK] token")
        self.collator = collator
        self.p = p
        self.unk_id = tokenizer.unk_token_id
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        ids = batch["input_ids"]  # (B, T)
        droppable = ~torch.isin(ids, self.special_ids)  # padding and [CLS]/[SEP] stay
        if "attention_mask" in batch:
            droppable &= batch["attention_mask"].bool()
        drop = droppable & (torch.rand(ids.shape) < self.p)
        batch["input_ids"] = ids.masked_fill(drop, self.unk_id)
        return batch
