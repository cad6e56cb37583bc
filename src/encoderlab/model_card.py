"""A Hugging Face Hub model card (`README.md`) for a trained model, generated from its run.

What the card says comes from the MLflow run when the model's encoderlab.json names one and the store has
it (params, metrics, tags, the data summary and the config artifacts), else from the run directory's files
(.hydra/config.yaml, metrics.json, report/, predictions/). A piece neither holds is written as
"not recorded", never guessed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

NOT_RECORDED = "not recorded"
# keys that differ between two seeds of the same configuration without changing the experiment
_BOOKKEEPING = ("seed", "output_dir", "run_name", "trainer.enable_progress_bar", "dataset.cache_dir")
_BOOKKEEPING_PREFIXES = ("logger.", "hydra.", "dataset.num_workers")
# test metrics shown first (the rest follow in name order)
_HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "auroc", "loss")
# test metrics in the model-index (one per Hub metric type)
_INDEXED = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "auroc")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# dataset configs whose `path` is not itself the Hub id of the dataset
_HUB_DATASETS = {"glue": "nyu-mll/glue"}


@dataclass
class SeedStats:
    """A metric over the runs of one configuration that differ only in seed."""

    n: int
    seeds: list[str]
    mean: dict[str, float]
    std: dict[str, float]
    run_ids: list[str]


@dataclass
class RunRecord:
    """Everything the card says about a run, as found; None means not recorded."""

    model_dir: Path
    meta: dict
    config_json: dict
    run_id: str | None = None
    run_name: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    run_dir: Path | None = None
    status: str | None = None
    config: dict | None = None  # the resolved run config
    test_metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    summary: dict | None = None  # data/summary.json
    test_label_counts: dict[str, int] | None = None
    probes: dict[str, float] | None = None  # suite -> pass rate
    probe_counts: dict[str, int] | None = None  # suite -> number of probe texts
    seeds: SeedStats | None = None
    parameters: int | None = None
    notes: list[str] = field(default_factory=list)  # where the card's sources fell short
    onnx: dict | None = None  # the ONNX parity report when exported with --format onnx

    @property
    def family(self) -> str:
        return str(self.meta.get("family") or ("scratch" if self.is_scratch else "hf"))

    @property
    def is_scratch(self) -> bool:
        return self.config_json.get("model_type") == "encoderlab_scratch"

    @property
    def label_names(self) -> list[str]:
        names = self.meta.get("label_names")
        if names:
            return list(names)
        id2label = self.config_json.get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=int)]

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A key of the run config ("optimizer.lr"), `default` when not recorded."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


# ---- gathering -------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def count_parameters(model_dir: Path) -> int | None:
    """Number of weights in model.safetensors, from its header (nothing is loaded)."""
    path = model_dir / "model.safetensors"
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _resolved_local_config(run_dir: Path) -> dict | None:
    """A run directory's .hydra/config.yaml, its interpolations resolved where they resolve."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    from encoderlab.config import register_configs

    register_configs()  # the ${bundled:...} resolver
    cfg = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${now:...} outside Hydra: keep the interpolations as written
        return OmegaConf.to_container(cfg, resolve=False)


def _artifact(client, run_id: str, path: str, dst: Path) -> Path | None:
    """One artifact of a run, downloaded into dst; None when the run has no such artifact."""
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception as ex:  # missing artifact, or the store cannot serve it
        log.debug("Artifact %s of run %s not available: %s", path, run_id, ex)
        return None


def gather(model_dir: Path, run_id: str | None = None, tracking_uri: str | None = None) -> RunRecord:
    """What is known about the run that trained the model in `model_dir` (its MLflow run first)."""
    import os
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file at a time
    meta = _read_json(model_dir / "encoderlab.json") or {}
    rec = RunRecord(model_dir, meta, _read_json(model_dir / "config.json") or {})
    rec.parameters = count_parameters(model_dir)
    rec.run_id = meta.get("run_id") or run_id
    if (model_dir.parent / ".hydra").is_dir() or (model_dir.parent / "metrics.json").is_file():
        rec.run_dir = model_dir.parent  # the model/ folder of a run directory
    with tempfile.TemporaryDirectory(prefix="encoderlab-card-") as tmp:
        if rec.run_id:
            _from_mlflow(rec, tracking_uri, Path(tmp))
        _from_run_dir(rec)
    if rec.config is None:
        rec.notes.append("the run's config was not found (no MLflow run, no run directory)")
    return rec


