"""Typed schema of the composed training config, registered in Hydra's ConfigStore.

Hydra merges every YAML file of `conf/` into these dataclasses while composing, so a wrong type, an
unknown key or a missing group option fails before any heavy import (torch, lightning, transformers).
The trainer, optimizer, scheduler and callbacks groups are `_target_` dicts instead: their YAML is the
schema, checked against the target's signature (validate.check_targets) when train starts.
This module imports only the standard library, omegaconf and hydra.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from encoderlab.paths import (
    bundled_file,
    conf_dir,  # noqa: F401  (re-exported for callers of encoderlab.config)
)


@dataclass
class LoraSettings:
    """LoRA adapters (peft) for model.peft=lora: rank r, scale alpha / r, dropout on the adapter input."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # null: peft's default for the architecture (the attention query/value projections); or a list of
    # linear-layer names, e.g. [query, key, value, dense]; or all-linear
    target_modules: Any = None


@dataclass
class HFModelConfig:
    """A pretrained Hugging Face encoder with a sequence-classification head."""

    _target_: str = "encoderlab.models.hf_encoder.HFEncoderClassifier"
    name_or_path: str = MISSING  # Hub id or local `save_pretrained` directory
    tokenizer_name_or_path: str | None = None  # defaults to name_or_path
    revision: str | None = None
    dropout: float | None = None  # overrides hidden and attention dropout when set
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the first N encoder layers
    gradient_checkpointing: bool = False
    # auto: SDPA, but eager for CPU training steps up to 256 tokens (faster there); or eager | sdpa |
    # flash_attention_2 | null (the library's default)
    attn_implementation: str | None = "auto"
    trust_remote_code: bool = False
    peft: str | None = None  # null: train every weight | lora: frozen encoder + LoRA adapters + full head
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class ScratchModelConfig:
    """A transformer encoder trained from scratch (encoderlab/models/scratch.py). The one list of its keys
    and defaults: models.scratch.ScratchConfig adds only what the data decides (vocabulary, classes)."""

    _target_: str = "encoderlab.models.scratch.ScratchEncoder"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4  # must divide d_model
    d_ff: int = 512
    dropout: float = 0.1
    max_positions: int = 512  # longest sequence the positions cover (>= dataset.max_length)
    positions: str = "sinusoidal"  # sinusoidal | learned
    scale_embeddings: bool = True  # sinusoidal: token vectors at the positions' scale (x sqrt(d_model))
    norm: str = "pre"  # pre | post
    pooling: str = "mean"  # cls | mean | max (all ignore padding)
    # auto: SDPA, but eager (softmax(QK^T/sqrt(d))V) for CPU training steps, faster there | sdpa | eager
    attn_implementation: str = "auto"


@dataclass
class TokenizerConfig:
    """auto: the checkpoint's own tokenizer, or WordPiece trained on the train split for scratch models."""

    kind: str = "auto"  # auto | pretrained | wordpiece | bpe | wordlevel
    name_or_path: str | None = None  # pretrained: a Hub id or directory (default: the model's)
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True


@dataclass
class CVConfig:
    """k-fold cross-validation over the train split (docs/cross-validation.md): folds=K trains on K-1
    folds and validates on fold `fold` (0-based); the test split is left as it is."""

    folds: int | None = None  # K >= 2; None: no cross-validation
    fold: int = 0  # the held-out fold, in [0, folds)


@dataclass
class DatasetConfig:
    """Where the text and labels come from and how the splits are built."""

    name: str = MISSING  # short name; also the folder under $ENCODERLAB_DATA_DIR
    path: str = MISSING  # `datasets.load_dataset` path: Hub id, builder (csv/json/parquet) or local dir
    config_name: str | None = None  # Hub config, e.g. "sst2" for path "glue"
    data_files: Any = None  # for csv/json/parquet builders: a path, list, or {split: path}
    train_split: str = "train"
    validation_split: str | None = "validation"  # None or absent: carved from train
    test_split: str | None = "test"  # None: carved when test_size is set, else the validation split is tested
    extra_train_splits: list[str] = field(default_factory=list)  # concatenated into train first
    text_field: Any = "text"  # a column, or a list of columns joined with text_join
    text_join: str = ". "
    text_pair_field: str | None = None
    # single_label: one class per row; multilabel: a set per row (sigmoid head, docs/multilabel.md)
    task: str = "single_label"
    # a column; multilabel: a list column (ids or names per row) or a list of 0/1 columns (one per label)
    label_field: Any = "label"
    encoding: str = "utf-8"  # of csv/jsonl files (e.g. latin-1, cp1252)
    drop_empty: bool = False  # drop rows whose text is empty/missing (logged) instead of failing
    label_names: list[str] | None = None  # None: from the ClassLabel feature or sorted train labels
    max_length: int = 128
    # split building, applied in this order: pool -> per-class -> drop rare -> carve val -> caps
    train_pool_size: int | None = None  # draw N random rows from the source train split first
    samples_per_class: int | None = None  # balanced per-class sampling of the train pool
    min_class_count: int = 0  # drop classes with fewer train rows than this
    val_size: float = 0.1  # fraction (<1) or count (>=1) carved from train when no validation split
    test_size: float | None = None  # carve a test split too (fractions are of the train pool)
    split_seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_test_samples: int | None = None
    subset_seed: int = 42
    # k-fold: validation = held-out fold of train (after drop rare, before caps), seeded by split_seed
    cv: CVConfig = field(default_factory=CVConfig)
    # batching
    batch_size: int = 8
    eval_batch_size: int = 32
    sampler: str = "shuffle"  # shuffle | balanced (rows drawn with probability 1 / their class's rows)
    group_by_length: bool = False  # train batches of similar length (less padding), batch order shuffled
    sort_eval_by_length: bool = True  # validation/test batches in length order (results keep row order)
    pad_to_multiple_of: int | None = None  # shape buckets for torch.compile / tensor cores
    word_dropout: float = (
        0.0  # in [0, 1): chance a training token becomes [UNK] (pairs with tokenizer=wordlevel)
    )
    num_workers: int = 0
    cache_dir: str | None = None  # tokenization cache; default $ENCODERLAB_CACHE_DIR or ~/.cache/encoderlab


