"""Tiny artifacts for fast tests, built from what a fresh clone has: a 2-layer BERT with a WordPiece vocab
trained on real text, and a small offline data mirror (layout <name>/<split>.parquet) with the column
names and label conventions of every dataset config, generated from the bundled UCI sentiment sentences
(encoderlab/data/bundled/) and from question templates. Nothing here reads ../shared/data or the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from encoderlab.paths import bundled_data_dir

# ---- TREC-like questions: coarse label = the part of the fine label before ':' -------------------------
# (template, fine label, share): shares are uneven, as in TREC, so some fine classes stay rare
_TREC_TEMPLATES = [
    ("What does {abbr} stand for ?", "ABBR:exp", 0.04),
    ("What is the abbreviation for the {org} ?", "ABBR:abb", 0.01),
    ("What is a {thing} ?", "DESC:def", 0.08),
    ("How do you {verb} a {thing} ?", "DESC:manner", 0.05),
    ("Why does the {animal} {verb} ?", "DESC:reason", 0.04),
    ("What is the origin of the {thing} ?", "DESC:desc", 0.03),
    ("What {animal} is the largest in {country} ?", "ENTY:animal", 0.05),
    ("What color is a {thing} ?", "ENTY:color", 0.03),
    ("What sport do people in {country} play ?", "ENTY:sport", 0.03),
    ("What food is {city} famous for ?", "ENTY:food", 0.04),
    ("What instrument did {person} play ?", "ENTY:instru", 0.01),
    ("Who invented the {thing} ?", "HUM:ind", 0.09),
    ("What company makes the {thing} ?", "HUM:gr", 0.04),
    ("Who was {person} ?", "HUM:desc", 0.02),
    ("Where is {city} ?", "LOC:other", 0.05),
    ("What city is the capital of {country} ?", "LOC:city", 0.04),
    ("What country borders {country} ?", "LOC:country", 0.03),
    ("What state is {city} in ?", "LOC:state", 0.02),
    ("How many {animal} live in {country} ?", "NUM:count", 0.06),
    ("When was {person} born ?", "NUM:date", 0.07),
    ("How far is {city} from {city2} ?", "NUM:dist", 0.03),
    ("How much does a {thing} cost ?", "NUM:money", 0.03),
    ("What year did {person} die ?", "NUM:date", 0.04),
    ("How tall is the {thing} in {city} ?", "NUM:other", 0.03),
]
_FILLERS = {
    "abbr": ["NASA", "UN", "CIA", "BBC", "NATO", "IBM", "FBI", "AIDS", "DNA", "laser"],
    "org": ["United Nations", "World Bank", "Red Cross", "Peace Corps", "National Guard"],
    "thing": [
        "telephone",
        "bridge",
        "tower",
        "camera",
        "clock",
        "bicycle",
        "piano",
        "compass",
        "tulip",
        "comet",
    ],
    "verb": ["build", "clean", "fix", "paint", "measure", "grow", "sleep", "swim", "migrate", "glow"],
    "animal": ["elephant", "wolf", "penguin", "shark", "eagle", "bear", "camel", "whale", "tiger", "frog"],
    "country": ["France", "Japan", "Brazil", "Kenya", "Canada", "Peru", "Norway", "India", "Egypt", "Chile"],
    "city": ["Paris", "Tokyo", "Boston", "Cairo", "Lima", "Oslo", "Denver", "Sydney", "Rome", "Dallas"],
    "person": ["Mozart", "Lincoln", "Einstein", "Cleopatra", "Darwin", "Gandhi", "Picasso", "Newton"],
}


def trec_questions(n: int, seed: int) -> pd.DataFrame:
    """Rows with TREC's columns: text, coarse_label (e.g. "NUM"), fine_label (e.g. "NUM:date")."""
    rng = np.random.default_rng(seed)
    shares = np.array([t[2] for t in _TREC_TEMPLATES])
    picks = rng.choice(len(_TREC_TEMPLATES), size=n, p=shares / shares.sum())
    rows = []
    for k in picks:
        template, fine, _ = _TREC_TEMPLATES[k]
        fill = {key: rng.choice(words) for key, words in _FILLERS.items()}
        fill["city2"] = rng.choice(_FILLERS["city"])
        rows.append({"text": template.format(**fill), "coarse_label": fine.split(":")[0], "fine_label": fine})
    return pd.DataFrame(rows)


# ---- texts from the bundled sentences --------------------------------------------------------------------


def bundled_sentences() -> pd.DataFrame:
    """The 3,000 UCI sentences shipped with encoderlab: text, label (0/1), source (amazon, imdb, yelp)."""
    folder = bundled_data_dir() / "uci_sentences"
    return pd.concat([pd.read_parquet(folder / f"{s}.parquet") for s in ("train", "test")], ignore_index=True)


def joined_reviews(sentences: pd.DataFrame, n: int, seed: int, most: int = 8) -> pd.DataFrame:
    """n reviews of 1..most same-label sentences each (varied lengths): text, label, first_sentence."""
    rng = np.random.default_rng(seed)
    by_label = {y: g["text"].tolist() for y, g in sentences.groupby("label")}
    labels = rng.permutation(np.arange(n) % 2)
    rows = []
    for y in labels:
        pool = by_label[int(y)]
        picked = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(1, most + 1)), replace=False)]
        rows.append({"text": " ".join(picked), "label": int(y), "first_sentence": picked[0]})
    return pd.DataFrame(rows)