def _from_mlflow(rec: RunRecord, tracking_uri: str | None, tmp: Path) -> None:
    from encoderlab.tracking import logged_run

    try:
        client, run, uri = logged_run(rec.run_id, tracking_uri)
    except EncoderlabError as ex:
        rec.notes.append(str(ex))
        return
    rec.tracking_uri = uri
    rec.status = run.info.status
    rec.run_name = run.info.run_name
    rec.tags = dict(run.data.tags)
    exp = client.get_experiment(run.info.experiment_id)
    rec.experiment = exp.name if exp is not None else None
    rec.test_metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    rates = {
        k.split("/")[1]: v
        for k, v in run.data.metrics.items()
        if k.startswith("probes/") and k.endswith("/pass_rate")
    }
    rec.probes = rates or None
    local = Path(rec.tags.get("encoderlab.run_dir", ""))
    if rec.run_dir is None and rec.tags.get("encoderlab.run_dir") and local.is_dir():
        rec.run_dir = local
    config = _artifact(client, rec.run_id, "config/config.yaml", tmp)
    if config is not None:
        rec.config = yaml.safe_load(config.read_text(encoding="utf-8"))
    summary = _artifact(client, rec.run_id, "data/summary.json", tmp)
    rec.summary = _read_json(summary) if summary else None
    if rec.run_dir is None:  # a run from another machine: its report files come from the store
        probes = _artifact(client, rec.run_id, "report/probes/results.json", tmp)
        if probes is not None:
            _probe_counts(rec, _read_json(probes))
        preds = _artifact(client, rec.run_id, "predictions/test_predictions.csv", tmp)
        if preds is not None:
            rec.test_label_counts = _label_counts(preds)
    rec.seeds = seed_stats(client, run)


def _from_run_dir(rec: RunRecord) -> None:
    run_dir = rec.run_dir
    if run_dir is None:
        return
    if rec.config is None:
        rec.config = _resolved_local_config(run_dir)
    if not rec.test_metrics:
        metrics = _read_json(run_dir / "metrics.json") or {}
        rec.test_metrics = {k: float(v) for k, v in (metrics.get("test") or {}).items()}
    probes = _read_json(run_dir / "report" / "probes" / "results.json")
    if probes:
        if rec.probes is None:
            rec.probes = dict(probes.get("pass_rates") or {}) or None
        _probe_counts(rec, probes)
    preds = run_dir / "predictions" / "test_predictions.csv"
    if rec.test_label_counts is None and preds.is_file():
        rec.test_label_counts = _label_counts(preds)


def _probe_counts(rec: RunRecord, results: dict | None) -> None:
    if not results:
        return
    counts: dict[str, int] = {}
    for row in results.get("probes") or []:
        counts[row["suite"]] = counts.get(row["suite"], 0) + 1
    rec.probe_counts = counts or None


def _label_counts(csv: Path) -> dict[str, int] | None:
    import pandas as pd

    try:
        labels = pd.read_csv(csv, usecols=["label"], keep_default_na=False, dtype=str)["label"]
    except (OSError, ValueError):
        return None
    return {str(k): int(v) for k, v in labels.value_counts().sort_index().items()}


