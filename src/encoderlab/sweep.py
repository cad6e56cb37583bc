"""`encoderlab sweep`: an Optuna search over any config keys, one MLflow parent run per study.

    encoderlab sweep sweep=trec_scratch n_trials=20
    encoderlab sweep sweep=sst2_minilm --workers 2 model.name_or_path=/models/minilm
    encoderlab sweep sweep=trec_scratch --retest 3,3          # retrain the best 3 configs with 3 fresh seeds

The search space lives in sweeps/<name>.yaml (./sweeps first, then encoderlab's own): the overrides every
trial starts from, the study settings and the parameters. Each trial composes `encoderlab train`'s config
with the sampled values, trains with a pruning hook at every validation and returns its best validation
value (the checkpoint that is kept); with study.seeds_per_trial=N it trains N seeds and returns the mean,
so a trial's rank depends less on one lucky initialisation. Storage is SQLite under outputs/ unless
`storage=` names any SQLAlchemy URL (PostgreSQL for many workers or machines); rerunning the command
continues the study until n_trials trials are complete or pruned, and trials whose process died are
marked FAIL and redone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from encoderlab.errors import ConfigError, EncoderlabError

log = logging.getLogger("encoderlab.sweep")

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
PARAM_TYPES = ("float", "int", "categorical")
STUDY_KEYS = (
    "direction",
    "metric",
    "n_trials",
    "sampler",
    "pruner",
    "sampler_args",  # keyword arguments of the optuna sampler, e.g. {n_startup_trials: 5}
    "pruner_args",  # keyword arguments of the optuna pruner, e.g. {reduction_factor: 4}
    "storage",
    "study_name",
    "seed",
    "seeds_per_trial",  # train each trial's config with this many seeds; its value is their mean
    "heartbeat_interval",  # seconds between a running trial's heartbeats
    "grace_period",  # a trial silent this long is taken as dead (FAIL) and redone
)


MAX_CONSECUTIVE_FAILURES = 3


class SurplusTrial(Exception):
    """A worker asked for a trial after the others had taken the last of n_trials."""


# ---- the search space -----------------------------------------------------------------------------
@dataclass
class Space:
    name: str
    path: Path
    base: list[str]  # overrides of every trial
    study: dict[str, Any]
    params: dict[str, dict[str, Any]]


def sweeps_dirs() -> list[Path]:
    """Where `sweep=<name>` is looked up: ./sweeps, then the packaged sweeps/ (wheel or repo)."""
    here = Path(__file__).resolve().parent
    return [Path.cwd() / "sweeps", here / "sweeps", here.parents[1] / "sweeps"]


def load_space(name: str) -> Space:
    path = Path(name)
    if not path.suffix:
        path = next((d / f"{name}.yaml" for d in sweeps_dirs() if (d / f"{name}.yaml").is_file()), path)
    if not path.is_file():
        available = sorted({p.stem for d in sweeps_dirs() if d.is_dir() for p in d.glob("*.yaml")})
        raise ConfigError(
            f"Config error: no search space 'sweep={name}'. Available: {', '.join(available) or 'none'} "
            "(files sweeps/<name>.yaml in the current directory or in encoderlab)."
        )
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"base", "study", "params"}
    if unknown:
        raise ConfigError(
            f"Config error: {path}: unknown section(s) {', '.join(sorted(unknown))}. Allowed: base, study, params."
        )
    study = {
        "direction": "maximize",
        "metric": "val/accuracy",
        "n_trials": 20,
        "sampler": "tpe",
        "pruner": "median",
        "sampler_args": {},
        "pruner_args": {},
        "storage": None,
        "study_name": path.stem,
        "seed": 42,
        "seeds_per_trial": 1,
        "heartbeat_interval": 30,
        "grace_period": 120,
        **(raw.get("study") or {}),
    }
    # checked once, after the command line's study settings (apply_study_args), which may mend it
    return Space(path.stem, path, [str(o) for o in raw.get("base") or []], study, raw.get("params") or {})


def check_space(space: Space) -> None:
    """Clear errors for a malformed space (before any trial starts)."""
    where = f"Config error: {space.path}"
    for key in space.study:
        if key not in STUDY_KEYS:
            raise ConfigError(f"{where}: unknown study key '{key}'. Allowed: {', '.join(STUDY_KEYS)}.")
    if space.study["direction"] not in ("maximize", "minimize"):
        raise ConfigError(
            f"{where}: study.direction is {space.study['direction']!r}. Allowed: maximize, minimize."
        )
    if space.study["sampler"] not in SAMPLERS:
        raise ConfigError(
            f"{where}: study.sampler is {space.study['sampler']!r}. Allowed: {', '.join(SAMPLERS)}."
        )
    if space.study["pruner"] not in PRUNERS:
        raise ConfigError(
            f"{where}: study.pruner is {space.study['pruner']!r}. Allowed: {', '.join(PRUNERS)}."
        )
    for key in ("n_trials", "seeds_per_trial"):
        value = space.study[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key} must be an integer >= 1, got {value!r}.")
    if not space.params:
        raise ConfigError(f"{where}: no params to search.")
    seen: list[str] = []
    for key, spec in space.params.items():
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
            raise ConfigError(f"{where}: param '{key}' needs type: {' | '.join(PARAM_TYPES)}, got {spec!r}.")
        if spec["type"] == "categorical":
            if not spec.get("choices"):
                raise ConfigError(f"{where}: categorical param '{key}' needs a non-empty 'choices' list.")
        else:
            if "low" not in spec or "high" not in spec or not spec["low"] < spec["high"]:
                raise ConfigError(f"{where}: {spec['type']} param '{key}' needs low < high, got {spec!r}.")
            if spec.get("log") and spec["low"] <= 0:
                raise ConfigError(f"{where}: param '{key}' is log-scaled, so low must be > 0.")
        for cond in spec.get("when", {}) or {}:
            if cond not in seen:
                raise ConfigError(
                    f"{where}: param '{key}' is conditional on '{cond}', which must be a param listed before it."
                )
        seen.append(key)
    if space.study["sampler"] == "grid" and any(s["type"] != "categorical" for s in space.params.values()):
        raise ConfigError(
            f"{where}: the grid sampler needs categorical params only (list the values as choices)."
        )
    for kind in ("sampler", "pruner"):
        check_optuna_args(where, kind, space)


def check_optuna_args(where: str, kind: str, space: Space) -> None:
    """study.<kind>_args must be keyword arguments the named optuna sampler/pruner accepts, with values
    its constructor takes (built once here, so a bad value fails before any trial)."""
    import inspect

    name, args = space.study[kind], space.study[f"{kind}_args"]
    if args is None:
        space.study[f"{kind}_args"] = args = {}
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: study.{kind}_args must be a mapping, got {args!r}.")
    signature = inspect.signature(optuna_class(kind, name))
    allowed = [n for n in signature.parameters if n not in ("self", "seed", "search_space")]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: study.{kind}_args has {', '.join(map(repr, unknown))}, which the {name} {kind} does not "
            f"take. Allowed: {', '.join(allowed) or 'none'}."
        )
    # optuna checks these lazily (at the first pruning decision), so here, before any trial
    rf = args.get("reduction_factor", 2)
    if not isinstance(rf, int) or rf < 2:
        raise ConfigError(f"{where}: study.{kind}_args reduction_factor must be an integer >= 2, got {rf!r}.")
    for key in ("min_resource", "max_resource"):
        value = args.get(key, "auto")
        if value != "auto" and (not isinstance(value, int) or value < 1):
            raise ConfigError(
                f"{where}: study.{kind}_args {key} must be 'auto' or an integer >= 1, got {value!r}."
            )
    try:
        make_sampler(name, 0, space.params, args) if kind == "sampler" else make_pruner(name, args)
    except (TypeError, ValueError) as ex:
        raise ConfigError(f"{where}: study.{kind}_args {args} rejected by the {name} {kind}: {ex}") from ex


def check_keys(space: Space, cfg) -> None:
    """Every searched key must exist in the composed config (a typo would otherwise be a silent no-op)."""
    from omegaconf import OmegaConf

    for key in space.params:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or leaf not in node:
            siblings = (
                ", ".join(str(k) for k in node) if node is not None and hasattr(node, "keys") else "none"
            )
            raise ConfigError(
                f"Config error: {space.path}: param '{key}' is not a key of the composed config. "
                f"Keys allowed in {parent or 'the top level'}: {siblings}."
            )


def suggest(trial, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Define-by-run sampling; a param with `when: {key: value}` is sampled only when earlier values match."""
    values: dict[str, Any] = {}
    for key, spec in params.items():
        cond = spec.get("when") or {}
        if any(values.get(k) != v for k, v in cond.items()):
            continue
        if spec["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(
                key,
                int(spec["low"]),
                int(spec["high"]),
                step=int(spec.get("step", 1)),
                log=bool(spec.get("log", False)),
            )
        else:
            values[key] = trial.suggest_float(
                key,
                float(spec["low"]),
                float(spec["high"]),
                log=bool(spec.get("log", False)),
                step=spec.get("step"),
            )
    return values


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