@dataclass
class LossConfig:
    """Cross-entropy on the logits, optionally class-weighted and focal (encoderlab/models/losses.py)."""

    label_smoothing: float = 0.0  # in [0, 1): mass spread over the other classes (regularises small data)
    class_weights: Any = None  # null | auto (inverse frequency) | effective | [w1, ..., wC] (label order)
    effective_beta: float = 0.999  # class_weights=effective: (1 - beta) / (1 - beta**count) (Cui et al. 2019)
    focal_gamma: float = 0.0  # 0: off; > 0: focal loss (Lin et al. 2017), the class weights as alpha


@dataclass
class LoggerConfig:
    """Experiment tracking."""

    backend: str = "mlflow"  # mlflow | none
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db
    artifact_location: str | None = None  # None: outputs/mlartifacts (new experiments only)
    log_model: bool = True  # the best model: save_pretrained directory + MLflow model (runs:/<id>/model)
    register_model: str | None = None  # register the MLflow model as a new version of this name
    log_checkpoint: bool = False  # the Lightning .ckpt (large: weights + optimizer state)
    log_predictions: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    heartbeat_s: float = 30  # a RUNNING run's `encoderlab.heartbeat` tag is refreshed this often; 0: off
    stale_after_s: float = 600  # a run on another host silent this long is marked FAILED ("process died")
    # http(s) servers: start-up check, MLflow's HTTP limits, outages (see conf/logger/mlflow.yaml)
    connect_timeout_s: float = 5.0  # (0, 60]: start-up check and health probes
    request_timeout_s: int = 20  # [1, 600]: MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT
    max_retries: int = 2  # [0, 10]: MLflow's MLFLOW_HTTP_REQUEST_MAX_RETRIES
    backoff_factor: int = 1  # [0, 120]: MLflow's MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR
    retry_interval_s: float = 15.0  # > 0: while the server is away, probe it this often
    final_sync_timeout_s: float = 60.0  # >= 0: at the end, wait this long for the server


@dataclass
class ReportConfig:
    enabled: bool = True
    top_errors: int = 25  # most confident misclassified examples in the table
    calibration_bins: int = 15
    threshold: float | None = 0.6  # coverage / accuracy when abstaining below this confidence


@dataclass
class MCDropoutConfig:
    passes: int = 0  # stochastic forward passes with dropout on (analysis=full: 10); 0 turns it off
    max_examples: int | None = 1000  # of the test split (a seeded sample), None for all


@dataclass
class AttentionConfig:
    enabled: bool = False  # analysis=full turns it on
    texts: list[str] | None = None  # None: the most confident test errors and correct predictions
    n_examples: int = 3
    layers: list[int] | None = None  # None: every layer
    heads: list[list[int]] | None = None  # [[layer, head], ...] single-head heat maps
    top_k: int = 5
    max_length: int = 64


@dataclass
class AttributionsConfig:
    enabled: bool = False  # analysis=full turns it on
    texts: list[str] | None = None  # None: the attention texts
    n_steps: int = 50
    max_length: int = 128


