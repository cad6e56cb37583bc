"""Typed schema of the composed training config, registered in Hydra's ConfigStore.

Hydra merges every YAML file of `conf/` into these dataclasses while composing, so a wrong type, an
unknown key or a missing group option fails before any heavy import (torch, lightning, transformers).
This module imports only the standard library, omegaconf and hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from encoderlab.paths import (
    bundled_file,
    conf_dir,  # noqa: F401  (re-exported for callers of encoderlab.config)
)


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


@dataclass
class ScratchModelConfig:
    """A transformer encoder trained from scratch (encoderlab/models/scratch.py)."""

    _target_: str = "encoderlab.models.scratch.ScratchEncoder"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4  # must divide d_model
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 512  # longest sequence the positions cover (>= dataset.max_length)
    positions: str = "sinusoidal"  # sinusoidal | learned
    scale_embeddings: bool = True  # sinusoidal: token vectors at the positions' scale (x sqrt(d_model))
    norm: str = "pre"  # pre | post
    pooling: str = "mean"  # cls | mean | max
    attention: str = "auto"  # auto (SDPA; explicit for CPU training up to 1024 tokens) | sdpa | explicit
    conv_kernel: int = 0  # > 0: a convolution of this width in each block (local n-grams)
    conv_type: str = "depthwise"  # depthwise (per channel) | full (each output mixes all channels)
    n_members: int = 1  # > 1: an ensemble of that many encoders in one model, probabilities averaged
    member_bagging: bool = True  # ensembles: each member weighs each training example by a Poisson(1) draw


@dataclass
class TokenizerConfig:
    """auto: the checkpoint's own tokenizer, or WordPiece trained on the train split for scratch models."""

    kind: str = "auto"  # auto | pretrained | wordpiece | bpe | wordlevel
    name_or_path: str | None = None  # pretrained: a Hub id or directory (default: the model's)
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True


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
    label_field: str = "label"
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
    # batching
    batch_size: int = 8
    eval_batch_size: int = 32
    group_by_length: bool = False  # train batches of similar length (less padding), batch order shuffled
    sort_eval_by_length: bool = True  # validation/test batches in length order (results keep row order)
    pad_to_multiple_of: int | None = None  # shape buckets for torch.compile / tensor cores
    word_dropout: float = (
        0.0  # in [0, 1): chance a training token becomes [UNK] (pairs with tokenizer=wordlevel)
    )
    num_workers: int = 0
    cache_dir: str | None = None  # tokenization cache; default $ENCODERLAB_CACHE_DIR or ~/.cache/encoderlab


@dataclass
class TrainerConfig:
    """Lightning Trainer settings (steps are optimizer steps, as in HF TrainingArguments)."""

    accelerator: str = "auto"
    devices: Any = 1
    precision: str = (
        "32"  # 32 | bf16-mixed | 16-mixed | auto (bf16-mixed where the CPU/GPU runs bf16 natively)
    )
    num_threads: int | None = None  # CPU intra-op threads; None: torch's default (the physical cores)
    compile: bool = False  # torch.compile the encoder; pair with dataset.pad_to_multiple_of to bound shapes
    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    val_every_n_steps: int | None = None  # None: validate once per epoch
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    fast_dev_run: Any = False  # True or N batches: smoke test, nothing saved
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class OptimizerConfig:
    """AdamW; biases and LayerNorm weights get no weight decay."""

    name: str = "adamw"
    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: bool = True  # torch's fused AdamW kernel (CPU and CUDA); false: the per-tensor loop


@dataclass
class LossConfig:
    """Cross-entropy on the logits."""

    label_smoothing: float = 0.0  # in [0, 1): mass spread over the other classes (regularises small data)


@dataclass
class SchedulerConfig:
    """Learning-rate schedule stepped once per optimizer step."""

    name: str = "linear"  # linear | cosine | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0


