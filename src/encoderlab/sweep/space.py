"""Search spaces: sweeps/<name>.yaml (base overrides, study settings, params), checked before any trial,
and define-by-run sampling of a trial's values."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from encoderlab.errors import ConfigError, yaml_error
from encoderlab.sweep.study import PRUNERS, SAMPLERS, make_pruner, make_sampler, optuna_class

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


YAML_STUDY_KEYS = (
    "n_trials",
    "seed",
    "seeds_per_trial",
    "heartbeat_interval",
    "grace_period",
    "sampler_args",
    "pruner_args",
)


@dataclass
class Space:
    name: str
    path: Path
    base: list[str]  # overrides of every trial
    study: dict[str, Any]
    params: dict[str, dict[str, Any]]


def sweeps_dirs() -> list[Path]:
    """Where `sweep=<name>` is looked up: ./sweeps, then the packaged sweeps/ (wheel or repo)."""
    from encoderlab.paths import packaged_sweeps_dir

    return [Path.cwd() / "sweeps", packaged_sweeps_dir()]


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
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as ex:
        raise yaml_error(ex, path) from ex
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Config error: {path} must be a mapping with the sections base, study and params; "
            f"it holds a {type(raw).__name__}."
        )
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
            for bound in ("low", "high"):
                if bound in spec:
                    spec[bound] = _bound(where, key, bound, spec[bound])
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


def _bound(where: str, key: str, bound: str, value: object) -> float:
    """A float/int param's low or high as a number. YAML reads `1e-4` (no dot) as a string: taken as the
    number it spells."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: param '{key}' needs a number for {bound}, got {value!r}.")
    return value


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


def as_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


def apply_study_args(space: Space, study_args: dict[str, str]) -> None:
    """Command-line study settings (`n_trials=50 pruner=none ...`) over the space's, then re-checked."""
    written_for = {kind: space.study[kind] for kind in ("sampler", "pruner")}
    for key, value in study_args.items():
        space.study[key] = yaml.safe_load(value) if key in YAML_STUDY_KEYS else value
    for kind, name in written_for.items():  # the space's args belong to the space's sampler/pruner
        if space.study[kind] != name and f"{kind}_args" not in study_args:
            space.study[f"{kind}_args"] = {}
    check_space(space)
