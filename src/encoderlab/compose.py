"""Composing configs: Hydra apps for the commands, in-process composition for sweeps, rerun configs.

Nothing here imports torch or lightning: a config mistake fails in milliseconds.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from encoderlab.paths import conf_dir

# the groups a rerun config pins with `override /<group>: <option>`
GROUPS = (
    "model",
    "tokenizer",
    "dataset",
    "trainer",
    "optimizer",
    "scheduler",
    "logger",
    "callbacks",
    "analysis",
    "probes",
)


def run_hydra(argv: list[str], config_name: str, task: Callable, prog: str) -> int:
    """Run a Hydra app over the packaged conf/ and turn config mistakes into plain errors."""
    import hydra

    from encoderlab.config import register_configs
    from encoderlab.errors import EncoderlabError, format_config_error
    from encoderlab.multirun import close_open_parent

    register_configs()
    failed: list[EncoderlabError] = []
    if not any(a in ("-m", "--multirun") or a.startswith("hydra.mode=") for a in argv):
        import functools

        inner = task

        @functools.wraps(inner)  # Hydra names the job (and its log file) after the task's module
        def task(cfg):  # noqa: F811  (one run: keep Hydra's "Error executing job with overrides" line away)
            try:
                return inner(cfg)
            except EncoderlabError as ex:
                failed.append(ex)
                return None

    main_fn = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(task)
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's own printer
    saved_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        main_fn()
        if failed:
            raise failed[0]
    except EncoderlabError as ex:
        if user_full_error:
            raise
        print(f"error: {ex}", file=sys.stderr)
        return ex.exit_code
    except Exception as ex:
        message = format_config_error(ex)
        if message is None and not user_full_error:  # a full disk, memory, the tracking store
            from encoderlab.failures import describe_failure, traceback_to_log_files

            failure = describe_failure(ex)
            if failure is not None:
                traceback_to_log_files(ex)
                print(f"error: {failure}", file=sys.stderr)
                return 1
        if message is None or user_full_error:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        close_open_parent(sys.exc_info()[1])
        sys.argv = saved_argv
        if not user_full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0


def compose(overrides: list[str], output_dir: Path | None = None):
    """`encoderlab train`'s config for these overrides, validated, and the group choices it made (no
    Hydra run: output_dir is set here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from encoderlab.config import register_configs
    from encoderlab.validate import validate_config

    if output_dir is not None:
        overrides = [*overrides, f"output_dir={Path(output_dir).resolve()}"]
    elif not any(o.startswith("output_dir=") for o in overrides):
        overrides = [*overrides, f"output_dir={(Path('outputs') / 'sweeps').resolve()}"]
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    validate_config(cfg)
    return cfg, choices


def write_rerun_config(values: dict, choices: dict, path: Path, header: str = "") -> Path:
    """A primary config reproducing `values` exactly: `train` + the same group options + every value."""
    values = {k: v for k, v in values.items() if k not in ("hydra", "output_dir")}
    defaults = ["train", *({f"override /{g}": choices[g]} for g in GROUPS if choices.get(g)), "_self_"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump({"defaults": defaults, **values}, sort_keys=False))
    return path


def top_level_keys(path: Path) -> list[tuple[str, str, str]]:
    """(key, default, comment) of each top-level key of a primary config file, its defaults list and
    hydra section left out: the lines `<key>: <value>  # <comment>` as written."""
    out = []
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z_]\w*):(.*)$", line)
        if not match or match[1] in ("defaults", "hydra"):
            continue
        value, _, comment = match[2].partition("#")
        out.append((match[1], value.strip() or "{...}", comment.strip()))
    return out


def config_help(config_name: str = "train") -> str:
    """`encoderlab train --help` from the config files alone: Hydra's generated help deep-copies the
    whole config store once per group option (over a second); this answers in tens of milliseconds."""
    conf = conf_dir()
    defaults: dict[str, str] = {}
    for entry in yaml.safe_load((conf / f"{config_name}.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            defaults.update({str(k): str(v) for k, v in entry.items()})
    lines = []
    groups = sorted(d for d in conf.iterdir() if d.is_dir() and d.name != "hydra")
    if config_name != "train":  # evaluate composes only some groups
        groups = [g for g in groups if g.name in defaults]
    for group in groups:
        options = sorted(f.stem for f in group.glob("*.yaml"))
        marked = [f"{o}*" if defaults.get(group.name) == o else o for o in options]
        lines.append(f"  {group.name + ':':<11} {', '.join(marked)}")
    launchers = sorted(f.stem for f in (conf / "hydra" / "launcher").glob("*.yaml"))
    keys = "\n".join(
        f"  {key + '=' + value:<24} {comment}".rstrip()
        for key, value, comment in top_level_keys(conf / f"{config_name}.yaml")
    )
    return f"""\
encoderlab {config_name}: compose conf/{config_name}.yaml with your overrides and run it

usage: encoderlab {config_name} [group=option ...] [key=value ...] [flags]

config groups (pick one with group=option; * marks the default):
{chr(10).join(lines)}

keys (set with key=value; a group's keys with group.key=value, listed by --cfg job):
{keys}

flags:
  -m, --multirun        a run per combination of comma-separated values (one MLflow parent run)
  --cfg job             print the composed config and exit (--resolve to resolve interpolations)
  --config-dir DIR      add a directory of your own groups and options
  --help-full           Hydra's generated help, with the full composed config
  --hydra-help          Hydra's own flags (launchers, logging, run directories)

launchers (-m hydra/launcher=...): basic (default, sequential), joblib (parallel processes), {", ".join(launchers)}
config tree: {conf}
"""


def hydra_command(argv: list[str], config_name: str, task: Callable) -> int:
    """A Hydra-backed command (train, evaluate): fast help from the config files, else the Hydra app."""
    own_dirs = any(a.startswith(("--config-dir", "-cd")) for a in argv)  # their groups: Hydra's help
    if argv[:1] in (["-h"], ["--help"]) and not own_dirs:
        print(config_help(config_name))
        return 0
    argv = ["--help" if a == "--help-full" else a for a in argv]  # Hydra's own generated help
    return run_hydra(argv, config_name, task, f"encoderlab {config_name}")