# ---- study plumbing ------------------------------------------------------------------------------------


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
def _no_experimental_warnings():
    """Optuna calls features it still marks experimental (TPE's multivariate/group since 2.2, heartbeats
    and fail_stale_trials since 2.9) at every use; sweeps rely on them, so the warning says nothing."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def make_sampler(name: str, seed: int, params: dict[str, dict[str, Any]], args: dict | None = None):
    kwargs = {**SAMPLER_DEFAULTS.get(name, {}), **(args or {}), "seed": seed}
    with _no_experimental_warnings():
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


def open_study(space: Space):
    import optuna
    from optuna.storages import RDBStorage

    url = storage_url(space.study)
    # heartbeats let a rerun (or another worker) mark trials whose process died as FAIL
    try:
        with _no_experimental_warnings():
            storage = RDBStorage(
                url,
                heartbeat_interval=int(space.study["heartbeat_interval"]),
                grace_period=int(space.study["grace_period"]),
            )
    except Exception as ex:  # unreachable server, bad URL, missing driver
        raise EncoderlabError(
            f"Could not open the study storage {_redact(url)}: {type(ex).__name__}: {' '.join(str(ex).split())[:300]}"
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


class PruningCallback:
    """Reports the monitored validation metric to Optuna at every validation; raises TrialPruned."""

    def __new__(cls, trial, metric: str):
        import lightning as L

        class _Pruning(L.Callback):
            def __init__(self) -> None:
                self.validations = 0

            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or metric not in trainer.callback_metrics:
                    return
                import optuna

                value = float(trainer.callback_metrics[metric])
                trial.report(value, self.validations)
                self.validations += 1
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at validation {self.validations}: {metric}={value:.4f}")

        return _Pruning()


# ---- MLflow parent run of the study ---------------------------------------------------------------------
def parent_run(cfg, space: Space, url: str) -> tuple[Any, str | None]:
    """The study's parent run (found by tags on a rerun, created otherwise)."""
    if cfg.logger.backend != "mlflow":
        return None, None
    from mlflow.tracking import MlflowClient

    from encoderlab.tracking import default_tracking_uri, open_experiment

    uri = cfg.logger.tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    exp_id = open_experiment(client, cfg.experiment_name, cfg.logger.artifact_location, uri)
    study_name = space.study["study_name"]
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`encoderlab.study` = '{study_name}' and tags.`encoderlab.sweep` = 'optuna'",
    )
    found = [r for r in found if r.data.tags.get("encoderlab.study_storage") == _redact(url)]
    if found:
        run = found[0]
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return client, run.info.run_id
    run = client.create_run(
        exp_id,
        run_name=f"{study_name}-study",
        tags={
            "encoderlab.sweep": "optuna",
            "encoderlab.study": study_name,
            "encoderlab.study_storage": _redact(url),
            "encoderlab.sweep_space": str(space.path),
            "mlflow.source.name": "encoderlab sweep",
        },
    )
    client.log_param(run.info.run_id, "space", json.dumps(space.params)[:6000])
    for k, v in space.study.items():
        if k != "storage":
            client.log_param(run.info.run_id, f"study.{k}", str(v))
    return client, run.info.run_id


