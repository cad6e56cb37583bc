"""Tiny real artifacts for fast tests: a 2-layer BERT with a WordPiece vocab trained on real text, and a
small offline data mirror cut from ../shared/data (same layout: <name>/<split>.parquet)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_tiny_bert(directory: Path, texts: list[str], vocab_size: int = 2000) -> Path:
    """Train a WordPiece tokenizer on `texts`, build a 2-layer BertForSequenceClassification, save both
    with save_pretrained so they load back through from_pretrained(directory)."""
    from transformers import BertConfig, BertForSequenceClassification

    from encoderlab.tokenization import train_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, "wordpiece", vocab_size=vocab_size)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _cut(frame: pd.DataFrame, n: int, seed: int = 0, text_chars: int = 300) -> pd.DataFrame:
    frame = frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)
    for col in ("text", "content", "completion", "sentence"):
        if col in frame:
            frame[col] = frame[col].str.slice(0, text_chars)
    return frame


def build_tiny_mirror(root: Path) -> Path:
    """Small copies of every dataset config's mirror folder (amazon_polarity and everyday_conversations,
    which have no offline copy, are rebuilt from real reviews/sentences with their Hub column names)."""
    src = SHARED_DATA

    def write(name: str, split: str, frame: pd.DataFrame) -> None:
        (root / name).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / name / f"{split}.parquet", index=False)

    write("sst2", "train", _cut(pd.read_parquet(src / "sst2/train.parquet"), 600))
    write("sst2", "validation", _cut(pd.read_parquet(src / "sst2/validation.parquet"), 120))
    imdb = pd.read_parquet(src / "imdb/train.parquet")
    write("imdb", "train", _cut(imdb, 1400))
    write("imdb", "test", _cut(pd.read_parquet(src / "imdb/test.parquet"), 200))
    for name in ("trec", "amazon_reviews", "uci_sentences"):
        write(name, "train", _cut(pd.read_parquet(src / f"{name}/train.parquet"), 600))
        write(name, "test", _cut(pd.read_parquet(src / f"{name}/test.parquet"), 150))
    reviews = pd.read_parquet(src / "amazon_reviews/train.parquet")
    polarity = reviews.rename(columns={"text": "content"})[["label", "title", "content"]]
    write("amazon_polarity", "train", _cut(polarity, 600))
    write("amazon_polarity", "test", _cut(polarity, 150, seed=1))
    sentences = pd.read_parquet(src / "uci_sentences/train.parquet")
    convo = sentences.rename(columns={"text": "completion", "source": "topic"})[["completion", "topic"]]
    write("everyday_conversations", "train_sft", _cut(convo, 400))
    write("everyday_conversations", "test_sft", _cut(convo, 100, seed=1))
    return root