def _experimental(params: dict[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in params.items() if k not in _BOOKKEEPING and not k.startswith(_BOOKKEEPING_PREFIXES)
    }


def seed_stats(client, run) -> SeedStats | None:
    """Test metrics over the FINISHED runs of the run's experiment that have the same params except the
    seed (a seed grid's siblings, repeated trainings); None when the run is its only seed."""
    from encoderlab.tracking import _search_all

    mine = _experimental(run.data.params)
    if not mine:
        return None
    runs = _search_all(
        client.search_runs,
        experiment_ids=[run.info.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        max_results=1000,
    )
    same = [r for r in runs if r.info.run_id == run.info.run_id or _experimental(r.data.params) == mine]
    if run.info.run_id not in {r.info.run_id for r in same}:
        same.append(run)
    seeds = {r.data.params.get("seed") for r in same}
    if len(same) < 2 or len(seeds) < 2:
        return None
    keys = sorted({k for r in same for k in r.data.metrics if k.startswith("test/")})
    mean, std = {}, {}
    for key in keys:
        values = [r.data.metrics[key] for r in same if key in r.data.metrics]
        if len(values) == len(same):
            m = sum(values) / len(values)
            mean[key] = m
            std[key] = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    same.sort(key=lambda r: str(r.data.params.get("seed")))
    return SeedStats(
        n=len(same),
        seeds=[str(r.data.params.get("seed")) for r in same],
        mean=mean,
        std=std,
        run_ids=[r.info.run_id for r in same],
    )


# ---- rendering -------------------------------------------------------------------------------------
def _metric_order(keys: list[str]) -> list[str]:
    short = {k: k.removeprefix("test/") for k in keys}
    head = [k for name in _HEADLINE for k in keys if short[k] == name]
    return head + sorted(k for k in keys if k not in head)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def base_model(rec: RunRecord) -> str | None:
    """The Hub id the run fine-tuned (None for a local directory or a from-scratch encoder)."""
    name = rec.cfg("model.name_or_path")
    if not isinstance(name, str) or rec.is_scratch or not _HUB_ID.match(name) or Path(name).exists():
        return None
    return name


def hub_dataset(rec: RunRecord) -> str | None:
    """The Hub id of the training data (None for local files and the bundled data)."""
    path = rec.cfg("dataset.path")
    if not isinstance(path, str):
        return None
    if path in _HUB_DATASETS:
        return _HUB_DATASETS[path]
    return path if _HUB_ID.match(path) and not Path(path).exists() else None


def dataset_description(name: str | None) -> str | None:
    """The comment at the top of encoderlab's own conf/dataset/<name>.yaml (what the data is, its source
    and licence), when the run used one of them."""
    from encoderlab.config import conf_dir

    if not name:
        return None
    path = conf_dir() / "dataset" / f"{name}.yaml"
    if not path.is_file():
        return None
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines) or None


def front_matter(rec: RunRecord, name: str) -> dict:
    """The YAML header the Hub reads: library, task, tags, data, metrics, model-index."""
    meta: dict[str, Any] = {
        "library_name": "encoderlab" if rec.is_scratch else "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["text-classification", "encoderlab", f"encoderlab-{rec.family}"]
        + (["onnx"] if rec.onnx else []),
    }
    base = base_model(rec)
    if base:
        meta["base_model"] = base
    dataset = hub_dataset(rec)
    if dataset:
        meta["datasets"] = [dataset]
    metrics = [k.removeprefix("test/") for k in _metric_order(list(rec.test_metrics))]
    wanted = [m for m in metrics if m in ("accuracy", "f1_macro", "precision_macro", "recall_macro")]
    if wanted:
        meta["metrics"] = ["accuracy" if m == "accuracy" else m.split("_")[0] for m in wanted]
    if rec.test_metrics:
        split = (rec.summary or {}).get("test_source") or rec.tags.get("encoderlab.test_split") or "test"
        ds_name = rec.cfg("dataset.name") or rec.meta.get("dataset") or "dataset"
        ds: dict[str, Any] = {"name": str(ds_name), "type": dataset or str(ds_name), "split": str(split)}
        if rec.cfg("dataset.config_name"):
            ds["config"] = str(rec.cfg("dataset.config_name"))
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Text Classification"},
                        "dataset": ds,
                        "metrics": [
                            {
                                "type": _hub_metric_type(k),
                                "value": round(float(rec.test_metrics[k]), 6),
                                "name": f"{split} {k.removeprefix('test/')}",
                            }
                            for k in _metric_order(list(rec.test_metrics))
                            if k.removeprefix("test/") in _INDEXED
                        ],
                    }
                ],
            }
        ]
    return meta


