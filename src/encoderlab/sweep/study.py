"""Optuna plumbing: samplers and pruners by name, the study's storage (SQLite or any SQLAlchemy URL),
per-trial sampler seeds and a lock on the study shared by all its workers."""

from __future__ import annotations

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
    study.sampler = trial_seeded_sampler(
        space.study["sampler"], space.study["seed"], space.params, space.study["sampler_args"]
    )
    if study.direction.name.lower() != space.study["direction"]:
        raise EncoderlabError(
            f"Study '{study.study_name}' in {url} was created to {study.direction.name.lower()}, but the space "
            f"says {space.study['direction']}. Use another study_name= or storage=."
        )
    return study


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` of a study with study.seed=`seed`."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def trial_seeded_sampler(name: str, seed: int, params: dict[str, dict[str, Any]], args: dict | None = None):
    """The study's sampler, drawing each trial's values from its own seed stream: trial N is sampled by a
    fresh `name` sampler seeded with trial_seed(study.seed, N). The storage hands out trial numbers
    atomically, so workers started independently (on one machine or many) never draw the same sequence,
    and trial N proposes the same values whichever worker runs it (given the same finished trials: TPE
    and CMA-ES also read the study's history). Samplers keep their state in the storage, not in the
    object, so rebuilding one per trial loses nothing."""
    from optuna.samplers import BaseSampler

    class TrialSeededSampler(BaseSampler):
        def __init__(self) -> None:
            self._number: int | None = None
            self._inner = make_sampler(name, trial_seed(seed, 0), params, args)

        def __str__(self) -> str:
            return f"TrialSeeded({self._inner})"

        def _for(self, trial):
            if trial.number != self._number:
                self._inner = make_sampler(name, trial_seed(seed, trial.number), params, args)
                self._number = trial.number
            return self._inner

        def before_trial(self, study, trial) -> None:
            self._for(trial).before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._for(trial).after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._inner.reseed_rng()

    return TrialSeededSampler()


STUDY_LOCK_TIMEOUT_S = 300.0


@contextmanager
def study_lock(url: str, study_name: str, timeout_s: float = STUDY_LOCK_TIMEOUT_S):
    """A lock on the study held by one of its workers at a time, wherever they run: a PostgreSQL advisory
    lock (or MySQL named lock) in the storage's database, a file lock beside a SQLite storage. Other
    databases: no lock (workers started at the same instant may then create two MLflow parent runs)."""
    import hashlib
    import time

    scheme = url.split("://", 1)[0].split("+", 1)[0]
    name = f"encoderlab.study:{study_name}"
    if scheme == "sqlite":
        from filelock import FileLock

        with FileLock(f"{url.removeprefix('sqlite:///').split('?', 1)[0]}.lock", timeout=timeout_s):
            yield
        return
    if scheme not in ("postgresql", "mysql"):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    take, give = {
        "postgresql": ("SELECT pg_try_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
        "mysql": ("SELECT GET_LOCK(:n, 0)", "SELECT RELEASE_LOCK(:n)"),
    }[scheme]
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as con:  # the lock belongs to this connection's session
            deadline = time.monotonic() + timeout_s
            while not con.execute(sqlalchemy.text(take), {"k": key, "n": name[:64]}).scalar():
                if time.monotonic() > deadline:
                    raise EncoderlabError(
                        f"Another worker of study '{study_name}' held its lock in {redact(url)} for over "
                        f"{timeout_s:.0f} s."
                    )
                time.sleep(0.2)
            try:
                yield
            finally:
                con.execute(sqlalchemy.text(give), {"k": key, "n": name[:64]})
    finally:
        engine.dispose()


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