def _cut(frame: pd.DataFrame, n: int, seed: int = 0, text_chars: int = 300) -> pd.DataFrame:
    frame = frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)
    for col in ("text", "content", "completion", "sentence"):
        if col in frame:
            frame[col] = frame[col].str.slice(0, text_chars)
    return frame


def build_tiny_mirror(root: Path) -> Path:
    """Small stand-ins for every dataset config's mirror folder, with the real column names and labels.
    uci_sentences has no folder: its config reads the bundled files."""

    def write(name: str, split: str, frame: pd.DataFrame) -> None:
        (root / name).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / name / f"{split}.parquet", index=False)

    sentences = bundled_sentences()
    shuffled = sentences.sample(frac=1.0, random_state=0).reset_index(drop=True)
    train_pool, test_pool = shuffled.iloc[:2400], shuffled.iloc[2400:]

    # SST-2: sentence (GLUE's trailing space kept), label, idx; labelled validation, no test split
    for split, pool, n in (("train", train_pool, 600), ("validation", test_pool, 120)):
        frame = _cut(pool, n)
        write(
            "sst2",
            split,
            pd.DataFrame({"sentence": frame["text"] + " ", "label": frame["label"]}).assign(
                idx=range(len(frame))
            ),
        )

    # IMDb: longer reviews (several sentences), text + label
    for split, pool, n, seed in (("train", train_pool, 1400, 1), ("test", test_pool, 200, 2)):
        write("imdb", split, _cut(joined_reviews(pool, n, seed)[["text", "label"]], n))

    # TREC: string coarse and fine labels
    write("trec", "train", trec_questions(600, seed=3))
    write("trec", "test", trec_questions(150, seed=4))

    # Blitzer amazon_reviews: text, label, domain, title, rating (4-5 for positive, 1-2 for negative)
    domains = ["books", "dvd", "electronics", "kitchen"]
    for split, pool, n, seed in (("train", train_pool, 600, 5), ("test", test_pool, 150, 6)):
        rng = np.random.default_rng(seed)
        reviews = joined_reviews(pool, n, seed, most=4)
        write(
            "amazon_reviews",
            split,
            _cut(
                pd.DataFrame(
                    {
                        "text": reviews["text"],
                        "label": reviews["label"],
                        "domain": rng.choice(domains, size=n),
                        "title": reviews["first_sentence"].str.split().str[:4].str.join(" "),
                        "rating": np.where(
                            reviews["label"] == 1, rng.choice([4.0, 5.0], n), rng.choice([1.0, 2.0], n)
                        ),
                    }
                ),
                n,
            ),
        )

    # amazon_polarity (Hub columns): title, content, label
    for split, pool, n, seed in (("train", train_pool, 600, 7), ("test", test_pool, 150, 8)):
        reviews = joined_reviews(pool, n, seed, most=4)
        title = reviews["first_sentence"].str.split().str[:4].str.join(" ")
        write(
            "amazon_polarity",
            split,
            _cut(pd.DataFrame({"label": reviews["label"], "title": title, "content": reviews["text"]}), n),
        )

    # everyday_conversations (Hub columns): completion (a dialogue), topic (string labels from the data)
    for split, n, seed in (("train_sft", 400, 9), ("test_sft", 100, 10)):
        rng = np.random.default_rng(seed)
        rows = []
        for topic, group in sentences.groupby("source"):
            texts = group["text"].tolist()
            for _ in range(n // 3 + (1 if topic == "amazon" else 0)):
                a, b = rng.choice(len(texts), size=2, replace=False)
                rows.append(
                    {"completion": f"User: {texts[a]}\nAssistant: {texts[b]}", "topic": f"{topic} reviews"}
                )
        write("everyday_conversations", split, _cut(pd.DataFrame(rows), n, seed=seed))

    # go_emotions (multi-label): text, labels (sorted emotion ids 0-27), id; positive sentences get
    # admiration/joy/love, negative ones anger/annoyance/sadness, some rows neutral (27) alone
    for split, pool, n, seed in (
        ("train", train_pool, 300, 11),
        ("validation", test_pool, 60, 12),
        ("test", test_pool, 60, 13),
    ):
        rng = np.random.default_rng(seed)
        frame = _cut(pool, n, seed=seed)
        emotions = {1: [0, 17, 18], 0: [2, 3, 25]}
        labels = [
            [27]
            if rng.random() < 0.2
            else sorted(rng.choice(emotions[int(y)], size=int(rng.integers(1, 3)), replace=False).tolist())
            for y in frame["label"]
        ]
        write(
            "go_emotions",
            split,
            pd.DataFrame({"text": frame["text"], "labels": labels, "id": [f"{split}{i}" for i in range(n)]}),
        )
    return root


def corpus(mirror: Path) -> list[str]:
    """Texts of the tiny mirror plus the bundled sentences: what the tiny BERT's WordPiece learns from."""
    texts = bundled_sentences()["text"].tolist()
    for name, column in (("sst2", "sentence"), ("imdb", "text"), ("trec", "text")):
        for path in sorted((mirror / name).glob("*.parquet")):
            texts += pd.read_parquet(path)[column].tolist()
    return texts


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