def _redact(url: str) -> str:
    """A storage URL without its password, for tags and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


# ---- the command ----------------------------------------------------------------------------------------
def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    p = argparse.ArgumentParser(
        prog="encoderlab sweep",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study storage")
    p.add_argument("--retest", help="K,N: retrain the best K configs with N fresh seeds each, on test")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "overrides", nargs="*", help="sweep=<name>, n_trials=, storage=, study_name=, and train overrides"
    )
    args = p.parse_args(argv)
    study_args: dict[str, str] = {}
    train_overrides: list[str] = []
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key in ("sweep", *STUDY_KEYS) and _:  # study settings; everything else goes to the trials
            study_args[key] = value
        else:
            train_overrides.append(o)
    if "sweep" not in study_args:
        raise ConfigError("Config error: 'sweep' is required: sweep=<name> names sweeps/<name>.yaml.")
    return args, study_args, train_overrides


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (in-process runners swap the stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def compose(overrides: list[str], output_dir: Path | None = None):
    """`encoderlab train`'s config for these overrides, validated (no Hydra run: output_dir is set here)."""
    if output_dir is not None:
        overrides = [*overrides, f"output_dir={Path(output_dir).resolve()}"]
    elif not any(o.startswith("output_dir=") for o in overrides):
        overrides = [*overrides, f"output_dir={(Path('outputs') / 'sweeps').resolve()}"]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from encoderlab.config import conf_dir, register_configs
    from encoderlab.validate import validate_config

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    from omegaconf import open_dict

    with open_dict(cfg):
        del cfg["hydra"]
    validate_config(cfg)
    return cfg, choices