@dataclass
class LoggerConfig:
    """Experiment tracking."""

    backend: str = "mlflow"  # mlflow | none
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db
    artifact_location: str | None = None  # None: outputs/mlartifacts (new experiments only)
    log_model: bool = True  # save_pretrained directory of the best model
    log_checkpoint: bool = False  # the Lightning .ckpt (large: weights + optimizer state)
    log_predictions: bool = True
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    monitor: str = "val/f1_macro"
    mode: str = "max"
    save_top_k: int = 1
    save_weights_only: bool = True  # False keeps optimizer state too (3x larger), for resuming


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val/f1_macro"
    mode: str = "max"
    patience: int = 3
    min_delta: float = 0.0


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_monitor: bool = True


@dataclass
class ReportConfig:
    enabled: bool = True
    top_errors: int = 25  # most confident misclassified examples in the table
    calibration_bins: int = 15
    threshold: float | None = 0.6  # coverage / accuracy when abstaining below this confidence


@dataclass
class MCDropoutConfig:
    passes: int = 10  # stochastic forward passes with dropout on; 0 turns it off
    max_examples: int | None = 1000  # of the test split (a seeded sample), None for all


@dataclass
class AttentionConfig:
    enabled: bool = True
    texts: list[str] | None = None  # None: the most confident test errors and correct predictions
    n_examples: int = 3
    layers: list[int] | None = None  # None: every layer
    heads: list[list[int]] | None = None  # [[layer, head], ...] single-head heat maps
    top_k: int = 5
    max_length: int = 64


@dataclass
class AttributionsConfig:
    enabled: bool = True
    texts: list[str] | None = None  # None: the attention texts
    n_steps: int = 50
    max_length: int = 128


@dataclass
class AnalysisConfig:
    """What is analysed after test: report, attention maps, Integrated Gradients attributions."""

    report: ReportConfig = field(default_factory=ReportConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    attributions: AttributionsConfig = field(default_factory=AttributionsConfig)
    mc_dropout: MCDropoutConfig = field(default_factory=MCDropoutConfig)


@dataclass
class ProbesConfig:
    """Behavioural probe suites (conf/probes/); see encoderlab/analysis/probes.py for the kinds."""

    enabled: bool = True
    suites: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The root of `encoderlab train`."""

    model: Any = MISSING  # typed by the chosen model option (HFModelConfig, ScratchModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    experiment_name: str = "encoderlab"
    run_name: str | None = None
    seed: int = 42
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class EvaluateConfig:
    """The root of `encoderlab evaluate`: a trained model's report on any dataset split."""

    source: str = MISSING  # MLflow run id, run directory or exported model directory
    split: str = "test"  # test | validation | train, as the dataset config builds them
    max_length: int | None = None  # None: dataset.max_length, capped at the model's positions
    device: str | None = None  # None: cuda if available, else cpu
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
    "trainer": TrainerConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "logger": LoggerConfig,
    "callbacks": CallbacksConfig,
    "callbacks.checkpoint": CheckpointConfig,
    "callbacks.early_stopping": EarlyStoppingConfig,
    "analysis": AnalysisConfig,
    "analysis.report": ReportConfig,
    "analysis.attention": AttentionConfig,
    "analysis.attributions": AttributionsConfig,
    "analysis.mc_dropout": MCDropoutConfig,
    "probes": ProbesConfig,
}

ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "split": ("test", "validation", "train"),  # encoderlab evaluate
    "tokenizer.kind": ("auto", "pretrained", "wordpiece", "bpe", "wordlevel"),
    "model.positions": ("sinusoidal", "learned"),  # scratch encoder
    "model.norm": ("pre", "post"),
    "model.pooling": ("cls", "mean", "max"),
    "model.attention": ("auto", "sdpa", "explicit"),
    "model.conv_type": ("depthwise", "full"),
    "trainer.precision": ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64", "auto"),
    "optimizer.name": ("adamw",),
    "scheduler.name": ("linear", "cosine", "constant"),
    "logger.backend": ("mlflow", "none"),
    "callbacks.checkpoint.mode": ("min", "max"),
    "callbacks.early_stopping.mode": ("min", "max"),
}


def register_configs() -> None:
    """Register the schemas (YAML files name them in their defaults lists) and the `${bundled:...}`
    resolver (the path of a data file shipped inside the package)."""
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_file)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(group="model", name="hf_schema", node=HFModelConfig)
    cs.store(group="model", name="scratch_schema", node=ScratchModelConfig)