def _hub_metric_type(key: str) -> str:
    short = key.removeprefix("test/")
    return {"auroc": "roc_auc"}.get(short, short.split("_")[0])


def render(rec: RunRecord, name: str, export_dir_hint: str = ".") -> str:
    """The model card: YAML front matter, then the sections, in Markdown."""
    head = yaml.safe_dump(front_matter(rec, name), sort_keys=False, allow_unicode=True)
    parts = [f"---\n{head}---\n", f"# {name}\n", _intro(rec)]
    parts += [_model(rec), _data(rec), _training(rec), _results(rec)]
    if rec.probes:
        parts.append(_probes(rec))
    parts += [_intended_use(rec), _limitations(rec), _how_to_use(rec, export_dir_hint), _provenance(rec)]
    return "\n".join(p.rstrip() + "\n" for p in parts if p)


def _intro(rec: RunRecord) -> str:
    kind = (
        "a transformer encoder trained from scratch" if rec.is_scratch else "a fine-tuned transformer encoder"
    )
    base = base_model(rec) or rec.cfg("model.name_or_path")
    labels = ", ".join(f"`{n}`" for n in rec.label_names) or NOT_RECORDED
    data = rec.cfg("dataset.name") or rec.meta.get("dataset") or NOT_RECORDED
    return (
        f"A text classifier ({labels}) trained with encoderlab on `{data}`: {kind}"
        + (f" (`{base}`)" if base and not rec.is_scratch else "")
        + "."
    )


def _table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _model(rec: RunRecord) -> str:
    arch = rec.config_json.get("architectures") or [rec.config_json.get("model_type", NOT_RECORDED)]
    rows = [
        (
            "family",
            "from-scratch encoder (encoderlab ScratchEncoder)" if rec.is_scratch else "Hugging Face encoder",
        ),
        (
            "base model",
            f"`{rec.cfg('model.name_or_path')}`"
            if not rec.is_scratch and rec.config
            else ("none (trained from scratch)" if rec.is_scratch else NOT_RECORDED),
        ),
        ("architecture", ", ".join(map(str, arch))),
        ("parameters", f"{rec.parameters:,}" if rec.parameters is not None else NOT_RECORDED),
        ("max length", f"{rec.meta['max_length']} tokens" if "max_length" in rec.meta else NOT_RECORDED),
        ("labels", ", ".join(f"{i}: `{n}`" for i, n in enumerate(rec.label_names)) or NOT_RECORDED),
    ]
    if rec.is_scratch:
        keys = ("d_model", "n_layers", "n_heads", "d_ff", "positions", "norm", "pooling")
        shape = ", ".join(f"{k}={rec.config_json[k]}" for k in keys if k in rec.config_json)
        if shape:
            rows.insert(3, ("shape", shape))
    tok = rec.cfg("tokenizer.kind")
    if tok:
        rows.append(
            (
                "tokenizer",
                f"{tok}"
                + (" (trained on the train split)" if tok in ("wordpiece", "bpe", "wordlevel") else ""),
            )
        )
    return "## Model\n\n" + _table(rows, ("", "")) + "\n"


