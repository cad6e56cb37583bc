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
        vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=128, num_labels=3, **kw
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
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)  # explicit path == SDPA path
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (1, 4, 20, 20)
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 20))
        assert torch.all(w[..., len(SENTENCE) :] == 0)


def test_one_batch_overfits():
    torch.manual_seed(0)
    model = ScratchEncoder(
        ScratchConfig(
            vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32, num_labels=3, dropout=0.0
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


def test_explicit_and_sdpa_attention_compute_the_same_thing():
    """attention=auto trains on CPU through the explicit softmax(QK^T)V path (faster there); it must
    give the same logits and gradients as SDPA, padding included."""
    batch = _padded(SENTENCE, 12)
    out = {}
    for attention in ("sdpa", "explicit", "auto"):
        model = _model(attention=attention, dropout=0.0).train()
        logits = model(batch)
        logits.sum().backward()
        out[attention] = (logits.detach(), model.tok_emb.weight.grad.clone())
    for attention in ("explicit", "auto"):
        torch.testing.assert_close(out[attention][0], out["sdpa"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[attention][1], out["sdpa"][1], atol=1e-5, rtol=1e-5)
    auto = _model(attention="auto").train()
    assert auto.blocks[0].attn._explicit(torch.zeros(1, 12, 32))  # a CPU training step
    assert not auto.eval().blocks[0].attn._explicit(torch.zeros(1, 12, 32))  # inference: SDPA
    with pytest.raises(ConfigError, match="model.attention"):
        ScratchConfig(attention="flash")


@pytest.mark.parametrize("conv_type", ["depthwise", "full"])
@pytest.mark.parametrize("conv_kernel", [3, 4])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_local_convolution_ignores_padding_and_sees_neighbours(conv_kernel, norm, conv_type):
    """conv_kernel > 0 adds a convolution to each block: padding must not leak into real tokens (odd
    and even widths), and a token's vector must depend on its neighbours even without attention's
    help."""
    model = _model(conv_kernel=conv_kernel, norm=norm, pooling="mean", conv_type=conv_type)
    with torch.no_grad():
        short = model(_padded(SENTENCE, 12))
        long = model(_padded(SENTENCE, 64))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
    conv = model.blocks[0].conv
    x = torch.randn(1, 6, 32)
    keep = torch.ones(1, 6, dtype=torch.bool)
    y = x.clone()
    y[0, 2] += 1.0  # change token 2 only
    with torch.no_grad():
        changed = (conv(x, keep) - conv(y, keep)).abs().amax(dim=-1)[0]  # (T,)
    assert changed[1] > 0 and changed[3] > 0  # its neighbours see it
    assert changed[5] == 0  # beyond the kernel they do not
    with pytest.raises(ConfigError, match="model.conv_kernel"):
        ScratchConfig(conv_kernel=-1)


def test_full_convolution_mixes_channels_and_depthwise_does_not():
    """conv_type=full reads every channel of the neighbours (a CNN's n-gram detector); depthwise keeps
    channels apart until the pointwise projection."""
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[0, 2, 5] += 1.0  # token 2, channel 5 only
    for conv_type, mixes in (("depthwise", False), ("full", True)):
        conv = _model(conv_kernel=3, conv_type=conv_type).blocks[0].conv
        with torch.no_grad():
            pre = conv.conv1d(x.transpose(1, 2)) - conv.conv1d(y.transpose(1, 2))  # (1, C, T)
        others = torch.cat([pre[0, :5, 1:4], pre[0, 6:, 1:4]])  # other channels at tokens 1-3
        assert (others.abs().amax() > 0) == mixes, conv_type
    full = sum(p.numel() for p in _model(conv_kernel=3, conv_type="full").blocks[0].conv.conv1d.parameters())
    assert full == 3 * 32 * 32 + 32
    with pytest.raises(ConfigError, match="model.conv_type"):
        ScratchConfig(conv_kernel=3, conv_type="dilated")


def test_models_saved_with_the_old_convolution_name_still_load():
    """Before conv_type, LocalConv's convolution was called `depthwise`: such state dicts load unchanged."""
    model = _model(conv_kernel=3)
    old = {k.replace(".conv1d.", ".depthwise."): v for k, v in model.state_dict().items()}
    assert any(".depthwise." in k for k in old)
    fresh = _model(conv_kernel=3, dropout=0.2)
    torch.nn.init.zeros_(fresh.blocks[0].conv.conv1d.weight)
    fresh.load_state_dict(old)  # strict: every key matched
    with torch.no_grad():
        torch.testing.assert_close(fresh(_padded(SENTENCE, 12)), model(_padded(SENTENCE, 12)))


def test_ensemble_predicts_its_members_mean_probability_and_reloads(tmp_path):
    """n_members > 1: softmax of the output is the mean of the members' probabilities, the members start
    from different weights, padding still does not matter, attention maps are the members' per-layer mean,
    and save_pretrained/from_pretrained gives back the same predictions."""
    model = _model(n_members=3, pooling="max", conv_kernel=3, conv_type="full")
    batch = _padded(SENTENCE, 12)
    with torch.no_grad():
        probs = model(batch).softmax(-1)
        members = model.member_logits(batch).softmax(-1)  # (1, 3, 3)
        logits, maps = model(batch, return_attentions=True)
        member_maps = [m(batch, return_attentions=True)[1] for m in model.members]
    assert members.shape == (1, 3, 3)
    torch.testing.assert_close(probs, members.mean(dim=1))
    assert (members[0, 0] - members[0, 1]).abs().max() > 1e-4  # independent inits
    torch.testing.assert_close(logits.softmax(-1), probs)
    assert len(maps) == 2
    for layer, w in enumerate(maps):
        torch.testing.assert_close(w, torch.stack([mm[layer] for mm in member_maps]).mean(0))
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(_padded(SENTENCE, 40)), model(batch), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ens")
    again = ScratchEncoder.from_pretrained(tmp_path / "ens")
    assert again.n_members == 3
    with torch.no_grad():
        torch.testing.assert_close(again(batch), model(batch))
    with pytest.raises(ConfigError, match="model.n_members"):
        ScratchConfig(n_members=0)


@pytest.mark.parametrize("bagging", [False, True])
def test_ensemble_members_train_on_their_own_losses(bagging):
    """Each member is trained on its own cross-entropy, not on the averaged prediction: a member's
    gradient does not depend on the other members. With member_bagging each member weighs the examples
    by its own Poisson(1) draw, so two members see differently weighted data in the same step."""
    from omegaconf import OmegaConf

    from encoderlab.models.classifier import SequenceClassifier

    torch.manual_seed(0)
    net = _model(n_members=2, member_bagging=bagging, dropout=0.0)
    clf = SequenceClassifier(net, ["a", "b", "c"], OmegaConf.create({}), OmegaConf.create({})).train()
    ids = torch.randint(4, 100, (16, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(16) % 3}
    torch.manual_seed(1)
    loss, probs = clf._step(batch)
    with torch.no_grad():
        logits = net.member_logits(batch)  # dropout 0: what the step saw
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].repeat_interleave(2))
    assert torch.isclose(loss, plain, atol=1e-6) != bagging  # bagging reweights the examples
    torch.testing.assert_close(probs, logits.softmax(-1).mean(1))  # train metrics: the ensemble's
    loss.backward()
    member0 = [p.grad.clone() for p in net.members[0].parameters() if p.grad is not None]

    # the same step with member 1's weights changed: member 0's gradient must not move
    net.zero_grad()
    with torch.no_grad():
        for p in net.members[1].parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    clf._step(batch)[0].backward()
    again = [p.grad for p in net.members[0].parameters() if p.grad is not None]
    for a, b in zip(member0, again, strict=True):
        torch.testing.assert_close(a, b)
