"""User-facing errors: what was wrong, what is allowed, in one paragraph."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any


class EncoderlabError(Exception):
    """A problem with the user's input (config, data, model path): reported without a traceback."""


class ConfigError(EncoderlabError):
    """The composed config is invalid: reported before any heavy import, exit code 2."""


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (optional dependencies)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module set to None in sys.modules
        return False


def missing_extra(package: str, extra: str, needed_for: str) -> ConfigError:
    """An optional dependency is not installed: what needs it and the pip extra that brings it."""
    return ConfigError(
        f"Config error: {needed_for} needs the optional package '{package}', which is not installed. "
        f"Install it with: pip install 'encoderlab[{extra}]' (or 'encoderlab[all]' for every extra)."
    )


def require_extra(module: str, package: str, extra: str, needed_for: str) -> None:
    """Raise missing_extra(...) unless `module` is importable."""
    if not installed(module):
        raise missing_extra(package, extra, needed_for)


# hydra/launcher options that a Hydra plugin provides: option -> (plugin module, pip package, extra)
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "sweep"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
}


def _missing_launcher_plugin(message: str) -> str | None:
    """Hydra says it cannot find 'hydra/launcher/<option>': name the extra when that plugin is absent."""
    for option, (module, package, extra) in LAUNCHER_PLUGINS.items():
        if f"hydra/launcher/{option}'" in message and not installed(module):
            return str(missing_extra(package, extra, f"hydra/launcher={option}"))
    return None


def conv_kernel_error(conv_kernel: int) -> ConfigError:
    """model.conv_kernel must be >= 0: said once, for the config check and for ScratchConfig."""
    return ConfigError(
        f"Config error: bad value for 'model.conv_kernel': {conv_kernel}. "
        "Allowed: 0 (no convolution) or a positive kernel width such as 3."
    )


def members_error(n_members: int) -> ConfigError:
    """model.n_members must be >= 1: said once, for the config check and for ScratchConfig."""
    return ConfigError(
        f"Config error: bad value for 'model.n_members': {n_members}. "
        "Allowed: 1 (one encoder) or more (an ensemble of that many encoders, probabilities averaged)."
    )


def heads_error(d_model: int, n_heads: int) -> ConfigError:
    """n_heads must divide d_model: said once, for the config check and for ScratchConfig."""
    divisors = ", ".join(str(h) for h in range(1, 65) if d_model % h == 0)
    return ConfigError(
        f"Config error: model.n_heads={n_heads} must divide model.d_model={d_model} "
        f"(each head gets d_model / n_heads dimensions). Divisors of {d_model} up to 64: {divisors}."
    )


def _allowed_keys(object_type: Any) -> list[str]:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _schema_for(full_key: str) -> Any:
    from encoderlab.config import SCHEMAS

    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    return SCHEMAS.get(parent)


def _field_type(object_type: Any, key: str) -> str | None:
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return None
    for f in dataclasses.fields(object_type):
        if f.name == key:
            return str(f.type)
    return None


def format_config_error(ex: BaseException) -> str | None:
    """Turn a Hydra/OmegaConf composition error into one plain paragraph; None if it is not one."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if isinstance(ex, MissingConfigException):
        first = str(ex).strip().split("\n")[0]
        plugin = _missing_launcher_plugin(first)
        if plugin:
            return plugin
        options = getattr(ex, "options", None) or []
        options = [o for o in options if not o.endswith("_schema")]
        if options:
            return f"Config error: {first.rstrip('.')}. Available options: {', '.join(options)}."
        return f"Config error: {first}"
    if isinstance(ex, OverrideParseException):
        return f"Config error: could not parse the override: {str(ex).strip()}"

    cause = ex.__cause__ if isinstance(ex, ConfigCompositionException) else ex
    if isinstance(cause, ConfigCompositionException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if not isinstance(cause, OmegaConfBaseException):
        if isinstance(ex, ConfigCompositionException):
            return "Config error: " + " ".join(str(ex).split())
        return None

    full_key = getattr(cause, "full_key", None) or ""
    object_type = getattr(cause, "object_type", None)
    header = " ".join(str(ex).split()) if cause is not ex else ""
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = full_key.rsplit(".", 1)[-1]
        schema = object_type if dataclasses.is_dataclass(object_type) else _schema_for(full_key)
        allowed = _allowed_keys(schema)
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else "the top level"
        msg = f"Config error: unknown key '{full_key or key}'"
        if header:
            msg += f" ({header})"
        msg += "."
        if allowed:
            msg += f" Keys allowed in {parent}: {', '.join(allowed)}."
        return msg
    if isinstance(cause, ValidationError):
        key = full_key.rsplit(".", 1)[-1]
        expected = _field_type(object_type, key) or _field_type(_schema_for(full_key), key)
        detail = str(cause).split("\n")[0]
        msg = f"Config error: bad value for '{full_key}': {detail}."
        if expected:
            msg += f" '{full_key}' must be of type {expected}."
        return msg
    if isinstance(cause, MissingMandatoryValue):
        return f"Config error: '{full_key}' is required but was not set (it is ??? in the config); pass {full_key}=..."
    return "Config error: " + " ".join(str(cause).split())
