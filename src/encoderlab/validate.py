"""Checks on a composed config that types alone cannot express; run before any heavy import."""

from __future__ import annotations

import dataclasses
import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from encoderlab.config import ALLOWED_VALUES, SCHEMAS, HFModelConfig, ScratchModelConfig
from encoderlab.errors import (
    ConfigError,
    heads_error,
    hf_only_key_error,
    installed,
    moved_key_error,
    renamed_key_error,
    require_extra,
    target_key_error,
)

# groups whose options are `_target_` dicts, built with hydra.utils.instantiate (callbacks: a dict of them)
TARGET_GROUPS = ("trainer", "optimizer", "scheduler")
EXAMPLE_TARGETS = {
    "trainer": "lightning.pytorch.Trainer",
    "optimizer": "torch.optim.AdamW with _partial_: true",
    "scheduler": "encoderlab.models.schedules.warmup_schedule with _partial_: true",
}


REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,254}")


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"Config error: bad value for '{key}': {value!r}. Allowed: {allowed}.")


def _model_schema(cfg: DictConfig) -> type | None:
    """The schema of a built-in model family (HFModelConfig, ScratchModelConfig); None for a model config
    of the user's own, whose keys are its class's business."""
    model = cfg.get("model") if "model" in cfg else None
    schema = OmegaConf.get_type(model) if isinstance(model, DictConfig) else None
    return schema if schema in (HFModelConfig, ScratchModelConfig) else None


def _check_known_keys(cfg: DictConfig, root: type | None = None) -> None:
    """Keys added with Hydra's `+key=value` bypass the schema; reject those the code would ignore."""
    for section, schema in {**SCHEMAS, "": root or SCHEMAS[""]}.items():
        node = OmegaConf.select(cfg, section) if section else cfg
        if not isinstance(node, DictConfig):
            continue
        if section == "model":  # each model family has its own schema; a user's model, none
            schema = _model_schema(cfg)
            if schema is None:
                continue
        allowed = [f.name for f in dataclasses.fields(schema)]
        extra = [k for k in node if k not in allowed and not (section == "" and k == "hydra")]
        if extra:
            key = f"{(section + '.') if section else ''}{extra[0]}"
            renamed = renamed_key_error(key, allowed, node[extra[0]]) or hf_only_key_error(key)
            if renamed is not None:
                raise renamed
            where = section or "the top level"
            raise ConfigError(
                f"Config error: unknown key '{key}'. Keys allowed in {where}: {', '.join(allowed)}."
            )


def _check_allowed_values(cfg: DictConfig) -> None:
    scratch = _model_schema(cfg) is ScratchModelConfig
    for key, allowed in ALLOWED_VALUES.items():
        if key.startswith("model.") and not scratch:  # the scratch encoder's values
            continue
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
            "or analysis=report runs without it)",
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
    _check_logger(cfg.logger)
    _check_dataset(cfg.dataset)
    _check_probes(cfg)
    _check_extras(cfg)
    if cfg.max_length is not None and cfg.max_length < 2:
        _fail("max_length", cfg.max_length, "null or an integer >= 2")


def _check_logger(logger: DictConfig) -> None:
    if logger.heartbeat_s < 0:
        _fail("logger.heartbeat_s", logger.heartbeat_s, "seconds >= 0 (0: no heartbeat)")
    if logger.stale_after_s <= 0:
        _fail("logger.stale_after_s", logger.stale_after_s, "seconds > 0")
    _check_logger_ranges(logger)
    _check_register_model(logger)


