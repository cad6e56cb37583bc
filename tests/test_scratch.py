"""Correctness of the from-scratch encoder (encoderlab/models/scratch.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoderlab.errors import ConfigError
from encoderlab.models.scratch import ScratchConfig, ScratchEncoder

FAST_ARGS = ["trainer.enable_progress_bar=false", "dataset.batch_size=16"]


def _model(**kw) -> ScratchEncoder:
    torch.manual_seed(0)
    cfg = ScratchConfig(
        vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_positions=128, num_labels=3, **kw
    )
    return ScratchEncoder(cfg).eval()


def _padded(ids: list[int], width: int) -> dict[str, torch.Tensor]:
    x = torch.zeros(1, width, dtype=torch.long)
    x[0, : len(ids)] = torch.tensor(ids)
    mask = torch.zeros(1, width, dtype=torch.long)
    mask[0, : len(ids)] = 1
    return {"input_ids": x, "attention_mask": mask}


SENTENCE = [2, 17, 33, 41, 8, 59, 61, 3]


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_logits_do_not_depend_on_padding(pooling, positions, norm):
    model = _model(pooling=pooling, positions=positions, norm=norm)
    with torch.no_grad():
        short = model(_padded(SENTENCE, 12))
        long = model(_padded(SENTENCE, 64))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_positions_make_the_model_order_sensitive(positions):
    model = _model(positions=positions, pooling="mean")
    reordered = [SENTENCE[0], *reversed(SENTENCE[1:-1]), SENTENCE[-1]]
    with torch.no_grad():
        a = model(_padded(SENTENCE, 12))
        b = model(_padded(reordered, 12))
    assert (a - b).abs().max() > 1e-4


def test_attention_rows_sum_to_one_and_ignore_padding():
    model = _model()
    batch = _padded(SENTENCE, 20)
    with torch.no_grad():
        logits, maps = model(batch, return_attentions=True)
        plain = model(batch)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)  # eager path == SDPA path
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (1, 4, 20, 20)
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 20))
        assert torch.all(w[..., len(SENTENCE) :] == 0)


def test_one_batch_overfits():
    torch.manual_seed(0)
    model = ScratchEncoder(
        ScratchConfig(
            vocab_size=100,
            d_model=32,
            n_layers=2,
            n_heads=4,
            d_ff=64,
            max_positions=32,
            num_labels=3,
            dropout=0.0,
        )
    )
    ids = torch.randint(4, 100, (8, 16))
    mask = torch.ones_like(ids)
    mask[4:, 10:] = 0
    ids[mask == 0] = 0
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model({"input_ids": ids, "attention_mask": mask}), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_bad_head_count_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"n_heads=5 must divide model.d_model=128"):
        ScratchConfig(d_model=128, n_heads=5)


def test_bert_style_init():
    model = _model()
    w = model.blocks[0].mlp.up.weight
    assert abs(w.std().item() - 0.02) < 0.005 and torch.all(model.blocks[0].mlp.up.bias == 0)
    assert torch.all(model.tok_emb.weight[0] == 0)  # padding row


@pytest.mark.slow
def test_exported_model_reloads_to_identical_predictions(cli, isolated):
    """The run's model/ dir (config.json + model.safetensors + tokenizer) gives back the logged test probabilities."""
    import json

    import pandas as pd
    from transformers import AutoTokenizer

    from helpers import FAST

    res = cli(
        "train",
        "experiment=trec_scratch",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "tokenizer.vocab_size=800",
        "trainer.max_epochs=2",
        *FAST,
    )
    assert res.code == 0, res.err
    (run_dir,) = (isolated / "outputs" / "runs").glob("*/*")
    model_dir = run_dir / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "encoderlab_scratch"
    model = ScratchEncoder.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    preds = pd.read_csv(run_dir / "predictions" / "test_predictions.csv").head(40)
    batch = tok(list(preds["text"]), truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(dict(batch)).softmax(-1)
    names = [model.id2label[i] for i in range(probs.shape[1])]
    expected = torch.tensor(preds[[f"prob_{n}" for n in names]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)

    # `encoderlab predict` on the same directory: same probabilities, labels by name, in input order
    out = isolated / "predict.csv"
    res = cli(
        "predict",
        str(model_dir),
        *preds["text"],
        "--output",
        str(out),
        "--batch-size",
        "8",
        "--precision",
        "32",
    )
    assert res.code == 0, res.err
    got = pd.read_csv(out)
    assert (
        got["text"].tolist() == preds["text"].tolist()
        and got["label"].tolist() == preds["prediction"].tolist()
    )
    np.testing.assert_allclose(got[[f"prob_{n}" for n in names]].to_numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_scratch_tokenizer_is_trained_once_per_data_and_settings(cli, mlflow_client, isolated):
    args = (
        "train",
        "experiment=trec_scratch",
        "model.d_model=32",
        "model.n_heads=2",
        "tokenizer.vocab_size=700",
        "trainer.fast_dev_run=1",
    )
    assert cli(*args, *FAST_ARGS).code == 0
    assert cli(*args, *FAST_ARGS).code == 0
    assert cli(*args, "tokenizer.kind=bpe", *FAST_ARGS).code == 0
    import json

    runs = sorted(
        mlflow_client.search_runs([mlflow_client.get_experiment_by_name("trec_scratch").experiment_id]),
        key=lambda r: r.info.start_time,
    )
    summaries = [
        json.loads(
            Path(
                mlflow_client.download_artifacts(r.info.run_id, "data/tokenizer.json", str(isolated))
            ).read_text()
        )
        for r in runs
    ]
    assert [s["cache_hit"] for s in summaries] == [False, True, False]
    assert [s["kind"] for s in summaries] == ["wordlevel", "wordlevel", "bpe"]
    assert all(s["vocab_size_actual"] <= 700 for s in summaries)


@pytest.mark.slow
def test_scratch_and_pretrained_runs_compare_in_one_experiment(cli, tiny_bert, mlflow_client):
    """Only model= changes: both runs land in the sst2_minilm experiment with the same metrics."""
    common = ("train", "experiment=sst2_minilm", "trainer.fast_dev_run=2", *FAST_ARGS)
    assert cli(*common, f"model.name_or_path={tiny_bert}").code == 0
    assert (
        cli(
            *common, "model=scratch_tiny", "model.d_model=32", "model.n_heads=2", "tokenizer.vocab_size=600"
        ).code
        == 0
    )
    exp = mlflow_client.get_experiment_by_name("sst2_minilm")
    runs = mlflow_client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["model._target_"].rsplit(".", 1)[1] for r in runs) == [
        "HFEncoderClassifier",
        "ScratchEncoder",
    ]
    metrics = [{k for k in r.data.metrics if k.startswith("test/")} for r in runs]
    assert metrics[0] == metrics[1] and "test/accuracy" in metrics[0]


def test_sinusoidal_tokens_are_not_drowned_by_positions():
    """Token vectors enter at the scale of the sin/cos table, so the first block sees which token it is."""
    from encoderlab.models.scratch import ScratchConfig, ScratchEncoder

    net = ScratchEncoder(ScratchConfig(vocab_size=500, d_model=64, n_heads=4, positions="sinusoidal"))
    tok = (net.tok_emb.weight[1:] * net.emb_scale).pow(2).mean().sqrt()
    pos = net.pos_table[:64].pow(2).mean().sqrt()
    assert 0.5 < float(tok / pos) < 2.0
    assert float(net.tok_emb.weight[net.cfg.pad_token_id].abs().sum()) == 0.0
    plain = ScratchEncoder(
        ScratchConfig(vocab_size=500, d_model=64, n_heads=4, positions="sinusoidal", scale_embeddings=False)
    )
    assert plain.emb_scale == 1.0 and abs(float(plain.tok_emb.weight[1:].std()) - 0.02) < 0.002


def test_wordlevel_tokenizer_keeps_frequent_words_whole_and_maps_the_rest_to_unk():
    from encoderlab.tokenization import train_tokenizer

    texts = [
        "What is the capital of France ?",
        "What is a dog ?",
        "Who wrote Hamlet ?",
        "Who is the capital man ?",
    ]
    tok = train_tokenizer(texts, "wordlevel", vocab_size=100, min_frequency=2)
    assert tok.convert_ids_to_tokens(tok("What is the antigen ?")["input_ids"]) == [
        "[CLS]",
        "what",
        "is",
        "the",
        "[UNK]",
        "?",
        "[SEP]",
    ]  # 'antigen' unseen, 'france' seen once: both [UNK]; nothing split into pieces
    assert tok.convert_ids_to_tokens(tok("Paris France")["input_ids"])[1:-1] == ["[UNK]", "[UNK]"]
    assert tok.pad_token_id == 0 and tok.mask_token_id is not None


def test_eager_and_sdpa_attention_compute_the_same_thing():
    """attn_implementation=auto trains on CPU through the eager softmax(QK^T)V path (faster there); it
    must give the same logits and gradients as SDPA, padding included."""
    batch = _padded(SENTENCE, 12)
    out = {}
    for impl in ("sdpa", "eager", "auto"):
        model = _model(attn_implementation=impl, dropout=0.0).train()
        logits = model(batch)
        logits.sum().backward()
        out[impl] = (logits.detach(), model.tok_emb.weight.grad.clone())
    for impl in ("eager", "auto"):
        torch.testing.assert_close(out[impl][0], out["sdpa"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[impl][1], out["sdpa"][1], atol=1e-5, rtol=1e-5)
    auto = _model(attn_implementation="auto").train()
    assert auto.blocks[0].attn._eager(torch.zeros(1, 12, 32))  # a CPU training step
    assert not auto.eval().blocks[0].attn._eager(torch.zeros(1, 12, 32))  # inference: SDPA
    with pytest.raises(ConfigError, match="model.attn_implementation"):
        ScratchConfig(attn_implementation="explicit")


def test_saved_config_uses_the_schema_names(tmp_path):
    """config.json holds the architecture under the config's key names and reloads to the same model."""
    import json

    model = _model(positions="learned", attn_implementation="eager")
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["max_positions"] == 128 and saved["attn_implementation"] == "eager"
    assert "max_len" not in saved and "attention" not in saved and "_target_" not in saved
    again = ScratchEncoder.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again(_padded(SENTENCE, 12)), model(_padded(SENTENCE, 12)))
