"""The HF encoder wrapper and the LightningModule's optimisation settings."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import AutoTokenizer

from encoderlab.errors import EncoderlabError
from encoderlab.models.classifier import SequenceClassifier
from encoderlab.models.hf_encoder import HFEncoderClassifier
from encoderlab.models.schedules import lr_lambda, warmup_schedule
from helpers import FAST


def _net(tiny_bert, **kwargs) -> HFEncoderClassifier:
    return HFEncoderClassifier(str(tiny_bert), num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, **kwargs)


def test_forward_gives_logits_and_labels_are_named(tiny_bert):
    net = _net(tiny_bert)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tok(["one short text", "and another, somewhat longer text"], padding=True, return_tensors="pt")
    assert net(dict(batch)).shape == (2, 3)
    assert net.hf_model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert net.hf_model.training, "dropout must be active when training starts"


def test_freezing_embeddings_and_first_layers(tiny_bert):
    net = _net(tiny_bert, freeze_embeddings=True, freeze_layers=1)
    bert = net.hf_model.bert
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in net.hf_model.classifier.parameters())
    with pytest.raises(EncoderlabError, match="encoder has 2 layers"):
        _net(tiny_bert, freeze_layers=5)


def test_dropout_checkpointing_and_attention_options(tiny_bert):
    net = _net(tiny_bert, dropout=0.3, gradient_checkpointing=True, attn_implementation="eager")
    cfg = net.hf_model.config
    assert cfg.hidden_dropout_prob == 0.3 and cfg.attention_probs_dropout_prob == 0.3
    model = net.hf_model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert cfg._attn_implementation == "eager"


def test_auto_attention_is_eager_for_cpu_training_only_and_gives_the_same_logits(tiny_bert):
    net = _net(tiny_bert, dropout=0.0)  # attn_implementation defaults to auto
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    batch = dict(tok(["one short text", "and another, longer text"], padding=True, return_tensors="pt"))
    train_logits = net(batch)
    assert net.hf_model.config._attn_implementation == "eager"  # a CPU training step
    net.eval()
    with torch.inference_mode():
        eval_logits = net(batch)
    assert net.hf_model.config._attn_implementation == "sdpa"  # inference stays on SDPA
    torch.testing.assert_close(train_logits.detach(), eval_logits, atol=1e-5, rtol=1e-5)  # same math
    net.train()
    assert net._attention_for(torch.ones(2, 300, dtype=torch.long)) == "sdpa"  # past the crossover
    pinned = _net(tiny_bert, attn_implementation="sdpa")
    pinned(batch)
    assert pinned.hf_model.config._attn_implementation == "sdpa"  # an explicit choice is kept


def test_schedule_warms_up_then_decays():
    linear = lr_lambda("linear", warmup=10, total=100)
    assert linear(0) < linear(5) < linear(9) <= 1.0
    assert (
        linear(10) == pytest.approx(1.0)
        and linear(55) == pytest.approx(0.5)
        and linear(100) == pytest.approx(0.0)
    )
    cosine = lr_lambda("cosine", warmup=0, total=100)
    assert cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0, abs=1e-9)
    assert lr_lambda("constant", warmup=5, total=100)(80) == 1.0


def _module(tiny_bert, weight_decay: float, scheduler=None) -> SequenceClassifier:
    """A 3-class SequenceClassifier over the tiny BERT, AdamW at lr 1e-3 (what conf/optimizer/adamw.yaml
    instantiates to), linear schedule without warmup unless `scheduler` says otherwise."""
    return SequenceClassifier(
        _net(tiny_bert),
        ["a", "b", "c"],
        partial(
            torch.optim.AdamW, lr=1e-3, weight_decay=weight_decay, betas=[0.9, 0.999], eps=1e-8, fused=True
        ),
        scheduler or partial(warmup_schedule, decay="linear", warmup_steps=0, warmup_ratio=0.0),
    )


class _Trainer:
    estimated_stepping_batches = 100  # configure_optimizers reads the total step count from the trainer


def test_no_weight_decay_on_biases_and_layernorm(tiny_bert):
    module = _module(tiny_bert, weight_decay=0.1)
    module._trainer = _Trainer()
    opt = module.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["fused"]  # the fused kernel is the default on CPU
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert any("LayerNorm.weight" in n for n in skipped) and any(n.endswith("bias") for n in skipped)


def test_scheduler_gets_the_step_count_only_when_it_takes_one(tiny_bert):
    """encoderlab's warmup_schedule is given the fit's optimizer steps; a torch scheduler named in YAML
    (no num_training_steps argument) is built from its own arguments."""
    module = _module(tiny_bert, 0.0, partial(warmup_schedule, decay="linear", warmup_ratio=0.1))
    module._trainer = _Trainer()
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lr_at = sched.lr_lambdas[0]
    assert lr_at(9) < 1.0 and lr_at(10) == pytest.approx(1.0) and lr_at(100) == 0.0  # warmup: 10 of 100 steps
    module = _module(tiny_bert, 0.0, partial(torch.optim.lr_scheduler.StepLR, step_size=5, gamma=0.5))
    module._trainer = _Trainer()
    conf = module.configure_optimizers()["lr_scheduler"]
    assert isinstance(conf["scheduler"], torch.optim.lr_scheduler.StepLR) and conf["interval"] == "step"


@pytest.mark.slow
def test_accumulation_steps_the_schedule_per_optimizer_step(cli, tiny_bert, mlflow_client):
    """32 batches with accumulation 4 are 8 optimizer steps: the linear schedule reaches 0 at step 8."""
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=512",
        "trainer.accumulate_grad_batches=4",
        "trainer.val_check_interval=16",  # batches: 4 optimizer steps
        "trainer.log_every_n_steps=1",
        "optimizer.lr=1e-3",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("sst2_minilm").experiment_id])
    lrs = mlflow_client.get_metric_history(run.info.run_id, "lr-AdamW/pg1")
    assert max(m.step for m in lrs) <= 8
    assert len(mlflow_client.get_metric_history(run.info.run_id, "val/accuracy")) == 2  # after steps 4 and 8
    assert run.data.params["trainer.accumulate_grad_batches"] == "4"


@pytest.mark.slow
def test_logger_none_keeps_results_in_the_run_dir(cli, tiny_bert, isolated):
    res = cli(
        "train",
        "experiment=trec_minilm",
        f"model.name_or_path={tiny_bert}",
        "logger=none",
        "trainer.max_steps=3",
        *FAST,
    )
    assert res.code == 0, res.err
    assert not (isolated / "outputs" / "mlflow.db").exists()
    (run_dir,) = (isolated / "outputs" / "runs").glob("*/*")
    assert (run_dir / "metrics.json").is_file() and (
        run_dir / "predictions" / "test_predictions.csv"
    ).is_file()
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "model" / "config.json").is_file()


@pytest.mark.slow
def test_early_stopping_ends_training_when_the_metric_stalls(cli, tiny_bert, mlflow_client):
    """lr 1e-12 leaves validation F1 unchanged, so patience 1 stops after the second validation."""
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "optimizer.lr=1e-12",
        "dataset.max_train_samples=400",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("sst2_minilm").experiment_id])
    assert len(mlflow_client.get_metric_history(run.info.run_id, "val/accuracy")) == 2  # of 12 scheduled
    assert max(m.step for m in mlflow_client.get_metric_history(run.info.run_id, "train/loss_step")) < 10


def test_gradient_clipping_rescales_only_over_the_limit(tiny_bert):
    """The CPU clipping path (norm first, rescale only when over) matches torch's clip_grad_norm_."""
    module = _module(tiny_bert, weight_decay=0.0)

    class _Trainer:
        precision_plugin = None

    module._trainer = _Trainer()
    params = [p for p in module.parameters() if p.requires_grad]
    for scale, expect_clipped in ((100.0, True), (1e-4, False)):
        torch.manual_seed(0)
        for p in params:
            p.grad = torch.randn_like(p) * scale
        reference = [p.grad.clone() for p in params]
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)  # torch's result, in place
        expected = [p.grad.clone() for p in params]
        for p, g in zip(params, reference, strict=True):
            p.grad = g.clone()
        module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        assert (float(total) == pytest.approx(1.0, rel=1e-4)) == expect_clipped
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-8)
