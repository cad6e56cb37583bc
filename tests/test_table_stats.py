"""`encoderlab table` statistics: every interval, test and adjusted p-value the table prints equals scipy or
statsmodels called directly on the same numbers. The runs are logged straight into a real MLflow SQLite
store (params, metrics and a predictions/test_predictions.csv artifact each), no training."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

CLASSES = ["neg", "neu", "pos"]
N_TEST = 80
# group -> (probability that a run is right on an example, seeds); "flat": 3 identical runs
GROUPS = {
    "base": (0.6, [1, 2, 3, 4, 5]),
    "better": (0.8, [1, 2, 3, 4, 5]),
    "single": (0.7, [1]),
    "flat": (0.7, [1, 2, 3]),
}
N_RESAMPLES = 999


def _predictions(rng, y: np.ndarray, p_right: float, n: int | None = None) -> pd.DataFrame:
    n = n or len(y)
    y = y[:n]
    right = rng.random(n) < p_right
    pred = np.where(right, y, (y + rng.integers(1, len(CLASSES), n)) % len(CLASSES))
    probs = rng.dirichlet(np.ones(len(CLASSES)), n) * 0.5
    probs[np.arange(n), pred] += 0.5  # the predicted class has the largest probability
    frame = pd.DataFrame({"text": [f"example {i}" for i in range(n)], "label": [CLASSES[i] for i in y]})
    frame["prediction"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    for i, c in enumerate(CLASSES):
        frame[f"prob_{c}"] = probs[:, i]
    return frame


def _log(client, exp_id: str, model: str, seed: int, frame: pd.DataFrame, tmp: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    run = client.create_run(exp_id, run_name=f"{model}-{seed}")
    rid = run.info.run_id
    client.log_param(rid, "model", model)
    client.log_param(rid, "seed", str(seed))
    client.log_metric(rid, "test/accuracy", accuracy_score(frame["label"], frame["prediction"]))
    client.log_metric(rid, "test/f1_macro", f1_score(frame["label"], frame["prediction"], average="macro"))
    path = tmp / rid / "test_predictions.csv"
    path.parent.mkdir(parents=True)
    frame.to_csv(path, index=False)
    client.log_artifact(rid, str(path), "predictions")
    client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with experiment 'grid' (the four GROUPS on one test set) and 'mismatch' (two groups
    evaluated on test sets of different sizes). Returns (tracking uri, {group: [prediction frames]})."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    rng = np.random.default_rng(7)
    y = rng.integers(0, len(CLASSES), N_TEST)
    grid = client.create_experiment("grid", artifact_location=str(root / "artifacts"))
    frames: dict[str, list[pd.DataFrame]] = {}
    for model, (p_right, seeds) in GROUPS.items():
        flat = _predictions(rng, y, p_right)
        frames[model] = [flat if model == "flat" else _predictions(rng, y, p_right) for _ in seeds]
        for seed, frame in zip(seeds, frames[model], strict=True):
            _log(client, grid, model, seed, frame, root / "files")
    mismatch = client.create_experiment("mismatch", artifact_location=str(root / "artifacts2"))
    for seed in (1, 2):
        _log(client, mismatch, "full", seed, _predictions(rng, y, 0.7), root / "files")
        _log(client, mismatch, "short", seed, _predictions(rng, y, 0.7, N_TEST - 10), root / "files")
    return uri, frames


def _table(cli, uri: str, *args: str) -> tuple[pd.DataFrame, str]:
    res = cli("table", "--tracking-uri", uri, "--experiment", "grid", "--format", "csv", *args)
    assert res.code == 0, res.err
    return pd.read_csv(io.StringIO(res.out)).set_index("group"), res.err


def _metric(frames: list[pd.DataFrame], name: str) -> np.ndarray:
    from sklearn.metrics import accuracy_score, f1_score

    if name == "test/accuracy":
        return np.array([accuracy_score(f["label"], f["prediction"]) for f in frames])
    return np.array([f1_score(f["label"], f["prediction"], average="macro") for f in frames])


def _interval(cell: str) -> tuple[float, float]:
    low, high = re.match(r"\[([-+\d.]+), ([-+\d.]+)\]", cell).groups()
    return float(low), float(high)


@pytest.mark.parametrize("ci", ["bca", "t", "percentile"])
def test_group_intervals_are_scipys(cli, store, ci):
    uri, frames = store
    table, err = _table(
        cli, uri, "--metrics", "test/accuracy,test/f1_macro", "--ci", ci, "--n-resamples", "2000"
    )
    method = {"bca": "BCa bootstrap", "t": "t-interval", "percentile": "percentile bootstrap"}[ci]
    assert f"CI: 95% {method} of the mean" in err  # what the CSV's columns mean, said on stderr
    for metric in ("test/accuracy", "test/f1_macro"):
        col = table[f"{metric} 95% CI ({method})"]
        for group in ("base", "better"):
            v = np.sort(_metric(frames[group], metric))
            if ci == "t":
                expected = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
            else:
                expected = stats.bootstrap(
                    (v,), np.mean, method="BCa" if ci == "bca" else "percentile", n_resamples=2000,
                    rng=np.random.default_rng(0),
                ).confidence_interval  # fmt: skip
            assert _interval(col[f"model={group}"]) == pytest.approx(tuple(expected), abs=5e-5)
            assert table.loc[f"model={group}", "n"] == 5
        # n=1: no interval, said so; all-equal values: the point, said so (not a silent zero width)
        assert col["model=single"] == "— (n=1: no interval)"
        flat = _metric(frames["flat"], metric)[0]
        assert col["model=flat"] == f"[{flat:.4f}, {flat:.4f}] (all 3 equal)"


@pytest.mark.parametrize("test", ["paired-t", "wilcoxon"])
def test_paired_tests_over_shared_seeds_with_holm(cli, store, test):
    from statsmodels.stats.multitest import multipletests

    uri, frames = store
    table, err = _table(cli, uri, "--metrics", "test/accuracy", "--baseline", "model=base", "--test", test)
    label = {"paired-t": "paired t", "wilcoxon": "Wilcoxon"}[test]
    base = _metric(frames["base"], "test/accuracy")  # seeds 1..5, in seed order
    better = _metric(frames["better"], "test/accuracy")
    flat = _metric(frames["flat"], "test/accuracy")
    if test == "paired-t":
        res = stats.ttest_rel(better, base)
        p_better, p_flat = res.pvalue, stats.ttest_rel(flat, base[:3]).pvalue
        ci = res.confidence_interval(0.95)
    else:
        p_better, p_flat = stats.wilcoxon(better, base).pvalue, stats.wilcoxon(flat, base[:3]).pvalue
        ci = stats.bootstrap(
            (np.sort(better - base),), np.mean, n_resamples=10000, rng=np.random.default_rng(0)
        )
        ci = ci.confidence_interval
    delta = table[f"Δ test/accuracy vs baseline ({label})"]
    assert delta["model=base"] == "baseline"
    assert delta["model=better"].startswith(f"{(better - base).mean():+.4f} ")
    assert _interval(delta["model=better"].split(" ", 1)[1]) == pytest.approx(tuple(ci), abs=5e-5)
    assert "(n=5)" in delta["model=better"] and "(n=3)" in delta["model=flat"]
    assert delta["model=single"] == "not tested: 1 shared unit(s), needs 2"
    p = table[f"p ({label})"]
    assert p["model=better"] == f"{p_better:.3g}"
    assert p["model=flat"] == f"{p_flat:.3g}"
    assert p["model=single"] == "—"
    # Holm over the two groups that were tested (single was not)
    adjusted = multipletests([p_better, p_flat], method="holm")[1]
    holm = table[f"p Holm ({label})"]
    assert [holm["model=better"], holm["model=flat"]] == [f"{p:.3g}" for p in adjusted]
    assert "Holm–Bonferroni over the 3 group(s) compared with the baseline" in err


def _ensemble(frames: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.mean([f[[f"prob_{c}" for c in CLASSES]].to_numpy() for f in frames], axis=0)
    return frames[0]["label"].map(CLASSES.index).to_numpy(), probs.argmax(axis=1)


def test_example_level_mcnemar_and_paired_bootstrap(cli, store):
    from sklearn.metrics import f1_score
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests

    uri, frames = store
    table, err = _table(
        cli, uri, "--metrics", "test/f1_macro", "--baseline", "model=base",
        "--example-tests", "mcnemar,bootstrap", "--n-resamples", str(N_RESAMPLES), "--seed", "3",
    )  # fmt: skip
    y, base = _ensemble(frames["base"])
    p_mcnemar, p_boot = {}, {}
    for group in ("better", "single", "flat"):
        _, pred = _ensemble(frames[group])
        a, b = base == y, pred == y
        counts = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
        discordant = counts[0][1] + counts[1][0]
        res = mcnemar(counts, exact=discordant < 25, correction=True)
        p_mcnemar[group] = res.pvalue
        cell = table.loc[f"model={group}", "Δ accuracy (McNemar)"]
        assert cell.startswith(f"{b.mean() - a.mean():+.4f} (")
        assert (f"χ²={res.statistic:.3f}" if discordant >= 25 else "exact") in cell
        assert table.loc[f"model={group}", "p (McNemar)"] == f"{res.pvalue:.3g}"

        def macro_f1(y_, p_):  # from the confusion matrix; checked against sklearn below
            cm = np.bincount(y_ * 3 + p_, minlength=9).reshape(3, 3).astype(float)
            den = cm.sum(axis=0) + cm.sum(axis=1)
            return np.mean(np.divide(2 * np.diag(cm), den, out=np.zeros(3), where=den > 0))

        def delta(y_, a_, b_):
            return macro_f1(y_, b_) - macro_f1(y_, a_)

        assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro", labels=range(3)))
        boot = stats.bootstrap(
            (y, base, pred), delta, paired=True, vectorized=False, n_resamples=N_RESAMPLES,
            rng=np.random.default_rng(3),
        )  # fmt: skip
        observed = delta(y, base, pred)
        dist = boot.bootstrap_distribution
        p_boot[group] = (1 + np.sum(np.abs(dist - observed) >= abs(observed))) / (len(dist) + 1)
        cell = table.loc[f"model={group}", "Δ f1_macro over test examples (bootstrap)"]
        assert cell.startswith(f"{observed:+.4f} ") and f"({N_TEST} examples)" in cell
        expected = boot.confidence_interval
        assert _interval(cell.split(" ", 1)[1]) == pytest.approx((expected.low, expected.high), abs=5e-5)
        assert table.loc[f"model={group}", "p (bootstrap)"] == f"{p_boot[group]:.3g}"
    for name, raw in (("McNemar", p_mcnemar), ("bootstrap", p_boot)):
        adjusted = multipletests(list(raw.values()), method="holm")[1]
        got = [table.loc[f"model={g}", f"p Holm ({name})"] for g in raw]
        assert got == [f"{p:.3g}" for p in adjusted]
    assert "each group's ensemble (class probabilities averaged over its runs)" in err
    assert "Ensemble sizes differ (" in err and "model=single: 1 runs" in err and "model=base: 5 runs" in err
    assert "McNemar: statsmodels mcnemar" in err and f"{N_RESAMPLES} resamples, seed 3" in err


def test_markdown_and_latex_state_n_the_interval_and_the_tests(cli, store):
    uri, _ = store
    args = ["--tracking-uri", uri, "--experiment", "grid", "--metrics", "test/accuracy", "--ci", "t"]
    args += ["--baseline", "model=base", "--test", "wilcoxon", "--example-tests", "mcnemar"]
    md = cli("table", *args)
    assert md.code == 0, md.err
    assert "| group | n | test/accuracy (mean ± std) | test/accuracy 95% CI (t-interval) |" in md.out
    notes = md.out.split("\n\n", 1)[1]
    assert "- n: runs per group. CI: 95% t-interval of the mean" in notes
    assert "- Wilcoxon: test/accuracy paired over the units" in notes and "- McNemar:" in notes
    tex = cli("table", *args, "--format", "latex")
    assert tex.code == 0, tex.err
    assert r"\caption{n: runs per group. CI: 95\% t-interval" in tex.out and "McNemar" in tex.out


def test_example_tests_refuse_different_test_sets(cli, store):
    uri, _ = store
    res = cli(
        "table", "--tracking-uri", uri, "--experiment", "mismatch", "--baseline", "model=full",
        "--example-tests", "mcnemar",
    )  # fmt: skip
    assert res.code == 1
    assert "Example-level tests need the same test set, row for row" in res.err
    assert f"has {N_TEST} test rows" in res.err and f"has {N_TEST - 10}" in res.err
    assert "Traceback" not in res.err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--example-tests", "mcnemar"], ["--example-tests compares groups with a baseline", "--baseline"]),
        (["--test", "wilcoxon"], ["--test compares groups with a baseline"]),
        (["--baseline", "x", "--test", "ttest"], ["invalid choice: 'ttest'", "paired-t", "wilcoxon"]),
        (["--baseline", "x", "--example-tests", "chi2"], ["unknown example-level test chi2", "mcnemar"]),
        (["--baseline", "x", "--ci", "bootstrap"], ["invalid choice: 'bootstrap'", "bca"]),
        (["--level", "95"], ["not a confidence level between 0 and 1"]),
        (
            ["--baseline", "x", "--metrics", "val/loss", "--example-tests", "bootstrap"],
            ["first of --metrics, val/loss", "test/f1_macro"],
        ),
    ],
)
def test_bad_combinations_exit_2_with_one_error_line(cli, args, words):
    res = cli("table", "--experiment", "grid", *args)  # refused before any store is opened
    assert res.code == 2
    errors = [line for line in res.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and all(w in errors[0] for w in words), res.err
    assert not Path("outputs").exists()


def test_units_pair_seeds_and_folds():
    from encoderlab.results_table import run_units

    frame = pd.DataFrame(
        {
            "run_id": list("abcd"),
            "params.seed": ["1", "1", "2", "3"],
            "params.dataset.cv.fold": ["0", "1", "0", "0"],  # runs without CV log fold 0 too
            "params.dataset.cv.folds": ["5", "5", "5", "None"],
        }
    )
    assert run_units(frame).tolist() == ["seed=1/fold=0", "seed=1/fold=1", "seed=2/fold=0", "seed=3"]