def _check_register_model(logger: DictConfig) -> None:
    name = logger.get("register_model")
    if name is None:
        return
    allowed = "null, or a model name (letters, digits, spaces, . _ -; no '/' or ':')"
    if not isinstance(name, str) or not REGISTERED_NAME.fullmatch(name):
        _fail("logger.register_model", name, allowed)
    if logger.backend != "mlflow" or not logger.log_model:
        raise ConfigError(
            f"Config error: logger.register_model={name!r} registers the run's logged MLflow model, but "
            f"{'logger.backend=' + str(logger.backend) if logger.backend != 'mlflow' else 'logger.log_model=false'} "
            "logs none. Use logger=mlflow with logger.log_model=true, or drop logger.register_model."
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise EncoderlabError naming the key, the bad value and what is allowed."""
    _check_known_keys(cfg)
    _check_allowed_values(cfg)
    _check_logger(cfg.logger)
    _check_dataset(cfg.dataset)
    _check_thresholds(cfg.analysis)
    _check_probes(cfg)
    _check_training(cfg)
    _check_extras(cfg)


def _check_thresholds(analysis: DictConfig) -> None:
    value = analysis.get("thresholds", 0.5)
    if value == "tune":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        _fail("analysis.thresholds", value, "tune (per label, on validation) or a probability in (0, 1)")


def _check_label_field(ds: DictConfig) -> None:
    field = ds.label_field
    if isinstance(field, ListConfig):
        if ds.get("task", "single_label") != "multilabel":
            _fail(
                "dataset.label_field",
                OmegaConf.to_object(field),
                "one column name (a list of 0/1 columns needs dataset.task=multilabel)",
            )
        if len(field) < 2 or not all(isinstance(f, str) for f in field) or len(set(field)) != len(field):
            _fail(
                "dataset.label_field", OmegaConf.to_object(field), "a list of at least 2 distinct 0/1 columns"
            )
    elif not isinstance(field, str):
        _fail("dataset.label_field", field, "a column name, or (multilabel) a list of 0/1 columns")


def _check_dataset(ds: DictConfig) -> None:
    _check_label_field(ds)
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
    for key in ("val_size", "test_size"):
        size = ds[key]
        if size is not None and not (0 < size < 1 or (size >= 1 and float(size).is_integer())):
            _fail(f"dataset.{key}", size, "a fraction strictly between 0 and 1, or a whole row count >= 1")
    _check_encoding(ds)
    _check_sampler(ds)
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
    if (
        isinstance(ds.data_files, DictConfig)
        and ds.test_split is None
        and ds.test_size is not None
        and "test" in ds.data_files
    ):
        raise ConfigError(
            f"Config error: dataset.data_files has a 'test' file ({ds.data_files.test}) and dataset.test_size="
            f"{ds.test_size} asks to carve a test split from train: pick one, dataset.test_split=test to test on "
            "the file, or drop the 'test' entry to carve one."
        )
    if isinstance(ds.data_files, DictConfig) and ds.train_split not in ds.data_files:
        raise ConfigError(
            f"Config error: dataset.data_files has no '{ds.train_split}' entry (dataset.train_split); "
            f"it has: {', '.join(ds.data_files.keys())}."
        )
    _check_cv(ds)


def cv_without_test(ds: DictConfig) -> str:
    """The error when dataset.cv is on and nothing would be tested but the held-out fold."""
    return (
        f"Config error: dataset.cv.folds={ds.cv.folds} makes the validation split the held-out fold of the "
        f"train split, and dataset '{ds.name}' has no test split (dataset.test_split is null and "
        "dataset.test_size is not set): the test stage would report on the held-out fold, the rows that "
        "chose the checkpoint. Set dataset.test_size (e.g. 0.1: a stratified test split carved from train "
        "before the folds) or dataset.test_split=<a labelled split> (e.g. dataset.test_split=validation "
        "for GLUE sets, whose test labels are hidden)."
    )


def _check_cv(ds: DictConfig) -> None:
    """dataset.cv: folds null or >= 2, fold in [0, folds), and a test split that is not the fold."""
    cv = ds.get("cv")
    if cv is None:
        return
    if cv.folds is None:
        if cv.fold != 0:
            raise ConfigError(
                f"Config error: dataset.cv.fold={cv.fold} is set but dataset.cv.folds is not: say how many "
                f"folds, e.g. dataset.cv.folds=5 dataset.cv.fold={cv.fold} (folds are numbered from 0)."
            )
        return
    if cv.folds < 2:
        _fail("dataset.cv.folds", cv.folds, "null (no cross-validation) or an integer >= 2")
    if not 0 <= cv.fold < cv.folds:
        _fail("dataset.cv.fold", cv.fold, f"an integer in [0, {cv.folds}) with dataset.cv.folds={cv.folds}")
    local_test = (
        ds.path in ("csv", "json", "parquet")
        and isinstance(ds.data_files, DictConfig)
        and "test" in ds.data_files
    )
    if ds.test_split is None and ds.test_size is None and not local_test:
        raise ConfigError(cv_without_test(ds))


WEIGHT_KINDS = ("auto", "effective")


def check_class_weights(spec: object) -> None:
    """loss.class_weights: null, auto, effective or a list of positive numbers (its length is checked
    against the labels once the data is loaded, by models.losses)."""
    if spec is None or (isinstance(spec, str) and spec in WEIGHT_KINDS):
        return
    values = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else None
    numbers = values is not None and all(_is_number(v) for v in values)
    if not values or not numbers or not all(0 < float(v) < float("inf") for v in values):
        raise ConfigError(
            f"Config error: bad value for 'loss.class_weights': {spec!r}. Allowed: null (no weights), auto "
            "(inverse class frequency), effective (effective number of samples, loss.effective_beta), or a "
            "list of positive numbers, one per label in label order, e.g. loss.class_weights=[1.0,4.0]."
        )


def _check_loss(loss: DictConfig) -> None:
    weights = loss.class_weights
    check_class_weights(OmegaConf.to_object(weights) if isinstance(weights, ListConfig) else weights)
    if not (_is_number(loss.focal_gamma) and loss.focal_gamma >= 0):
        _fail("loss.focal_gamma", loss.focal_gamma, "0 (off) or a number > 0 (focal loss; 2 is usual)")
    if not 0 <= loss.effective_beta < 1:
        _fail("loss.effective_beta", loss.effective_beta, "a float in [0, 1), e.g. 0.99, 0.999, 0.9999")


def _check_sampler(ds: DictConfig) -> None:
    if ds.get("sampler") == "balanced" and ds.group_by_length:
        raise ConfigError(
            "Config error: dataset.sampler=balanced draws the rows of each epoch by class and "
            "dataset.group_by_length=true orders them by length; pick one (dataset.group_by_length=false "
            "with the balanced sampler)."
        )


def _check_encoding(ds: DictConfig) -> None:
    import codecs

    try:
        codecs.lookup(ds.encoding)
    except (LookupError, TypeError):
        _fail("dataset.encoding", ds.encoding, "a Python codec name, e.g. utf-8, latin-1, cp1252, utf-16")


# logger.* outage keys: (low, high, low included); MLflow caps retries at 10 and the back-off at 120
LOGGER_RANGES = {
    "connect_timeout_s": (0, 60, False),
    "request_timeout_s": (1, 600, True),
    "max_retries": (0, 10, True),
    "backoff_factor": (0, 120, True),
    "retry_interval_s": (0, 3600, False),
    "final_sync_timeout_s": (0, 86400, True),
}


def _check_logger_ranges(logger: DictConfig) -> None:
    for key, (low, high, closed) in LOGGER_RANGES.items():
        value = logger.get(key)
        ok = _is_number(value) and (value >= low if closed else value > low) and value <= high
        if not ok:
            _fail(
                f"logger.{key}",
                value,
                f"a number in {'[' if closed else '('}{low}, {high}] (seconds or a count)",
            )


# Lightning strategies that start their processes by pickling the module, data and logger into them:
# encoderlab's tracked run (its store client, heartbeat and signal handling) stays in the process that opened it
PICKLING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "xla")


def _check_strategy(strategy: object, accelerator: object) -> None:
    if not isinstance(strategy, str):
        return  # a Strategy _target_ of the user's own: Lightning checks it
    name = strategy.split("_find_unused")[0]
    if any(name.startswith(p) for p in PICKLING_STRATEGIES):
        _fail(
            "trainer.strategy",
            strategy,
            "auto, ddp (Lightning starts one process per device by running the command again; "
            f"{strategy} would move the run into pickled copies), fsdp, deepspeed, or trainer=ddp_cpu|ddp|fsdp",
        )
    if name.startswith("fsdp") and accelerator == "cpu":
        _fail(
            "trainer.strategy",
            strategy,
            "fsdp on GPUs only (Lightning's FSDP runs on CUDA); on CPU: trainer=ddp_cpu",
        )
    if name.startswith("deepspeed") and not installed("deepspeed"):
        raise ConfigError(
            f"Config error: trainer.strategy={strategy} needs the package 'deepspeed', which is not installed "
            "(pip install deepspeed; it builds CUDA kernels, so install it on the GPU machine)."
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_training(cfg: DictConfig) -> None:
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
            raise ConfigError(
                f"Config error: '{group}' needs a '_target_' (the class or function to build, e.g. "
                f"{EXAMPLE_TARGETS[group]}) and its arguments; pick an option of the {group} group."
            )
    for key, what in (("max_epochs", "epochs"), ("max_steps", "optimizer steps")):
        value = cfg.trainer.get(key)
        if _is_number(value) and (value == 0 or value < -1):
            _fail(
                f"trainer.{key}",
                value,
                f"a number of {what} >= 1, or -1 for no limit (0 would export an untrained model)",
            )
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        _fail("trainer.accumulate_grad_batches", accumulate, "an integer >= 1")
    _check_strategy(cfg.trainer.get("strategy", "auto"), cfg.trainer.get("accelerator", "auto"))
    lr = cfg.optimizer.get("lr")
    if "lr" in cfg.optimizer and not (_is_number(lr) and lr > 0):
        _fail("optimizer.lr", lr, "a positive float")
    for name, node in cfg.callbacks.items():
        if node is not None and not (isinstance(node, DictConfig) and isinstance(node.get("_target_"), str)):
            raise ConfigError(
                f"Config error: 'callbacks.{name}' must be a callback: a '_target_' (a Lightning Callback "
                f"class, e.g. lightning.pytorch.callbacks.ModelCheckpoint) and its arguments, or null (off)."
            )
    if not isinstance(cfg.callbacks.get("checkpoint"), DictConfig):
        raise ConfigError(
            "Config error: 'callbacks.checkpoint' is required: the ModelCheckpoint that keeps the best model "
            "(train tests it and sweeps read its monitor). Keep it and add your callbacks beside it."
        )
    warmup = cfg.scheduler.get("warmup_ratio", 0.0)
    if not (_is_number(warmup) and 0 <= warmup < 1):
        _fail("scheduler.warmup_ratio", warmup, "a float in [0, 1)")
    if not 0 <= cfg.dataset.word_dropout < 1:
        _fail("dataset.word_dropout", cfg.dataset.word_dropout, "a float in [0, 1)")
    if not 0 <= cfg.loss.label_smoothing < 1:
        _fail("loss.label_smoothing", cfg.loss.label_smoothing, "a float in [0, 1)")
    _check_loss(cfg.loss)
    family = _model_schema(cfg)
    if family is ScratchModelConfig:  # the same checks as ScratchConfig, before heavy imports
        m = cfg.model
        if m.n_heads < 1 or m.d_model % m.n_heads != 0:
            raise heads_error(m.d_model, m.n_heads)
        if m.max_positions < cfg.dataset.max_length:
            need = f"an integer >= dataset.max_length ({cfg.dataset.max_length})"
            _fail("model.max_positions", m.max_positions, need)
    elif family is HFModelConfig and OmegaConf.is_missing(cfg.model, "name_or_path"):
        raise ConfigError(
            "Config error: 'model.name_or_path' is required: a Hub model id or a local save_pretrained directory."
        )
    if family is HFModelConfig:
        _check_peft(cfg.model)
    elif family is None and "_target_" not in cfg.model:
        raise ConfigError(
            "Config error: 'model._target_' is required: the import path of the model class to build, "
            "e.g. my_package.models.MyClassifier (or pick a built-in model, e.g. model=minilm or model=scratch_tiny)."
        )


def _check_peft(model: DictConfig) -> None:
    """model.peft and model.lora.* of an HF encoder; peft installed when LoRA is on."""
    from encoderlab.config import LoraSettings

    if model.peft not in (None, "lora"):
        _fail("model.peft", model.peft, "null (train every weight) or lora (LoRA adapters, peft library)")
    lora = model.lora
    extra = [k for k in lora if k not in {f.name for f in dataclasses.fields(LoraSettings)}]
    if extra:
        allowed = ", ".join(f.name for f in dataclasses.fields(LoraSettings))
        raise ConfigError(
            f"Config error: unknown key 'model.lora.{extra[0]}'. Keys allowed in model.lora: {allowed}."
        )
    if model.peft is None:
        return
    if lora.r < 1:
        _fail("model.lora.r", lora.r, "an integer >= 1 (the adapters' rank)")
    if not (_is_number(lora.alpha) and lora.alpha > 0):
        _fail("model.lora.alpha", lora.alpha, "a number > 0 (adapter updates are scaled by alpha / r)")
    if not 0 <= lora.dropout < 1:
        _fail("model.lora.dropout", lora.dropout, "a float in [0, 1)")
    targets = lora.target_modules
    names = OmegaConf.to_object(targets) if isinstance(targets, ListConfig) else targets
    if not (
        names is None
        or (isinstance(names, str) and names)
        or (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names))
    ):
        _fail(
            "model.lora.target_modules",
            names,
            "null (the architecture's default: the attention query/value layers), a non-empty list of linear "
            "layer names such as [query, value] (q_lin, v_lin on DistilBERT), or all-linear",
        )
    require_extra("peft", "peft", "peft", "model.peft=lora (LoRA adapters)")


def check_targets(cfg: DictConfig) -> None:
    """Every key of the trainer, optimizer, scheduler and callback nodes is an argument of the node's
    `_target_`, with a value its annotation allows (where it names plain types). Imports the targets
    (torch, lightning): train() calls it first, before any data work."""
    from encoderlab import targets

    nodes = {group: cfg[group] for group in TARGET_GROUPS}
    nodes.update({f"callbacks.{k}": v for k, v in cfg.callbacks.items() if v is not None})
    for where, node in nodes.items():
        target = node._target_
        try:
            sig = targets.signature(targets.locate(target))
        except (ImportError, AttributeError, ValueError) as ex:
            raise ConfigError(
                f"Config error: '{where}._target_' is {target!r}, which could not be imported "
                f"({' '.join(str(ex).split())}). "
                "It must be the dotted path of a class or function, e.g. "
                f"{EXAMPLE_TARGETS.get(where, 'lightning.pytorch.callbacks.EarlyStopping')}."
            ) from ex
        params = targets.keyword_parameters(sig) if sig is not None else None
        if params is None:  # **kwargs: the target sorts its arguments out itself
            continue
        group = where.split(".")[0]
        for key in node:
            if key in targets.HYDRA_KEYS:
                continue
            if key in targets.INJECTED.get(group, {}):
                raise ConfigError(
                    f"Config error: '{where}.{key}' is not set in the config: encoderlab passes it from "
                    f"{targets.INJECTED[group][key]}. Remove it from {group}."
                )
            if key not in params:
                raise moved_key_error(f"{where}.{key}") or ConfigError(
                    target_key_error(f"{where}.{key}", target) or f"unknown key '{where}.{key}'"
                )
            annotation = params[key].annotation
            if targets.accepts(annotation, node[key]) is False:
                _fail(
                    f"{where}.{key}", node[key], f"{targets.describe(annotation)} (the type {target} takes)"
                )
