"""What a config node's `_target_` accepts: the keyword arguments of the class or function it names.

The trainer, callbacks, optimizer and scheduler groups are plain `_target_` dicts (any argument of the
target works from YAML); their keys are checked here against the target's signature instead of a schema.
Importing a target imports its library (torch, lightning): call this after the light checks.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

# Hydra's instantiate keys, not arguments of the target
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
_PLAIN = (bool, int, float, str, type(None))
# arguments encoderlab passes itself when it instantiates a group's target, and where they come from
INJECTED = {
    "trainer": {
        "logger": "the logger group",
        "callbacks": "the callbacks group (add one under callbacks.<name>)",
        "default_root_dir": "the run directory",
    },
    "optimizer": {"params": "the model's parameters, in two groups (decay and no decay)"},
    "scheduler": {"optimizer": "the optimizer group", "num_training_steps": "the fit's optimizer steps"},
}


def locate(target: str) -> Any:
    """The class or function `target` names (a dotted path); ImportError/AttributeError if there is none."""
    from hydra.utils import get_object

    return get_object(target)


def signature(obj: Any) -> inspect.Signature | None:
    """The call signature (a class: its __init__ without self), annotations evaluated where possible."""
    for eval_str in (True, False):
        try:
            return inspect.signature(obj, eval_str=eval_str)
        except (NameError, TypeError, SyntaxError):
            continue
        except ValueError:  # builtins without a signature
            return None
    return None


def keyword_parameters(sig: inspect.Signature) -> dict[str, inspect.Parameter] | None:
    """Parameters a config can set by name; None when the target takes **kwargs (any name goes)."""
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def accepts(annotation: Any, value: Any) -> bool | None:
    """Whether a plain config value (bool, int, float, str, None) fits `annotation`; None when the
    annotation names other types (tensors, classes, containers), which this does not judge."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if not isinstance(value, _PLAIN):
        return None
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds: set[type] = set()
    for arg in typing.get_args(annotation) if union else (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            kinds |= {type(v) for v in typing.get_args(arg)}
        elif arg in _PLAIN:
            kinds.add(arg)
        else:
            return None
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    return type(value) in kinds


def describe(annotation: Any) -> str:
    """`Optional[int]` as a user reads it: int or None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    names = []
    for arg in typing.get_args(annotation) if union else (annotation,):
        names.append("None" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " or ".join(names)
