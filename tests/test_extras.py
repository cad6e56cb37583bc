"""Optional dependencies (pip extras): a missing package is named with the extra that installs it, before
any training. Each test hides one package the way a core-only install lacks it."""

from __future__ import annotations

import sys

import pytest
import yaml

from encoderlab.errors import ConfigError, installed, missing_extra

TINY_SPACE = {
    "base": ["experiment=quickstart", "model.d_model=32", "model.n_heads=2", "trainer.max_epochs=1"],
    "study": {"n_trials": 2, "sampler": "random", "pruner": "none"},
    "params": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
}


def hide(monkeypatch, module: str) -> None:
    """Make `module` unimportable for this test (as if its package were not installed)."""
    monkeypatch.setitem(sys.modules, module, None)
    assert not installed(module)


@pytest.fixture
def space(isolated) -> str:
    (isolated / "sweeps").mkdir()
    (isolated / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    return "sweep=tiny"


def assert_names_extra(res, extra: str, package: str) -> None:
    assert res.code == 2, res.err
    assert f"pip install 'encoderlab[{extra}]'" in res.err and f"'{package}'" in res.err, res.err
    assert "Traceback" not in res.err


def test_the_message_says_what_needs_the_package_and_how_to_install_it():
    err = missing_extra("cmaes", "sweep", "study.sampler=cmaes")
    assert isinstance(err, ConfigError)
    assert str(err) == (
        "Config error: study.sampler=cmaes needs the optional package 'cmaes', which is not installed. "
        "Install it with: pip install 'encoderlab[sweep]' (or 'encoderlab[all]' for every extra)."
    )


def test_cmaes_sampler_without_cmaes_fails_before_any_trial(cli, isolated, space, monkeypatch):
    hide(monkeypatch, "cmaes")
    res = cli("sweep", space, "sampler=cmaes")
    assert_names_extra(res, "sweep", "cmaes")
    assert "study.sampler=cmaes" in res.err
    assert not (isolated / "outputs" / "sweeps").exists()  # no trial ran


def test_postgresql_storage_without_psycopg_fails_before_any_trial(cli, isolated, space, monkeypatch):
    hide(monkeypatch, "psycopg")
    res = cli("sweep", space, "storage=postgresql://me:secret@127.0.0.1:5999/optuna")
    assert_names_extra(res, "postgres", "psycopg[binary]")
    assert "secret" not in res.err  # the password stays out of the message
    assert not (isolated / "outputs" / "sweeps").exists()


def test_joblib_launcher_without_its_plugin_names_the_sweep_extra(cli, isolated, monkeypatch):
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # plugins register their configs once per process: do it, then take joblib's away
    monkeypatch.delitem(ConfigStore.instance().repo["hydra"]["launcher"], "joblib.yaml")
    hide(monkeypatch, "hydra_plugins.hydra_joblib_launcher")
    res = cli("train", "-m", "experiment=quickstart", "hydra/launcher=joblib", "seed=1,2")
    assert_names_extra(res, "sweep", "hydra-joblib-launcher")
    assert "hydra/launcher=joblib" in res.err
    assert not (isolated / "outputs" / "mlflow.db").exists()


def test_attributions_without_captum_fail_before_training_and_can_be_turned_off(cli, isolated, monkeypatch):
    hide(monkeypatch, "captum")
    res = cli("train", "experiment=quickstart", "analysis.attributions.enabled=true")
    assert_names_extra(res, "analysis", "captum")
    assert "analysis.attributions.enabled=false" in res.err  # the way out without installing anything
    assert not (isolated / "outputs" / "mlflow.db").exists()

    from encoderlab.compose import compose

    with pytest.raises(ConfigError, match="captum"):  # the same config check, without the CLI
        compose(["experiment=quickstart", "analysis.attributions.enabled=true"])
    cfg, _ = compose(["experiment=quickstart", "analysis.attributions.enabled=false"])
    assert cfg.analysis.attributions.enabled is False


def test_the_attributions_module_names_the_extra_too(monkeypatch):
    """evaluate/predict paths reach integrated_gradients without the train config check."""
    from encoderlab.analysis.attributions import integrated_gradients

    hide(monkeypatch, "captum")
    with pytest.raises(ConfigError, match=r"pip install 'encoderlab\[analysis\]'"):
        integrated_gradients(None, None, ["a text"], ["negative", "positive"])