def _data(rec: RunRecord) -> str:
    name = rec.cfg("dataset.name") or rec.meta.get("dataset")
    out = ["## Training data\n"]
    if not name:
        return "## Training data\n\nThe training data was " + NOT_RECORDED + ".\n"
    desc = dataset_description(rec.tags.get("encoderlab.choice.dataset") or name)
    source = rec.cfg("dataset.path")
    files = rec.cfg("dataset.data_files")
    line = f"Dataset `{name}`"
    if hub_dataset(rec):
        line += f" ([{hub_dataset(rec)}](https://huggingface.co/datasets/{hub_dataset(rec)})"
        line += f", config `{rec.cfg('dataset.config_name')}`)" if rec.cfg("dataset.config_name") else ")"
    elif source:
        line += f" (read with the `{source}` loader"
        if isinstance(files, dict):
            line += " from " + ", ".join(f"{k}: `{_data_file(v)}`" for k, v in files.items())
        line += ")"
    out.append(line + ".")
    if desc:
        out.append(f"\n{desc}")
    fields = [f"text field `{rec.cfg('dataset.text_field')}`"] if rec.cfg("dataset.text_field") else []
    if rec.cfg("dataset.text_pair_field"):
        fields.append(f"text pair field `{rec.cfg('dataset.text_pair_field')}`")
    if fields:
        out.append("\nInput: " + ", ".join(fields) + f"; label field `{rec.cfg('dataset.label_field')}`.")
    s = rec.summary or {}
    sizes = s.get("sizes")
    counts = s.get("label_counts") or {}
    if counts.get("test") is None and rec.test_label_counts:
        counts = {**counts, "test": rec.test_label_counts}
    labels = rec.label_names
    rows = []
    for split in ("train", "validation", "test"):
        n = (sizes or {}).get(split)
        dist = counts.get(split)
        dist_s = (
            ", ".join(
                f"{lab} {dist.get(lab, 0)} ({dist.get(lab, 0) / max(sum(dist.values()), 1):.1%})"
                for lab in labels
            )
            if dist
            else NOT_RECORDED
        )
        rows.append(f"| {split} | {n if n is not None else NOT_RECORDED} | {dist_s} |")
    out.append("\n| split | examples | label distribution |\n|---|---|---|\n" + "\n".join(rows))
    notes = list(s.get("notes") or [])
    if s.get("test_is_validation"):
        notes.append(
            f"the test metrics are on the `{s.get('test_source')}` split (the dataset has no labelled test split)"
        )
    if notes:
        out.append("\nNotes: " + "; ".join(notes) + ".")
    fp = s.get("fingerprint") or rec.tags.get("encoderlab.dataset_fingerprint")
    out.append(
        f"\nData fingerprint (encoderlab, of the prepared splits): `{fp}`."
        if fp
        else f"\nData fingerprint: {NOT_RECORDED}."
    )
    return "\n".join(out) + "\n"


def _data_file(value: Any) -> str:
    """A data file as the config names it: a file bundled with encoderlab keeps its bundled name."""
    text = str(value)
    match = re.match(r"^\$\{bundled:(.+)\}$", text)
    return f"{match.group(1)} (bundled with encoderlab)" if match else Path(text).name


def _training(rec: RunRecord) -> str:
    if rec.config is None:
        return f"## Training configuration\n\nThe training configuration was {NOT_RECORDED}.\n"
    opt = rec.cfg("optimizer._target_", "")
    batch = rec.cfg("dataset.batch_size")
    accum = rec.cfg("trainer.accumulate_grad_batches", 1)
    processes = rec.tags.get("encoderlab.processes")
    rows = [
        (
            "optimizer",
            f"{str(opt).rsplit('.', 1)[-1] or NOT_RECORDED}, lr {rec.cfg('optimizer.lr', NOT_RECORDED)}, weight decay {rec.cfg('optimizer.weight_decay', NOT_RECORDED)}",
        ),
        ("scheduler", _scheduler(rec)),
        (
            "batch size",
            f"{batch} per process"
            + (f" x {accum} accumulation" if accum and accum != 1 else "")
            + (f" x {processes} processes" if processes and processes != "1" else ""),
        ),
        (
            "epochs",
            f"{rec.cfg('trainer.max_epochs', NOT_RECORDED)}"
            + (
                f" (max_steps {rec.cfg('trainer.max_steps')})"
                if (rec.cfg("trainer.max_steps") or -1) > 0
                else ""
            ),
        ),
        ("seed", str(rec.cfg("seed", NOT_RECORDED))),
        (
            "precision",
            rec.tags.get("encoderlab.precision") or str(rec.cfg("trainer.precision", NOT_RECORDED)),
        ),
        ("max length", str(rec.cfg("dataset.max_length", NOT_RECORDED))),
        (
            "best checkpoint chosen by",
            f"{rec.cfg('callbacks.checkpoint.monitor', NOT_RECORDED)} ({rec.cfg('callbacks.checkpoint.mode', '')})",
        ),
    ]
    full = yaml.safe_dump(rec.config, sort_keys=False, allow_unicode=True)
    return (
        "## Training configuration\n\n"
        + _table(rows, ("", ""))
        + "\n\n<details>\n<summary>Full resolved config (encoderlab / Hydra)</summary>\n\n```yaml\n"
        + full
        + "```\n\n</details>\n"
    )


