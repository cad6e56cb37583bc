"""A model of the user's own: any nn.Module built from `model._target_` whose forward(batch) returns logits
trains, tests and gets the default analysis; the analysis stages whose optional method it lacks
(encoderlab/models/capabilities.py) are skipped, not a crash."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from helpers import FAST, all_runs


class MeanEmbeddingClassifier(nn.Module):
    """Token embeddings averaged over the real tokens, then a linear layer. It offers input_embeddings()
    (attributions) but no attention_maps(batch)."""

    def __init__(self, num_labels: int, tokenizer, dim: int = 16, id2label: dict | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(len(tokenizer), dim, padding_idx=tokenizer.pad_token_id)
        self.head = nn.Linear(dim, num_labels)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.emb(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, dim)
        return self.head(pooled)  # (B, num_labels)

    def input_embeddings(self) -> nn.Module:
        return self.emb


class PlainClassifier(nn.Module):
    """forward(batch) -> logits and nothing of the optional interface."""

    def __init__(self, num_labels: int = 2, vocab_size: int = 100) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab_size, 8)
        self.head = nn.Linear(8, num_labels)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.bag(batch["input_ids"]))  # (B, num_labels)


def _model_config(isolated, text: str):
    (isolated / "my_conf" / "model").mkdir(parents=True)
    (isolated / "my_conf" / "model" / "mine.yaml").write_text(text)
    return "--config-dir", str(isolated / "my_conf"), "model=mine"


@pytest.mark.slow
def test_a_users_model_trains_and_gets_the_default_analysis(cli, isolated, mlflow_client):
    """Its own keys (dim) pass the config check; attention is skipped with a line naming attention_maps;
    attributions use its input_embeddings(); the run finishes with the report written."""
    config_dir = _model_config(isolated, f"_target_: {__name__}.MeanEmbeddingClassifier\ndim: 8\n")
    res = cli(
        "train",
        *config_dir,
        "tokenizer.vocab_size=500",
        "analysis.attention.enabled=true",
        "analysis.attributions.enabled=true",
        "analysis.attributions.n_steps=8",
        "analysis.mc_dropout.passes=2",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    assert run.info.status == "FINISHED"
    assert run.data.params["model._target_"] == f"{__name__}.MeanEmbeddingClassifier"
    assert run.data.params["model.dim"] == "8"
    assert "test/accuracy" in run.data.metrics
    (run_dir,) = (isolated / "outputs" / "runs").glob("*/*")
    report = run_dir / "report"
    assert (report / "report.html").is_file() and (report / "attributions" / "attributions.json").is_file()
    assert not (report / "attention").exists()
    log = (run_dir / "train.log").read_text()
    skipped = [line.split(" - ", 1)[1] for line in log.splitlines() if "skipped: MeanEmbedding" in line]
    assert skipped == [
        "Attention maps skipped: MeanEmbeddingClassifier has no attention_maps(batch) method "
        "(encoderlab/models/capabilities.py)."
    ]


def test_a_users_model_config_needs_a_target(cli, isolated):
    res = cli("train", *_model_config(isolated, "dim: 8\n"), "trainer.fast_dev_run=true")
    assert res.code == 2, res.err
    assert "'model._target_' is required" in res.err
    assert not (isolated / "outputs" / "mlflow.db").exists()


def test_analysis_skips_what_a_model_does_not_offer(tmp_path, caplog):
    from encoderlab.analysis.attention import attention_report
    from encoderlab.analysis.attributions import attribution_report
    from encoderlab.tokenization import train_tokenizer

    tok = train_tokenizer(["a good film", "a bad film"] * 5, "wordlevel", vocab_size=100, min_frequency=1)
    net = PlainClassifier(vocab_size=len(tok))
    with caplog.at_level(logging.INFO, logger="encoderlab"):
        assert attention_report(net, tok, ["a good film"], tmp_path / "att") == []
        assert attribution_report(net, tok, ["a good film"], tmp_path / "ig", ["neg", "pos"]) == []
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "Attention maps skipped",
        "Attributions skipped",
    ]
    assert "no input_embeddings() method" in caplog.records[1].getMessage()
    assert not (tmp_path / "att").exists() and not (tmp_path / "ig").exists()