@dataclass
class AnalysisConfig:
    """What is analysed after test (conf/analysis/: report, full, none): the report, and the heavy stages
    (attention maps, Integrated Gradients attributions, MC dropout), each with its own switch."""

    report: ReportConfig = field(default_factory=ReportConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    attributions: AttributionsConfig = field(default_factory=AttributionsConfig)
    mc_dropout: MCDropoutConfig = field(default_factory=MCDropoutConfig)
    # multilabel decision thresholds: tune (per label, maximising its F1 on validation) or one probability
    thresholds: Any = 0.5


@dataclass
class ProbesConfig:
    """Behavioural probe suites (conf/probes/); see encoderlab/analysis/probes.py for the kinds."""

    enabled: bool = True
    labels: list[str] | None = None  # the labels the suites are written for: a model without them skips all
    suites: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The root of `encoderlab train`."""

    # typed by the built-in model options (HFModelConfig, ScratchModelConfig); a model config of your own
    # (`_target_` + its keys, no schema in its defaults) stays untyped and its keys are its own
    model: Any = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # `_target_` groups (trainer, optimizer, scheduler, callbacks), instantiated by train: their YAML is
    # the schema, checked against each target's signature (validate.check_targets)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.pytorch.Trainer and its arguments
    optimizer: dict[str, Any] = field(default_factory=dict)  # a torch.optim class with _partial_: true
    loss: LossConfig = field(default_factory=LossConfig)
    scheduler: dict[str, Any] = field(default_factory=dict)  # an LR scheduler factory, _partial_: true
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)  # name -> a Lightning callback (null: off)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    experiment_name: str = "encoderlab"
    run_name: str | None = None
    seed: int = 42
    num_threads: int | None = None  # CPU intra-op threads; None: torch's default (the physical cores)
    compile: bool = False  # torch.compile the encoder; pair with dataset.pad_to_multiple_of to bound shapes
    fast_dropout: bool | None = None  # CPU dropout masks from models/dropout.py; None: on for CPU training
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class EvaluateConfig:
    """The root of `encoderlab evaluate`: a trained model's report on any dataset split."""

    source: str = MISSING  # MLflow run id, run directory or exported model directory
    split: str = "test"  # test | validation | train, as the dataset config builds them
    max_length: int | None = None  # None: dataset.max_length, capped at the model's positions
    device: str | None = None  # None: cuda if available, else cpu
    enable_progress_bar: bool = True  # progress bars of prediction and of the analysis stages
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: str = "evaluate"
    run_name: str | None = None
    seed: int = 42
    output_dir: str = "${hydra:runtime.output_dir}"


SCHEMAS: dict[str, type] = {
    "": TrainConfig,
    "model": HFModelConfig,
    "tokenizer": TokenizerConfig,
    "dataset": DatasetConfig,
    "dataset.cv": CVConfig,
    "logger": LoggerConfig,
    "analysis": AnalysisConfig,
    "analysis.report": ReportConfig,
    "analysis.attention": AttentionConfig,
    "analysis.attributions": AttributionsConfig,
    "analysis.mc_dropout": MCDropoutConfig,
    "probes": ProbesConfig,
}

ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "split": ("test", "validation", "train"),  # encoderlab evaluate
    "dataset.task": ("single_label", "multilabel"),
    "tokenizer.kind": ("auto", "pretrained", "wordpiece", "bpe", "wordlevel"),
    # model.*: the scratch encoder's (other model families check their own values)
    "model.positions": ("sinusoidal", "learned"),
    "model.norm": ("pre", "post"),
    "model.pooling": ("cls", "mean", "max"),
    "model.attn_implementation": ("auto", "sdpa", "eager"),
    "trainer.precision": ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64", "auto"),
    "scheduler.decay": ("linear", "cosine", "constant"),  # encoderlab's warmup_schedule
    "logger.backend": ("mlflow", "none"),
    "dataset.sampler": ("shuffle", "balanced"),
    "callbacks.checkpoint.mode": ("min", "max"),
    "callbacks.early_stopping.mode": ("min", "max"),
}


# keys renamed before a release: a config that still uses one is told the new name
RENAMED_KEYS: dict[str, str] = {
    "model.max_len": "model.max_positions",
    "model.attention": "model.attn_implementation",
}
# keys whose setting moved elsewhere when trainer/optimizer/scheduler/callbacks became `_target_` configs
MOVED_KEYS: dict[str, str] = {
    "trainer.num_threads": "a run-level key now: num_threads=N (trainer.* are lightning.pytorch.Trainer "
    "arguments only)",
    "trainer.compile": "a run-level key now: compile=true",
    "trainer.val_every_n_steps": "Lightning's own key now: trainer.val_check_interval=N (training batches) "
    "with trainer.check_val_every_n_epoch=null",
    "optimizer.name": "the optimizer is its class now: optimizer._target_=torch.optim.SGD (any torch.optim "
    "class, see conf/optimizer/adamw.yaml)",
    "scheduler.name": "the scheduler is a config option now: scheduler=linear|cosine|constant",
    "callbacks.early_stopping.enabled": "early stopping is a callbacks option now: callbacks=early_stopping",
}


def run_suffix() -> str:
    """6 random hex characters: `${run_suffix:}` in a run directory's name, so runs started in the same
    second (or millisecond) never share one."""
    return secrets.token_hex(3)


def register_configs() -> None:
    """Register the schemas (YAML files name them in their defaults lists), the `${bundled:...}` resolver
    (the path of a data file shipped inside the package) and `${run_suffix:}`."""
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_file)
    if not OmegaConf.has_resolver("run_suffix"):
        # cached per config like Hydra's ${now:}: one value per run, and a multirun's jobs share the
        # sweep's (Hydra copies the resolver cache into each job's config)
        OmegaConf.register_new_resolver("run_suffix", run_suffix, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(group="model", name="hf_schema", node=HFModelConfig)
    cs.store(group="model", name="scratch_schema", node=ScratchModelConfig)
