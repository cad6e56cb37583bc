"""Class imbalance: class weights (auto, effective, given), focal loss, the balanced sampler, and a run
that trains with them and says so."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.utils.class_weight import compute_class_weight

from encoderlab.data.sampler import BalancedSampler, EpochShuffleSampler, balance_groups
from encoderlab.errors import ConfigError, EncoderlabError
from encoderlab.models.losses import ClassificationLoss, build_loss, class_weights
from helpers import FAST, SCRATCH_SMALL, all_runs


def _loss_cfg(**kw):
    base = {"label_smoothing": 0.0, "class_weights": None, "effective_beta": 0.999, "focal_gamma": 0.0}
    return OmegaConf.create({**base, **kw})


# ---- class weights ---------------------------------------------------------------------------------
def test_auto_weights_are_scikit_learns_balanced_weights():
    labels = np.repeat(np.arange(5), [3, 40, 7, 120, 30])
    counts = torch.as_tensor(np.bincount(labels))
    ours = class_weights("auto", "single_label", counts, len(labels))
    theirs = compute_class_weight("balanced", classes=np.arange(5), y=labels)
    assert ours.numpy() == pytest.approx(theirs, rel=1e-6)


def test_effective_weights_follow_cui_et_al():
    counts = torch.tensor([5, 50, 500, 5000])
    beta = 0.99
    w = class_weights("effective", "single_label", counts, int(counts.sum()), beta)
    raw = np.array([(1 - beta) / (1 - beta**n) for n in [5, 50, 500, 5000]])
    assert w.numpy() == pytest.approx(raw / raw.sum() * 4, rel=1e-5)  # scaled to sum to C
    assert w.sum().item() == pytest.approx(4.0)
    assert list(w.argsort(descending=True)) == [0, 1, 2, 3]  # the rarer, the heavier


def test_multilabel_weights_are_pos_weights_negatives_over_positives():
    counts, n = torch.tensor([10, 50, 90]), 100
    assert class_weights("auto", "multilabel", counts, n).tolist() == pytest.approx([9.0, 1.0, 1 / 9])
    beta = 0.99
    eff = class_weights("effective", "multilabel", counts, n, beta)
    expected = [(1 - beta ** (n - c)) / (1 - beta**c) for c in (10, 50, 90)]
    assert eff.tolist() == pytest.approx(expected, rel=1e-5)


def test_given_weights_are_used_as_given_and_a_missing_class_gets_the_largest_auto_weight():
    assert class_weights([1, 2.5], "single_label", torch.tensor([5, 5]), 10).tolist() == [1.0, 2.5]
    w = class_weights("auto", "single_label", torch.tensor([0, 10, 30]), 40)
    assert torch.isfinite(w).all() and w[0] == w.max()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"class_weights": [1.0, 2.0, 3.0]}, ["3 weights", "2 labels"]),
        ({"class_weights": "balanced"}, ["'loss.class_weights'", "auto", "effective"]),
        ({"class_weights": [1.0, -2.0]}, ["'loss.class_weights'", "positive"]),
        ({"focal_gamma": -1.0}, ["'loss.focal_gamma'", "-1"]),
        ({"effective_beta": 1.0}, ["'loss.effective_beta'", "[0, 1)"]),
    ],
)
def test_bad_loss_settings_say_what_is_allowed(kw, words):
    with pytest.raises((ConfigError, EncoderlabError)) as err:
        build_loss(_loss_cfg(**kw), "single_label", torch.tensor([10, 90]), 100)
    for word in words:
        assert word in str(err.value)


# ---- focal loss ------------------------------------------------------------------------------------
def test_softmax_focal_loss_is_the_formula_and_cross_entropy_at_gamma_zero():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(16, 4, generator=g), torch.randint(0, 4, (16,), generator=g)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    p = logits.softmax(-1)[torch.arange(16), targets]
    direct = (w[targets] * (1 - p) ** 2 * -p.log()).sum() / w[targets].sum()
    assert ClassificationLoss("single_label", w, focal_gamma=2)(logits, targets) == pytest.approx(
        direct.item(), rel=1e-5
    )
    ce = F.cross_entropy(logits, targets, weight=w, label_smoothing=0.1)
    at_zero = ClassificationLoss("single_label", w, focal_gamma=0, label_smoothing=0.1)(logits, targets)
    assert at_zero.item() == pytest.approx(ce.item(), rel=1e-6)


def test_sigmoid_focal_loss_is_the_formula_and_bce_at_gamma_zero():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 3, generator=g)
    targets = (torch.rand(8, 3, generator=g) > 0.6).float()
    w = torch.tensor([3.0, 1.0, 0.5])
    p = logits.sigmoid()
    direct = -(w * targets * (1 - p) ** 2 * p.log() + (1 - targets) * p**2 * (1 - p).log()).mean()
    focal = ClassificationLoss("multilabel", w, focal_gamma=2)(logits, targets)
    assert focal.item() == pytest.approx(direct.item(), rel=1e-5)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=w)
    assert ClassificationLoss("multilabel", w)(logits, targets).item() == pytest.approx(bce.item(), rel=1e-6)


def test_label_smoothing_in_training_only():
    loss = build_loss(_loss_cfg(label_smoothing=0.2), "single_label", torch.tensor([5, 5]), 10)
    logits, targets = torch.tensor([[4.0, -4.0]]), torch.tensor([0])
    train_value = loss(logits, targets).item()
    loss.eval()  # Lightning's validation/test mode
    assert loss(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item())
    assert train_value > loss(logits, targets).item()


# ---- the balanced sampler -------------------------------------------------------------------------
LABELS_1_9 = np.array([0] * 100 + [1] * 900)


def test_balanced_sampler_draws_the_classes_evenly_on_a_1_to_9_set():
    rows = [i for b in BalancedSampler(LABELS_1_9, 32, seed=3) for i in b]
    assert len(rows) == 1000  # the epoch is as long as a shuffled one
    share = (LABELS_1_9[rows] == 0).mean()
    assert 0.45 < share < 0.55  # a shuffle gives 0.10
    shuffled = [i for b in EpochShuffleSampler(1000, 32, 3, 1, 0) for i in b]
    assert (LABELS_1_9[shuffled] == 0).mean() == pytest.approx(0.10)


def test_balanced_sampler_repeats_per_seed_and_epoch_and_resumes_mid_epoch():
    def epoch(e, seed=3):
        s = BalancedSampler(LABELS_1_9, 32, seed=seed)
        s.set_epoch(e)
        return list(s)

    assert epoch(0) == epoch(0) and epoch(1) == epoch(1)
    assert epoch(0) != epoch(1) and epoch(0) != epoch(0, seed=4)
    s = BalancedSampler(LABELS_1_9, 32, seed=3)
    s.set_epoch(1)
    s.resume_at(1, 5)
    assert list(s) == epoch(1)[5:]


def test_balanced_sampler_gives_each_process_its_share_of_the_one_process_batches():
    one = list(BalancedSampler(LABELS_1_9, 12, seed=5))
    per_rank = [list(BalancedSampler(LABELS_1_9, 4, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(p) for p in per_rank}) == 1
    for k, batch in enumerate(one):
        joined = [i for p in per_rank for i in p[k]]
        assert joined == batch or (len(batch) < 3 and set(joined) == set(batch))


def test_a_multilabel_row_is_balanced_by_its_rarest_label():
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]])  # label 2 rarest, then 1
    assert balance_groups(labels).tolist() == [1, 0, 2, -1, 0]


# ---- end to end -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_with_auto_weights_and_the_balanced_sampler_logs_its_weights(cli, isolated, mlflow_client):
    pd.DataFrame(
        {
            "text": [f"{w} film number {i}" for i, w in enumerate(["great"] * 40 + ["awful"] * 160)],
            "label": [1] * 40 + [0] * 160,
        }
    ).to_csv(isolated / "skewed.csv", index=False)
    res = cli(
        "train",
        "model=scratch_tiny",
        *SCRATCH_SMALL,
        "dataset=csv",
        "dataset.data_files=skewed.csv",
        "dataset.val_size=0.2",
        "loss.class_weights=auto",
        "dataset.sampler=balanced",
        "trainer.max_epochs=1",
        "analysis=none",
        "num_threads=1",
        *FAST,
    )
    assert res.code == 0, res.err
    (run,) = all_runs(mlflow_client)
    assert run.data.params["loss.class_weights"] == "auto"
    assert run.data.params["dataset.sampler"] == "balanced"
    folder = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=mlflow_client.tracking_uri)
    )
    loss = json.loads((folder / "loss" / "loss.json").read_text())
    counts = json.loads((folder / "data" / "summary.json").read_text())["label_counts"]["train"]
    n = sum(counts.values())
    assert loss["class_weights"] == {k: pytest.approx(n / (2 * c), rel=1e-5) for k, c in counts.items()}
    assert loss["class_weights"]["1"] > 3 * loss["class_weights"]["0"]  # the rare class weighs more
    assert run.data.metrics["perf/train_samples_seen"] == n  # an epoch of the usual length