YAML_STUDY_KEYS = (
    "n_trials",
    "seed",
    "seeds_per_trial",
    "heartbeat_interval",
    "grace_period",
    "sampler_args",
    "pruner_args",
)


def apply_study_args(space: Space, study_args: dict[str, str]) -> None:
    """Command-line study settings (`n_trials=50 pruner=none ...`) over the space's, then re-checked."""
    written_for = {kind: space.study[kind] for kind in ("sampler", "pruner")}
    for key, value in study_args.items():
        space.study[key] = yaml.safe_load(value) if key in YAML_STUDY_KEYS else value
    for kind, name in written_for.items():  # the space's args belong to the space's sampler/pruner
        if space.study[kind] != name and f"{kind}_args" not in study_args:
            space.study[f"{kind}_args"] = {}
    check_space(space)


def main(argv: list[str]) -> int:
    from encoderlab.errors import format_config_error

    args, study_args, train_overrides = parse(argv)
    space = load_space(study_args.pop("sweep"))
    apply_study_args(space, study_args)
    overrides = [
        "analysis=none",
        "probes=none",
        "trainer.enable_progress_bar=false",
        *space.base,
        *train_overrides,
    ]
    try:
        base_cfg, _ = compose(overrides)
    except Exception as ex:
        message = format_config_error(ex)
        if message is None:
            raise
        raise ConfigError(message) from ex
    check_keys(space, base_cfg)
    if base_cfg.callbacks.checkpoint.monitor != space.study["metric"]:
        overrides.append(f"callbacks.checkpoint.monitor={space.study['metric']}")
        overrides.append(
            f"callbacks.checkpoint.mode={'max' if space.study['direction'] == 'maximize' else 'min'}"
        )
    _log_to_stderr()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(space)
    url = storage_url(space.study)
    client, parent_id = parent_run(base_cfg, space, url)
    from encoderlab.tracking import default_tracking_uri

    tracking_uri = base_cfg.logger.tracking_uri or default_tracking_uri()
    log.info(
        "Study '%s' in %s: %d/%d trials complete or pruned",
        study.study_name,
        _redact(url),
        counted(study),
        space.study["n_trials"],
    )

    if args.workers > 1 and not args.worker:
        run_workers(args.workers, argv)
    else:
        run_trials(study, space, overrides, parent_id, tracking_uri)
    if args.worker:
        return 0
    best = finish_study(study, space, overrides, client, parent_id)
    if args.retest and best is not None:
        from encoderlab.retest import retest

        k, n = (int(x) for x in args.retest.split(","))
        retest(study, space, overrides, client, parent_id, k, n)
    return 0