def _scheduler(rec: RunRecord) -> str:
    decay = rec.cfg("scheduler.decay")
    if decay is None:
        return NOT_RECORDED
    warm = rec.cfg("scheduler.warmup_steps") or 0
    ratio = rec.cfg("scheduler.warmup_ratio")
    warmup = f"{ratio:.0%} of the steps" if ratio else f"{warm} steps"
    return f"{decay} decay, warmup {warmup}"


def _results(rec: RunRecord) -> str:
    out = ["## Results\n"]
    if not rec.test_metrics:
        return f"## Results\n\nTest metrics: {NOT_RECORDED}.\n"
    split = (rec.summary or {}).get("test_source") or rec.tags.get("encoderlab.test_split") or "test"
    n = ((rec.summary or {}).get("sizes") or {}).get("test")
    out.append(f"On the `{split}` split" + (f" ({n} examples)" if n else "") + ", best checkpoint:\n")
    seeds = rec.seeds
    keys = _metric_order(list(rec.test_metrics))
    if seeds:
        rows = [
            f"| {k.removeprefix('test/')} | {_fmt(rec.test_metrics[k])} | "
            + (f"{seeds.mean[k]:.4f} ± {seeds.std[k]:.4f} (n={seeds.n})" if k in seeds.mean else NOT_RECORDED)
            + " |"
            for k in keys
        ]
        out.append(
            f"| metric | this run (seed {rec.cfg('seed', '?')}) | mean ± std over seeds |\n|---|---|---|\n"
            + "\n".join(rows)
        )
        out.append(
            f"\nMetrics with seeds: the experiment holds {seeds.n} finished runs of this configuration that "
            f"differ only in seed ({', '.join(seeds.seeds)}); std is the sample standard deviation."
        )
    else:
        rows = [f"| {k.removeprefix('test/')} | {_fmt(rec.test_metrics[k])} |" for k in keys]
        out.append("| metric | value |\n|---|---|\n" + "\n".join(rows))
        out.append(
            f"\nMetrics with seeds: one seed ({rec.cfg('seed', NOT_RECORDED)}); no other run of this configuration "
            "with another seed was found, so the seed-to-seed spread is unknown."
        )
    return "\n".join(out) + "\n"


