"""The training speed levers: LazyAdamW (row-wise embedding updates) trains the model AdamW trains, and the
step profiler writes what a user reads to find the next one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from encoderlab.models.classifier import SequenceClassifier
from encoderlab.optim import LazyAdamW
from helpers import FAST, artifacts


class _Net(nn.Module):
    """A token embedding and a head: the smallest model with an `input_embeddings()`."""

    def __init__(self, vocab: int = 50, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, 2)

    def input_embeddings(self) -> nn.Module:
        return self.emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def _train(optimizer_cls, batches, sparse: bool, **kw) -> tuple[_Net, torch.optim.Optimizer]:
    net = _Net()
    net.emb.sparse = sparse
    opt = optimizer_cls(net.parameters(), lr=0.05, weight_decay=0.1, **kw)
    for ids in batches:
        loss = net(ids).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return net, opt


def test_lazy_adamw_is_adamw_when_every_row_is_in_every_batch():
    """With all rows in each batch nothing is lazy: the same weights and state as torch's AdamW."""
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.cat([torch.arange(50), torch.randint(0, 50, (14,), generator=g)]).view(4, 16) for _ in range(6)
    ]
    dense, dense_opt = _train(torch.optim.AdamW, batches, sparse=False)
    lazy, lazy_opt = _train(LazyAdamW, batches, sparse=True)
    for a, b in zip(dense.parameters(), lazy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(
            dense_opt.state[dense.emb.weight][key], lazy_opt.state[lazy.emb.weight][key]
        )


def test_lazy_adamw_leaves_rows_outside_the_batch_alone():
    """A row no batch used keeps its weights and zero moments (no momentum, no weight decay); the rows
    used get AdamW's update; the dense head is plain AdamW."""
    batches = [torch.tensor([[1, 2, 3, 3]]), torch.tensor([[2, 4, 4, 1]])]
    lazy, opt = _train(LazyAdamW, batches, sparse=True)
    start = _Net()
    used, unused = [1, 2, 3, 4], [0, *range(5, 50)]
    torch.testing.assert_close(lazy.emb.weight[unused], start.emb.weight[unused], rtol=0, atol=0)
    assert (lazy.emb.weight[used] != start.emb.weight[used]).all()
    state = opt.state[lazy.emb.weight]
    assert float(state["step"]) == 2 and not state["exp_avg"][unused].any()
    # row 3 was only in the first batch: it moved once, then stayed while dense AdamW would move it on
    dense, _ = _train(torch.optim.AdamW, batches, sparse=False)
    once, _ = _train(LazyAdamW, batches[:1], sparse=True)
    torch.testing.assert_close(lazy.emb.weight[3], once.emb.weight[3])
    assert not torch.allclose(dense.emb.weight[3], once.emb.weight[3])


def test_lazy_adamw_state_loads_into_adamw_and_back():
    batches = [torch.randint(0, 50, (2, 5)) for _ in range(3)]
    lazy, opt = _train(LazyAdamW, batches, sparse=True)
    plain = torch.optim.AdamW(lazy.parameters(), lr=0.05, weight_decay=0.1)
    plain.load_state_dict(opt.state_dict())
    again = LazyAdamW(lazy.parameters(), lr=0.05, weight_decay=0.1)
    again.load_state_dict(plain.state_dict())
    torch.testing.assert_close(again.state[lazy.emb.weight]["exp_avg"], opt.state[lazy.emb.weight]["exp_avg"])


def test_clipping_reads_and_scales_sparse_gradients():
    """The norm of a sparse embedding gradient counts once per row (duplicates summed), and clipping
    scales it with the dense ones: the same gradients as clipping the dense equivalent."""
    module = SequenceClassifier(_Net(), ["a", "b"], optimizer=LazyAdamW)
    ids = torch.tensor([[1, 1, 2, 7], [7, 7, 3, 1]])
    clipped = {}
    for sparse in (False, True):
        module.model.emb.sparse = sparse
        module.zero_grad(set_to_none=True)
        (module.model(ids).sum() * 100).backward()
        module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        grads = [p.grad.to_dense() for p in module.parameters()]
        total = torch.nn.utils.get_total_norm(grads)
        assert float(total) == pytest.approx(1.0, rel=1e-4)
        clipped[sparse] = grads
    for dense, sparse in zip(clipped[False], clipped[True], strict=True):
        torch.testing.assert_close(dense, sparse)
    module.configure_gradient_clipping(None, gradient_clip_val=1e-3, gradient_clip_algorithm="value")
    assert float(module.model.emb.weight.grad.values().abs().max()) == pytest.approx(1e-3)


def _comparison_run(tiny_bert) -> list[str]:
    """A tiny SST-2 run logging every step's loss and validating once: two of them compare a lever."""
    return [
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "dataset.max_train_samples=320",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=null",
        "optimizer.lr=1e-3",
        "analysis=none",
        *FAST,
    ]


@pytest.mark.slow
def test_lazy_adamw_trains_the_model_adamw_trains(cli, tiny_bert, mlflow_client):
    """The same run with optimizer=lazy_adamw and with adamw: loss curves within a few percent, the same
    validation accuracy within 2 points; test and export ran on the model as built."""
    common = _comparison_run(tiny_bert)
    runs = {}
    for optimizer in ("adamw", "lazy_adamw"):
        res = cli("train", *common, f"optimizer={optimizer}", f"run_name={optimizer}")
        assert res.code == 0, res.err
    experiment = mlflow_client.get_experiment_by_name("sst2_minilm").experiment_id
    for run in mlflow_client.search_runs([experiment]):
        runs[run.data.tags["mlflow.runName"].split("-")[0]] = run
    assert runs["lazy_adamw"].data.tags["encoderlab.optimizer"] == "LazyAdamW"
    curves = {
        name: np.array([m.value for m in mlflow_client.get_metric_history(r.info.run_id, "train/loss_step")])
        for name, r in runs.items()
    }
    assert len(curves["adamw"]) == len(curves["lazy_adamw"]) == 20
    np.testing.assert_allclose(curves["lazy_adamw"][:5], curves["adamw"][:5], rtol=0.02)
    assert abs(curves["lazy_adamw"].mean() - curves["adamw"].mean()) < 0.05 * curves["adamw"].mean()
    acc = {name: r.data.metrics["val/accuracy"] for name, r in runs.items()}
    assert abs(acc["lazy_adamw"] - acc["adamw"]) <= 0.02, acc


@pytest.mark.slow
def test_profile_callback_writes_the_top_operators_of_training_steps(cli, tiny_bert, mlflow_client, isolated):
    res = cli(
        "train",
        "experiment=sst2_minilm",
        f"model.name_or_path={tiny_bert}",
        "callbacks=profile",
        "callbacks.profile.skip=2",
        "callbacks.profile.steps=3",
        "dataset.max_train_samples=160",
        "analysis=none",
        *FAST,
    )
    assert res.code == 0, res.err
    (run_dir,) = (isolated / "outputs" / "runs").glob("*/*")
    ops = (run_dir / "profile" / "ops.txt").read_text()
    assert "training steps 2..4 (3 steps)" in ops and "aten::" in ops and "Input Shapes" in ops
    assert (run_dir / "profile" / "trace.json").stat().st_size > 1000
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("sst2_minilm").experiment_id])
    assert {"profile/ops.txt", "profile/trace.json"} <= artifacts(mlflow_client, run.info.run_id, "profile")


