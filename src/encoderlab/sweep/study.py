"""Optuna plumbing: samplers and pruners by name, the study's storage (SQLite or any SQLAlchemy URL), and
per-process sampler seeds."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from encoderlab.errors import EncoderlabError, require_extra

# optuna class names (optuna is imported only when a study is built: it is slow to import)
SAMPLER_CLASSES = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
}
PRUNER_CLASSES = {
    "median": "MedianPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}
SAMPLERS = tuple(SAMPLER_CLASSES)
PRUNERS = tuple(PRUNER_CLASSES)


def optuna_class(kind: str, name: str):
    """The optuna sampler (kind="sampler") or pruner class that `name` stands for."""
    import optuna

    if kind == "sampler":
        return getattr(optuna.samplers, SAMPLER_CLASSES[name])
    return getattr(optuna.pruners, PRUNER_CLASSES[name])


# encoderlab's defaults where they differ from optuna's; study.<kind>_args override them
SAMPLER_DEFAULTS = {
    "tpe": {"multivariate": True, "group": True},
    "cmaes": {"warn_independent_sampling": False},
}
PRUNER_DEFAULTS = {"median": {"n_startup_trials": 5, "n_warmup_steps": 2}}


@contextmanager
def no_experimental_warnings():
    """Optuna calls features it still marks experimental (TPE's multivariate/group since 2.2, heartbeats
    and fail_stale_trials since 2.9) at every use; sweeps rely on them, so the warning says nothing."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def require_sampler_package(name: str) -> None:
    """optuna's CMA-ES sampler imports the `cmaes` package only when it samples: check before any trial."""
    if name == "cmaes":
        require_extra("cmaes", "cmaes", "sweep", "study.sampler=cmaes")


def require_storage_driver(url: str) -> None:
    """A PostgreSQL storage URL needs psycopg (SQLAlchemy's default PostgreSQL driver)."""
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgresql+psycopg"):
        require_extra("psycopg", "psycopg[binary]", "postgres", f"the PostgreSQL study storage {redact(url)}")


def make_sampler(name: str, seed: int, params: dict[str, dict[str, Any]], args: dict | None = None):
    require_sampler_package(name)
    kwargs = {**SAMPLER_DEFAULTS.get(name, {}), **(args or {}), "seed": seed}
    with no_experimental_warnings():
        if name == "grid":
            return optuna_class("sampler", name)({k: list(s["choices"]) for k, s in params.items()}, **kwargs)
        return optuna_class("sampler", name)(**kwargs)


def make_pruner(name: str, args: dict | None = None):
    return optuna_class("pruner", name)(**{**PRUNER_DEFAULTS.get(name, {}), **(args or {})})


def storage_url(study: dict[str, Any]) -> str:
    url = study["storage"] or f"sqlite:///{Path.cwd() / 'outputs' / 'optuna.db'}"
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def open_study(space):
    import optuna
    from optuna.storages import RDBStorage

    url = storage_url(space.study)
    require_storage_driver(url)
    # heartbeats let a rerun (or another worker) mark trials whose process died as FAIL
    from encoderlab.tracking import open_store

    try:
        with no_experimental_warnings():  # open_store: parallel workers may create the storage at once
            storage = open_store(
                url,
                lambda: RDBStorage(
                    url,
                    heartbeat_interval=int(space.study["heartbeat_interval"]),
                    grace_period=int(space.study["grace_period"]),
                ),
            )
    except EncoderlabError:
        raise
    except Exception as ex:  # unreachable server, bad URL, missing driver
        raise EncoderlabError(
            f"Could not open the study storage {redact(url)}: {type(ex).__name__}: {' '.join(str(ex).split())[:300]}"
        ) from ex
    study = optuna.create_study(
        study_name=space.study["study_name"],
        storage=storage,
        direction=space.study["direction"],
        pruner=make_pruner(space.study["pruner"], space.study["pruner_args"]),
        load_if_exists=True,
    )
    # seeded once the study's trials are known (sampler_seed_offset)
    study.sampler = make_sampler(
        space.study["sampler"],
        space.study["seed"] + sampler_seed_offset(study),
        space.params,
        space.study["sampler_args"],
    )
    if study.direction.name.lower() != space.study["direction"]:
        raise EncoderlabError(
            f"Study '{study.study_name}' in {url} was created to {study.direction.name.lower()}, but the space "
            f"says {space.study['direction']}. Use another study_name= or storage=."
        )
    return study


WORKER_ENV = "ENCODERLAB_SWEEP_WORKER"  # set by --workers N: this process's index


def sampler_seed_offset(study) -> int:
    """0 for a new study run by one process, so the same command proposes the same trials; the worker
    index for --workers N; and a per-process value when the study already has trials (a resumed study, or
    other machines at work on it), so no two processes propose the same sequence."""
    worker = int(os.environ.get(WORKER_ENV, "0"))
    if study.get_trials(deepcopy=False):
        return 1000 * (worker + 1) + os.getpid() % 1000
    return worker


def counted(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def redact(url: str) -> str:
    """A storage URL without its password, for tags and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
