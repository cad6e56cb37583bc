"""Tokenizers for a run: the checkpoint's own, a named pretrained one, or one trained on the train split.

Trained tokenizers (WordPiece or byte-level BPE, `tokenizers` library) see the training split only, and are
cached as `PreTrainedTokenizerFast` directories keyed by (train-data fingerprint, settings), so a rerun on
the same data loads instead of retraining.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first: id 0


def train_tokenizer(
    texts: Iterable[str], kind: str, vocab_size: int, min_frequency: int = 2, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """Train a WordPiece, byte-level BPE or word-level tokenizer that adds [CLS] ... [SEP] like BERT.

    wordlevel keeps whole words seen at least `min_frequency` times and maps every other word to [UNK],
    as the word-vocabulary CNN/LSTM baselines do: an unseen word carries no spurious sub-word signal."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()]
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
        )
    else:
        raise EncoderlabError(
            f"Config error: bad value for 'tokenizer.kind': {kind!r}. Allowed: auto, pretrained, wordpiece, bpe, wordlevel."
        )
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _pretrained(source: str, model_cfg: DictConfig) -> PreTrainedTokenizerBase:
    from encoderlab.models.hf_encoder import resolve_source

    source = resolve_source(source)
    try:
        return AutoTokenizer.from_pretrained(
            source,
            revision=model_cfg.get("revision"),
            trust_remote_code=model_cfg.get("trust_remote_code", False),
        )
    except (OSError, ValueError) as ex:
        from encoderlab.models.hf_encoder import load_error

        raise load_error("tokenizer", source, ex) from ex


def build_tokenizer(
    tok_cfg: DictConfig,
    model_cfg: DictConfig,
    train_texts: list[str],
    data_fingerprint: str,
    cache_root: Path,
) -> tuple[PreTrainedTokenizerBase, dict]:
    """The run's tokenizer and a summary (kind, vocab size, cache hit, seconds)."""
    kind = tok_cfg.kind
    if kind == "auto":  # a pretrained checkpoint brings its tokenizer; a scratch model trains one
        kind = "pretrained" if model_cfg.get("name_or_path") else "wordpiece"
    if kind == "pretrained":
        source = (
            tok_cfg.name_or_path or model_cfg.get("tokenizer_name_or_path") or model_cfg.get("name_or_path")
        )
        if not source:
            raise EncoderlabError(
                "Config error: tokenizer=pretrained needs tokenizer.name_or_path (this model has no tokenizer of its own)."
            )
        tok = _pretrained(source, model_cfg)
        return tok, {"kind": "pretrained", "source": source, "vocab_size": len(tok)}

    settings = {
        "kind": kind,
        "vocab_size": tok_cfg.vocab_size,
        "min_frequency": tok_cfg.min_frequency,
        "lowercase": tok_cfg.lowercase,
    }
    key = hashlib.sha256(json.dumps([data_fingerprint, settings], sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_root / "tokenizers" / key
    start = time.perf_counter()
    if (folder / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(folder)
        hit = True
        log.info("Tokenizer (%s, vocab %d) loaded from cache %s", kind, len(tok), folder)
    else:
        tok = train_tokenizer(train_texts, kind, tok_cfg.vocab_size, tok_cfg.min_frequency, tok_cfg.lowercase)
        tok.save_pretrained(folder)
        hit = False
        log.info(
            "Trained a %s tokenizer on %d train texts: vocab %d in %.1f s",
            kind,
            len(train_texts),
            len(tok),
            time.perf_counter() - start,
        )
    return tok, {
        **settings,
        "vocab_size_actual": len(tok),
        "cache_hit": hit,
        "seconds": time.perf_counter() - start,
        "dir": str(folder),
    }