def run_workers(n: int, argv: list[str]) -> None:
    """N local processes running the same command on the same storage; trial counts stay exact."""
    rest, skip = [], False
    for arg in argv:  # the same command without --workers N / --retest K,N (the parent retests)
        if skip:
            skip = False
        elif arg in ("--workers", "--retest"):
            skip = True
        elif not arg.startswith(("--workers=", "--retest=")):
            rest.append(arg)
    cmd = [sys.executable, "-m", "encoderlab", "sweep", "--worker", *rest]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // n))}
    procs = [subprocess.Popen(cmd, env={**env, WORKER_ENV: str(i)}) for i in range(n)]
    log.info("Started %d workers", n)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise EncoderlabError(f"sweep workers exited with codes {codes}")


def run_trials(study, space: Space, overrides: list[str], parent_id: str | None, tracking_uri: str) -> None:
    """Run trials until n_trials are complete or pruned (counting every worker's)."""
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from encoderlab.train import train

    HydraConfig.instance().cfg = None  # trials are not Hydra jobs: no stale job config from an earlier app
    target = space.study["n_trials"]
    failures = 0
    while True:
        with _no_experimental_warnings():
            fail_stale_trials(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            _mark_trial_runs(
                tracking_uri, parent_id, study.study_name, t.number, "FAILED", "FAIL", skip_marked=True
            )
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if counted(study) + running >= target:
            if running == 0 or counted(study) >= target:
                break
            time.sleep(5)  # others' trials may still fail and need redoing
            continue

        def objective(trial: optuna.Trial) -> float:
            if counted(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) > target:
                trial.set_user_attr("surplus", True)  # another worker took the last slot: FAIL, not counted
                raise SurplusTrial("the study already has its n_trials")
            values = suggest(trial, space.params)
            trial_overrides = [*overrides, *(_override(k, v) for k, v in values.items())]
            out_dir = Path("outputs") / "sweeps" / study.study_name / f"trial_{trial.number:04d}"
            cfg, choices = compose(trial_overrides, out_dir)
            trial.set_user_attr("overrides", trial_overrides)
            trial.set_user_attr("choices", choices)
            tags = {"encoderlab.study": study.study_name, "encoderlab.trial": str(trial.number)}
            # seeds_per_trial > 1: the config's seed, then seed + 1, ...; each in its own run directory and
            # MLflow run. The pruner judges the trial on the first seed's curve (one value per validation);
            # a trial it keeps trains the other seeds, and its value is the mean of their best values.
            n_seeds = space.study["seeds_per_trial"]
            seeds = [cfg.seed + j for j in range(n_seeds)]
            bests: dict[int, float] = {}
            for j, seed in enumerate(seeds):
                run_dir = out_dir if n_seeds == 1 else out_dir / f"seed{seed}"
                if n_seeds > 1:
                    cfg, _ = compose([*trial_overrides, f"seed={seed}"], run_dir)
                try:
                    best = train(
                        cfg,
                        callbacks=[PruningCallback(trial, space.study["metric"])] if j == 0 else [],
                        parent_run_id=parent_id,
                        tags={**tags, "encoderlab.trial_seed": str(seed)},
                    )
                except optuna.TrialPruned:
                    raise
                except KeyboardInterrupt:
                    _mark_trial_runs(
                        tracking_uri, parent_id, study.study_name, trial.number, "FAILED", "interrupted"
                    )
                    raise
                if best is None:
                    raise EncoderlabError(
                        f"trial {trial.number}, seed {seed}: no validation value of {space.study['metric']}"
                    )
                bests[seed] = best
                if j == 0:
                    trial.set_user_attr("run_dir", str(run_dir.resolve()))
            value = sum(bests.values()) / len(bests)
            if n_seeds > 1:
                trial.set_user_attr("seed_values", {str(k): v for k, v in bests.items()})
            _mark_trial_runs(
                tracking_uri, parent_id, study.study_name, trial.number, None, "COMPLETE", value=value
            )
            return value

        study.optimize(objective, n_trials=1, catch=(Exception,))
        last = study.get_trials(deepcopy=False)[-1]
        if last.state == TrialState.FAIL and not last.user_attrs.get("surplus"):
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise EncoderlabError(
                    f"{failures} trials in a row failed (the last: trial {last.number}); stopping the sweep. "
                    "See the trials' logs and their FAILED MLflow runs for the reason."
                )
        else:
            failures = 0


def _mark_trial_runs(
    tracking_uri: str,
    parent_id: str | None,
    study_name: str,
    number: int,
    status: str | None,
    state: str,
    skip_marked: bool = False,
    value: float | None = None,
) -> None:
    """Tag the trial's runs with its Optuna state and end those not FINISHED with `status`; `value`, the
    trial's objective, is logged on each as `trial/objective`: with seeds_per_trial > 1 no single run
    holds it. skip_marked: skip the runs that ended and already carry a state (a FAIL trial is
    re-checked on every pass; its finished seeds get tagged once)."""
    if parent_id is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`encoderlab.trial` = '{number}'",
    )
    for r in runs:
        if skip_marked and r.info.status != "RUNNING" and "encoderlab.trial_state" in r.data.tags:
            continue
        client.set_tag(r.info.run_id, "encoderlab.trial_state", state)
        if value is not None:
            client.log_metric(r.info.run_id, "trial/objective", value)
        if status is not None and r.info.status not in ("FINISHED", status):  # a finished seed stays so
            client.set_terminated(r.info.run_id, status)


def finish_study(study, space: Space, overrides: list[str], client, parent_id: str | None):
    """Best params, best.yaml, importances and the four plots, logged on the parent run."""
    from optuna.trial import TrialState

    from encoderlab.study_report import write_study_report

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning("No complete trial yet: nothing to report.")
        return None
    out_dir = Path("outputs") / "sweeps" / study.study_name
    files = write_study_report(study, space, out_dir)
    best = study.best_trial
    if client is not None:
        client.log_artifacts(parent_id, str(out_dir / "report"), "study")
        client.log_metric(parent_id, f"best/{space.study['metric']}", best.value)
        client.log_metric(parent_id, "study/complete", len(complete))
        client.log_metric(
            parent_id, "study/pruned", len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        )
        client.log_metric(
            parent_id, "study/failed", len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        )
        for k, v in best.params.items():
            client.set_tag(parent_id, f"best.{k}", str(v))
        client.set_terminated(parent_id, "FINISHED")
    print(f"Best trial {best.number}: {space.study['metric']}={best.value:.4f} with {best.params}")
    print(f"Rerun it: encoderlab train --config-dir {files['best_yaml'].parent} --config-name best")
    return best
