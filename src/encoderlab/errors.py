"""User-facing errors: what was wrong, what is allowed, in one paragraph."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
from typing import Any


class EncoderlabError(Exception):
    """A problem with the user's input (config, data, model path): reported without a traceback."""

    exit_code = 1


class ConfigError(EncoderlabError):
    """The composed config is invalid: reported before any heavy import, exit code 2."""

    exit_code = 2


class TrackingIncomplete(EncoderlabError):
    """The run finished (model exported to its run directory) but the tracking server never came back
    for part of what it logged: exit code 3, and `encoderlab sync <run dir>` sends the rest."""

    exit_code = 3


class DivergedError(EncoderlabError):
    """The training loss became NaN/inf: the run stops there and exports nothing, exit code 1."""


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


def yaml_error(ex: BaseException, path: object = None) -> ConfigError:
    """A YAML syntax error as one paragraph naming the file and the line (PyYAML's own message says
    "<unicode string>" for text it was handed rather than a file)."""
    mark = getattr(ex, "problem_mark", None) or getattr(ex, "context_mark", None)
    name = str(path) if path is not None else (getattr(mark, "name", None) or "a config file")
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(ex, "problem", None) or ex).split())
    context = getattr(ex, "context", None)
    opened = getattr(ex, "context_mark", None)
    if context and opened is not None and mark is not None and opened.line != mark.line:
        context = f"{context} that starts at line {opened.line + 1}"
    detail = f"{problem} ({' '.join(context.split())})" if context else problem
    return ConfigError(
        f"Config error: {name} is not valid YAML{where}: {detail}. Check that line and the one above it "
        "(unclosed brackets or quotes, a missing ':' or space after it, tabs used for indentation)."
    )


def _yaml_cause(ex: BaseException) -> BaseException | None:
    """The yaml.YAMLError in an exception's chain, if any."""
    import yaml

    seen = set()
    while ex is not None and id(ex) not in seen:
        if isinstance(ex, yaml.YAMLError):
            return ex
        seen.add(id(ex))
        ex = ex.__cause__ or ex.__context__
    return None


def heads_error(d_model: int, n_heads: int) -> ConfigError:
    """n_heads must divide d_model: said once, for the config check and for ScratchConfig."""
    divisors = ", ".join(str(h) for h in range(1, 65) if d_model % h == 0)
    return ConfigError(
        f"Config error: model.n_heads={n_heads} must divide model.d_model={d_model} "
        f"(each head gets d_model / n_heads dimensions). Divisors of {d_model} up to 64: {divisors}."
    )


def moved_key_error(key: str) -> ConfigError | None:
    """The error for a key whose setting moved elsewhere (config.MOVED_KEYS); else None."""
    from encoderlab.config import MOVED_KEYS

    if key not in MOVED_KEYS:
        return None
    return ConfigError(f"Config error: '{key}' is no longer a key; {MOVED_KEYS[key]}.")


def hf_only_key_error(key: str, missing: str | None = None) -> ConfigError | None:
    """model.peft / model.lora.* given to a model family that has neither key (the scratch encoder);
    `missing`: the key the model node lacks, when `key` is one under it."""
    if (missing or key) not in ("model.peft", "model.lora"):
        return None
    return ConfigError(
        f"Config error: '{key}': LoRA (model.peft=lora) applies to pretrained Hugging Face encoders "
        "(model=minilm, bert_base, distilbert, roberta_base, or model=hf with model.name_or_path); the scratch "
        "encoder has no pretrained weights to keep frozen and trains all of its weights. Drop model.peft, "
        "or pick a pretrained model."
    )


def renamed_key_error(key: str, allowed: list[str], value: Any = None) -> ConfigError | None:
    """The error for a key that was renamed (config.RENAMED_KEYS) to one this section has, or whose setting
    moved elsewhere (config.MOVED_KEYS); else None."""
    from encoderlab.config import ALLOWED_VALUES, RENAMED_KEYS

    moved = moved_key_error(key)
    if moved is not None:
        return moved
    new = RENAMED_KEYS.get(key)
    if new is None or new.rsplit(".", 1)[-1] not in allowed:
        return None
    values = ALLOWED_VALUES.get(new)
    if value is None or (values and str(value) not in values):  # e.g. attention=explicit: now eager
        use = f"{new} ({', '.join(values)})" if values else f"{new} instead"
    else:
        use = f"{new}={value}"
    return ConfigError(f"Config error: '{key}' was renamed to '{new}'; use {use}.")


def target_key_error(full_key: str, target: str) -> str | None:
    """The message for a key that a `_target_` node (trainer, optimizer, scheduler, a callback) does not
    have: a typo, with the target's arguments, or a real argument that needs Hydra's '+' to be added.
    None when the target cannot be imported or takes **kwargs. Imports the target."""
    from encoderlab import targets

    try:
        sig = targets.signature(targets.locate(target))
    except (ImportError, AttributeError, ValueError):
        return None
    params = targets.keyword_parameters(sig) if sig is not None else None
    if params is None:
        return None
    parent, _, key = full_key.rpartition(".")
    names = [n for n in params if n not in targets.INJECTED.get(parent, {})]
    if key in names:
        return (
            f"Config error: '{full_key}' is an argument of {target} that the config does not set yet: "
            f"add it with a '+', e.g. +{full_key}=<value> (or in your own YAML option of the group)."
        )
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"Config error: unknown key '{full_key}': {target} takes no argument '{key}'.{hint} "
        f"Keys allowed in {parent} (the arguments of {target}): {', '.join(names)}."
    )


def _allowed_keys(object_type: Any) -> list[str]:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _schema_for(full_key: str) -> Any:
    from encoderlab.config import SCHEMAS

    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    return SCHEMAS.get(parent)


def _node_target(node: Any) -> str | None:
    """The `_target_` of the config node a key error happened in, if it has one."""
    from omegaconf import DictConfig

    if isinstance(node, DictConfig) and isinstance(node.get("_target_"), str):
        return node.get("_target_")
    return None


def _field_type(object_type: Any, key: str) -> str | None:
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return None
    for f in dataclasses.fields(object_type):
        if f.name == key:
            return str(f.type)
    return None


def _override_value(full_key: str, header: str) -> str | None:
    """The value of a failed `key=value` override, from Hydra's message ("... use +key=value")."""
    import re

    match = re.search(rf"\+{re.escape(full_key)}=(\S+)", header)
    return match.group(1) if match else None


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

    yaml_ex = _yaml_cause(ex)
    if yaml_ex is not None:
        return str(yaml_error(yaml_ex))
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
    if cause is None and isinstance(ex.__context__, OmegaConfBaseException):  # a YAML file's bad key
        cause = ex.__context__
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
        overridden = re.search(r"Could not override '([^']+)'", header)  # a key under a missing one
        key = overridden.group(1) if overridden else full_key
        moved = moved_key_error(key) or hf_only_key_error(key, full_key)
        if moved is not None:
            return str(moved)
        target = _node_target(getattr(cause, "parent_node", None))
        message = target_key_error(full_key, target) if target and "." in full_key else None
        if message:
            return message
        key = full_key.rsplit(".", 1)[-1]
        schema = object_type if dataclasses.is_dataclass(object_type) else _schema_for(full_key)
        allowed = _allowed_keys(schema)
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else "the top level"
        renamed = renamed_key_error(full_key, allowed, _override_value(full_key, header))
        if renamed is not None:
            return str(renamed)
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