def test_fast_dropout_masks_keep_one_minus_p_independently_and_repeat_under_a_seed():
    from encoderlab.models.dropout import keep_mask

    torch.manual_seed(0)
    a = keep_mask(torch.Size([1000, 1000]), 0.1)
    b = keep_mask(torch.Size([1000, 1000]), 0.1)
    torch.manual_seed(0)
    again = keep_mask(torch.Size([1000, 1000]), 0.1)
    assert a.dtype == torch.bool and a.shape == (1000, 1000)
    assert abs(a.float().mean().item() - 0.9) < 0.002  # 1e6 draws: sd 3e-4
    assert torch.equal(a, again) and not torch.equal(a, b)
    assert abs((a & b).float().mean().item() - 0.81) < 0.002  # independent calls
    for p in (0.0, 0.5):
        assert abs(keep_mask(torch.Size([200_000]), p).float().mean().item() - (1 - p)) < 0.01


def test_fast_dropout_scales_what_it_keeps_and_its_gradient_like_torch():
    from encoderlab.models.dropout import Dropout

    drop = Dropout(0.25)
    x = torch.randn(64, 128, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    drop.eval()
    assert drop(x) is x


def test_fast_dropout_swaps_every_dropout_and_leaves_the_weights_and_eval_outputs_alone(tiny_bert):
    from transformers import AutoTokenizer

    from encoderlab.models.dropout import ATTENTION, Dropout
    from encoderlab.models.hf_encoder import HFEncoderClassifier

    net = HFEncoderClassifier(str(tiny_bert), num_labels=2)
    n_dropouts = sum(type(m) is nn.Dropout for m in net.modules())
    batch = dict(
        AutoTokenizer.from_pretrained(tiny_bert)(
            ["a short text", "one more"], return_tensors="pt", padding=True
        )
    )
    net.eval()
    before, state = net(batch), {k: v.clone() for k, v in net.state_dict().items()}
    assert net.use_fast_dropout() == n_dropouts > 0
    assert not any(type(m) is nn.Dropout for m in net.modules())
    assert sum(isinstance(m, Dropout) for m in net.modules()) == n_dropouts
    torch.testing.assert_close(net(batch), before)
    assert net.state_dict().keys() == state.keys()
    net.train()
    net(batch).sum().backward()  # a CPU training step takes the attention with the cheap dropout
    assert net.hf_model.config._attn_implementation == ATTENTION


@pytest.mark.slow
def test_fast_dropout_trains_the_model_torch_dropout_trains(cli, tiny_bert, mlflow_client):
    """fast_dropout (on by default on a CPU) against torch's dropout: loss curves and validation accuracy
    alike; each run says which it used."""
    common = _comparison_run(tiny_bert)
    for name, flag in (("fast", []), ("torch", ["fast_dropout=false"])):
        res = cli("train", *common, *flag, f"run_name={name}")
        assert res.code == 0, res.err
    experiment = mlflow_client.get_experiment_by_name("sst2_minilm").experiment_id
    runs = {r.data.tags["mlflow.runName"].split("-")[0]: r for r in mlflow_client.search_runs([experiment])}
    assert runs["fast"].data.tags["encoderlab.fast_dropout"] == "true"
    assert runs["torch"].data.tags["encoderlab.fast_dropout"] == "false"
    curves = {
        name: np.array([m.value for m in mlflow_client.get_metric_history(r.info.run_id, "train/loss_step")])
        for name, r in runs.items()
    }
    assert len(curves["fast"]) == len(curves["torch"]) == 20
    assert abs(curves["fast"].mean() - curves["torch"].mean()) < 0.05 * curves["torch"].mean()
    acc = {name: r.data.metrics["val/accuracy"] for name, r in runs.items()}
    assert abs(acc["fast"] - acc["torch"]) <= 0.03, acc
