"""Checks on a composed config that types alone cannot express; run before any heavy import."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, ListConfig, OmegaConf

from encoderlab.config import ALLOWED_VALUES, SCHEMAS
from encoderlab.errors import ConfigError, conv_kernel_error, heads_error, members_error, require_extra


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"Config error: bad value for '{key}': {value!r}. Allowed: {allowed}.")


def _check_known_keys(cfg: DictConfig, root: type | None = None) -> None:
    """Keys added with Hydra's `+key=value` bypass the schema; reject those the code would ignore."""
    for section, schema in {**SCHEMAS, "": root or SCHEMAS[""]}.items():
        node = OmegaConf.select(cfg, section) if section else cfg
        if not isinstance(node, DictConfig):
            continue
        if section == "model":  # each model family has its own schema
            schema = (
                OmegaConf.get_type(node) if dataclasses.is_dataclass(OmegaConf.get_type(node)) else schema
            )
        allowed = [f.name for f in dataclasses.fields(schema)]
        extra = [k for k in node if k not in allowed and not (section == "" and k == "hydra")]
        if extra:
            where = section or "the top level"
            raise ConfigError(
                f"Config error: unknown key '{(section + '.') if section else ''}{extra[0]}'. "
                f"Keys allowed in {where}: {', '.join(allowed)}."
            )


def _check_allowed_values(cfg: DictConfig) -> None:
    for key, allowed in ALLOWED_VALUES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and str(value) not in allowed:
            _fail(key, value, ", ".join(allowed))


def _check_probes(cfg: DictConfig) -> None:
    if cfg.probes.enabled and cfg.probes.suites:
        from encoderlab.analysis.probes import check_suites

        check_suites(OmegaConf.to_container(cfg.probes.suites, resolve=True))


def _check_extras(cfg: DictConfig) -> None:
    """Optional packages the chosen analysis needs, named with their pip extra before any work."""
    if cfg.analysis.attributions.enabled:
        require_extra(
            "captum",
            "captum",
            "analysis",
            "analysis.attributions.enabled=true (Integrated Gradients; analysis.attributions.enabled=false "
            "or analysis=report_only runs without it)",
        )


def validate_evaluate_config(cfg: DictConfig) -> None:
    """The checks of `encoderlab evaluate`: keys, allowed values and the dataset."""
    from encoderlab.config import EvaluateConfig

    if OmegaConf.is_missing(cfg, "source"):
        raise ConfigError(
            "Config error: 'source' is required: the model to evaluate, as an MLflow run id, a run directory "
            "(outputs/runs/...) or an exported model directory, e.g. source=outputs/runs/<date>/<time>-<name>."
        )
    _check_known_keys(cfg, EvaluateConfig)
    _check_allowed_values(cfg)
    _check_dataset(cfg.dataset)
    _check_probes(cfg)
    _check_extras(cfg)
    if cfg.max_length is not None and cfg.max_length < 2:
        _fail("max_length", cfg.max_length, "null or an integer >= 2")


def validate_config(cfg: DictConfig) -> None:
    """Raise EncoderlabError naming the key, the bad value and what is allowed."""
    _check_known_keys(cfg)
    _check_allowed_values(cfg)
    _check_dataset(cfg.dataset)
    _check_probes(cfg)
    _check_training(cfg)
    _check_extras(cfg)


def _check_dataset(ds: DictConfig) -> None:
    fields = ds.text_field
    if isinstance(fields, ListConfig):
        if not fields or not all(isinstance(f, str) for f in fields):
            _fail(
                "dataset.text_field",
                OmegaConf.to_object(fields),
                "a column name or a non-empty list of names",
            )
    elif not isinstance(fields, str):
        _fail("dataset.text_field", fields, "a column name or a non-empty list of names")
    if ds.val_size <= 0:
        _fail("dataset.val_size", ds.val_size, "a fraction in (0, 1) or a row count >= 1")
    if ds.max_length < 2:
        _fail("dataset.max_length", ds.max_length, "an integer >= 2")
    if ds.batch_size < 1 or ds.eval_batch_size < 1:
        _fail("dataset.batch_size", ds.batch_size, "an integer >= 1")
    for key in (
        "max_train_samples",
        "max_eval_samples",
        "max_test_samples",
        "train_pool_size",
        "samples_per_class",
    ):
        value = ds[key]
        if value is not None and value < 0:
            _fail(f"dataset.{key}", value, "null or an integer >= 0")
    if OmegaConf.is_missing(ds, "data_files") or (
        ds.path in ("csv", "json", "parquet") and ds.data_files is None
    ):
        raise ConfigError(
            f"Config error: dataset.path={ds.path!r} reads local files, but dataset.data_files is not set. "
            "Pass a path, a list, or a map such as dataset.data_files='{train: a.csv, test: b.csv}'."
        )
    if isinstance(ds.data_files, DictConfig) and ds.train_split not in ds.data_files:
        raise ConfigError(
            f"Config error: dataset.data_files has no '{ds.train_split}' entry (dataset.train_split); "
            f"it has: {', '.join(ds.data_files.keys())}."
        )


def _check_training(cfg: DictConfig) -> None:
    tr = cfg.trainer
    if tr.accumulate_grad_batches < 1:
        _fail("trainer.accumulate_grad_batches", tr.accumulate_grad_batches, "an integer >= 1")
    if tr.val_every_n_steps is not None and tr.val_every_n_steps < 1:
        _fail("trainer.val_every_n_steps", tr.val_every_n_steps, "null (once per epoch) or an integer >= 1")
    if cfg.optimizer.lr <= 0:
        _fail("optimizer.lr", cfg.optimizer.lr, "a positive float")
    if not 0 <= cfg.dataset.word_dropout < 1:
        _fail("dataset.word_dropout", cfg.dataset.word_dropout, "a float in [0, 1)")
    if not 0 <= cfg.loss.label_smoothing < 1:
        _fail("loss.label_smoothing", cfg.loss.label_smoothing, "a float in [0, 1)")
    if not 0 <= cfg.scheduler.warmup_ratio < 1:
        _fail("scheduler.warmup_ratio", cfg.scheduler.warmup_ratio, "a float in [0, 1)")
    if "n_heads" in cfg.model:  # scratch encoder: the same checks as ScratchConfig, before heavy imports
        m = cfg.model
        if m.n_heads < 1 or m.d_model % m.n_heads != 0:
            raise heads_error(m.d_model, m.n_heads)
        if m.conv_kernel < 0:
            raise conv_kernel_error(m.conv_kernel)
        if m.n_members < 1:
            raise members_error(m.n_members)
        if m.max_len < cfg.dataset.max_length:
            _fail("model.max_len", m.max_len, f"an integer >= dataset.max_length ({cfg.dataset.max_length})")
    elif OmegaConf.is_missing(cfg.model, "name_or_path"):
        raise ConfigError(
            "Config error: 'model.name_or_path' is required: a Hub model id or a local save_pretrained directory."
        )