def _probes(rec: RunRecord) -> str:
    rows = [
        f"| {suite} | {rate:.2f} | {(rec.probe_counts or {}).get(suite, NOT_RECORDED)} |"
        for suite, rate in rec.probes.items()
    ]
    return (
        "## Behavioural probes\n\nCheckList-style probe suites (encoderlab `probes=`): the share of probe "
        "texts (or minimal pairs) the model gets right.\n\n| suite | pass rate | probe texts |\n|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def _intended_use(rec: RunRecord) -> str:
    labels = ", ".join(f"`{n}`" for n in rec.label_names)
    data = rec.cfg("dataset.name") or rec.meta.get("dataset") or "its training data"
    return (
        "## Intended use\n\n"
        f"Classifying texts like those of `{data}` (see Training data) into {labels}, for research and as a "
        "baseline. Check it on your own data (`encoderlab evaluate`) before relying on it; it is not meant "
        "for decisions about people."
    )


def _limitations(rec: RunRecord) -> str:
    max_length = rec.meta.get("max_length")
    items = [
        f"Inputs are truncated to {max_length} tokens: text beyond that is not seen."
        if max_length
        else "The maximum input length was " + NOT_RECORDED + ".",
        "Languages and domain: those of the training data (see Training data); other domains and "
        "languages were not tested.",
        "Label set: only " + ", ".join(f"`{n}`" for n in rec.label_names) + "; every input gets one of them "
        "(`encoderlab predict --threshold` abstains below a confidence).",
    ]
    if not rec.seeds:
        items.append("Single seed: the metrics come from one training run; another seed can differ.")
    if rec.probes and any(r < 1.0 for r in rec.probes.values()):
        weak = ", ".join(f"{s} ({r:.2f})" for s, r in rec.probes.items() if r < 1.0)
        items.append(f"Behavioural probes it fails in part: {weak}.")
    return "## Limitations\n\n" + "\n".join(f"- {i}" for i in items)


def _how_to_use(rec: RunRecord, here: str) -> str:
    out = ["## How to use\n"]
    text = "The movie is good."
    if not rec.is_scratch:
        out.append(
            "With transformers:\n\n```python\nfrom transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="{here}", truncation=True, '
            f'max_length={rec.meta.get("max_length", 512)})\nprint(classifier(["{text}"], top_k=None))\n```\n'
        )
    out.append(
        "With encoderlab (every model family; `pip install encoderlab`):\n\n```bash\n"
        f'encoderlab predict {here} "{text}" "The movie is not good."\n'
        f"encoderlab predict {here} --file texts.csv --column text --output predictions.jsonl\n```\n"
    )
    if rec.onnx:
        out.append(
            "With ONNX Runtime (`model.onnx`"
            + (
                ", `model_quantized.onnx` int8"
                if (rec.model_dir and "model_quantized.onnx" in json.dumps(rec.onnx))
                else ""
            )
            + "):\n\n```python\nimport onnxruntime as ort\nfrom transformers import AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{here}")\n'
            f'session = ort.InferenceSession("{here}/model.onnx")\n'
            f'batch = tokenizer(["{text}"], padding=True, truncation=True, max_length={rec.meta.get("max_length", 512)}, return_tensors="np")\n'
            "logits = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]\n```\n\n"
            f'or `encoderlab predict {here} --backend onnxruntime "{text}"`. ONNX parity at export: '
            + onnx_parity_line(rec.onnx)
        )
    return "\n".join(out)


def onnx_parity_line(report: dict) -> str:
    """The ONNX parity report (encoderlab.onnx_export) in one line: max |logit difference| per graph."""
    bits = []
    for fname, rep in (report.get("files") or {}).items():
        rep = rep if isinstance(rep, dict) else {}
        diff = rep.get("max_abs_logit_diff")
        bit = f"`{fname}` max |logit difference| {float(diff):.2e}" if diff is not None else f"`{fname}`"
        if rep.get("label_agreement") is not None:
            bit += f", labels agree {float(rep['label_agreement']):.1%}"
        bits.append(bit)
    checked = report.get("texts")
    return (
        ("; ".join(bits) or NOT_RECORDED)
        + (f" on {checked} texts" if checked else "")
        + (f" (tolerance {report['tolerance']:g})" if isinstance(report.get("tolerance"), float) else "")
        + ", against PyTorch fp32; details in `onnx_parity.json`."
    )


def _provenance(rec: RunRecord) -> str:
    rows = [
        ("MLflow run id", f"`{rec.run_id}`" if rec.run_id else NOT_RECORDED),
        ("MLflow experiment", f"`{rec.experiment}`" if rec.experiment else NOT_RECORDED),
        ("run name", f"`{rec.run_name}`" if rec.run_name else NOT_RECORDED),
        ("run status", rec.status or NOT_RECORDED),
        (
            "git commit",
            f"`{rec.tags['mlflow.source.git.commit']}`"
            + (" (uncommitted changes)" if rec.tags.get("encoderlab.git_dirty") == "true" else "")
            if rec.tags.get("mlflow.source.git.commit")
            else NOT_RECORDED,
        ),
        (
            "command",
            f"`{rec.tags['encoderlab.command']}`" if rec.tags.get("encoderlab.command") else NOT_RECORDED,
        ),
        ("encoderlab version", rec.tags.get("encoderlab.version") or NOT_RECORDED),
    ]
    out = "## Provenance\n\n" + _table(rows, ("", ""))
    if rec.seeds:
        out += (
            "\n\nRuns of the same configuration with other seeds: "
            + ", ".join(f"`{r}`" for r in rec.seeds.run_ids if r != rec.run_id)
            + "."
        )
    if rec.notes:
        out += "\n\nSources not found: " + "; ".join(rec.notes)
    return out + "\n"
