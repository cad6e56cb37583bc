"""Load a trained model back for inference: by MLflow run id, by run directory, or by exported directory.

Every run saves its best model as a directory (config.json + safetensors weights + tokenizer files +
encoderlab.json with the label names and the max length it was trained with). HF encoders reload with
`from_pretrained` (and `transformers.pipeline`), the scratch encoder with `ScratchEncoder.from_pretrained`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from encoderlab.errors import EncoderlabError

METADATA_FILE = "encoderlab.json"
SAVED = "model"  # the save_pretrained directory inside an MLflow model made by encoderlab.mlflow_model
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LoadedModel:
    net: nn.Module
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    directory: Path
    family: str  # hf | scratch
    max_length: int = 512  # what it was trained with
    max_positions: int = 512  # the longest input the model takes
    run_id: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        return self.metadata.get("task") == "multilabel"

    @property
    def thresholds(self) -> list[float]:
        """Multi-label decision thresholds, one per label (encoderlab.json; 0.5 where none was saved)."""
        saved = self.metadata.get("thresholds") or {}
        return [float(saved.get(n, 0.5)) for n in self.label_names]


def write_metadata(directory: Path, label_names: list[str], max_length: int, family: str, **extra) -> None:
    """encoderlab.json beside the weights: what inference needs that config.json does not say."""
    meta = {"label_names": list(label_names), "max_length": int(max_length), "family": family, **extra}
    (Path(directory) / METADATA_FILE).write_text(json.dumps(meta, indent=2))


def _metadata(directory: Path) -> dict:
    """encoderlab.json of a model directory; {} when missing or unreadable."""
    path = directory / METADATA_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def resolve_model_dir(source: str, tracking_uri: str | None = None) -> tuple[Path, str | None]:
    """A model directory and the MLflow run id it came from (None when given a directory).
    source: a model directory, a run directory, an MLflow model directory, an MLflow run id,
    runs:/<run id>/<path> or models:/<name>/<version or alias>."""
    if source.startswith(("runs:/", "models:/")):
        return _download_model_uri(source, tracking_uri)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EncoderlabError(
                f"{path} is a file; pass a model directory, a run directory or an MLflow run id."
            )
        if (path / "config.json").is_file():
            return path, None
        if (path / "model" / "config.json").is_file():  # a run directory, or an MLflow model directory
            return path / "model", None
        raise EncoderlabError(
            f"{path} holds no model: expected config.json + model.safetensors (an exported model, e.g. "
            f"outputs/runs/<date>/<time>-<name>/model), a run directory with a model/ folder inside, or an "
            "MLflow model directory (MLmodel + model/)."
        )
    if _RUN_ID.match(source):
        return _download_run_model(source, tracking_uri), source
    raise EncoderlabError(
        f"Model source {source!r} is neither an existing directory nor an MLflow run id (32 hex characters). "
        "Pass a run id, runs:/<run id>/model, models:/<name>/<version or alias>, a run directory "
        "(outputs/runs/...) or an exported model directory."
    )


def _download_run_model(run_id: str, tracking_uri: str | None) -> Path:
    import mlflow

    from encoderlab.tracking import logged_run

    client, run, uri = logged_run(run_id, tracking_uri)
    local = Path(run.data.tags.get("encoderlab.run_dir", "")) / "model"
    if (local / "config.json").is_file() and _metadata(local).get("run_id") == run_id:
        return local  # same machine, and the directory still holds this run's model: no copy needed
    names = [a.path for a in client.list_artifacts(run_id)]
    if "model" not in names:
        raise EncoderlabError(
            f"MLflow run {run_id} has no 'model' artifact (it was {run.info.status}; artifacts: "
            f"{', '.join(names) or 'none'}). Runs log one unless logger.log_model=false or trainer.fast_dev_run."
        )
    downloaded = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", tracking_uri=uri)
    )
    return _inner(downloaded)


def _inner(directory: Path) -> Path:
    """The save_pretrained directory of a downloaded model artifact: an MLflow model's model/ folder, or
    the directory itself (runs logged before models were MLflow models)."""
    return saved_model_dir(directory) or directory


def saved_model_dir(directory: Path) -> Path | None:
    """The save_pretrained directory of an MLflow model directory made by encoderlab; None otherwise."""
    inner = Path(directory) / SAVED
    if (Path(directory) / "MLmodel").is_file() and (inner / "config.json").is_file():
        return inner
    return None


def _download_model_uri(uri: str, tracking_uri: str | None) -> tuple[Path, str | None]:
    """runs:/<run id>/<path> or models:/<name>/<version or alias>: downloaded from the tracking store (the
    registry is the tracking store's), or this machine's run directory when it still holds that model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from encoderlab.tracking import default_tracking_uri, redact, tracking_client

    store = tracking_uri or default_tracking_uri()
    client = tracking_client(store)
    parts = uri.split("/")
    try:
        if uri.startswith("runs:/"):
            run_id = parts[1] if len(parts) > 2 and parts[1] else None
            if run_id is None:
                raise EncoderlabError(
                    f"{uri!r}: expected runs:/<run id>/<artifact path>, e.g. runs:/<id>/model."
                )
            if "/".join(parts[2:]).strip("/") == "model":
                return _download_run_model(run_id, store), run_id
        else:
            name, ref = _registered(uri)
            version = (
                client.get_model_version(name, ref)
                if ref.isdigit()
                else client.get_model_version_by_alias(name, ref)
            )
            run_id = version.run_id
            if run_id and str(version.source).rstrip("/").endswith("/model"):  # a run's own model artifact
                return _download_run_model(run_id, store), run_id
            uri = f"models:/{name}/{version.version}"
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=store))
    except MlflowException as ex:
        raise EncoderlabError(
            f"Model {uri} could not be found in the tracking store {redact(store)}: "
            f"{' '.join(str(ex).split())[:300]}. Check the name and version (or alias), or pass "
            "--tracking-uri / MLFLOW_TRACKING_URI for the store that holds it."
        ) from ex
    return _inner(downloaded), run_id


def _registered(uri: str) -> tuple[str, str]:
    """(name, version or alias) of models:/<name>/<version>, models:/<name>/<alias> or models:/<name>@<alias>."""
    body = uri[len("models:/") :]
    name, sep, ref = body.partition("@") if "@" in body else body.partition("/")
    if not sep or not name or not ref or "/" in ref:
        raise EncoderlabError(
            f"{uri!r}: expected models:/<name>/<version>, models:/<name>/<alias> or models:/<name>@<alias>, "
            "e.g. models:/sst2/1 or models:/sst2@champion."
        )
    return name, ref


def check_finite(net: nn.Module, directory: Path) -> None:
    """Refuse weights holding NaN/inf (a diverged run's): every prediction would be NaN."""
    import torch

    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise EncoderlabError(
                f"Model directory {directory} holds non-finite weights: tensor '{name}' "
                f"{tuple(tensor.shape)} has {bad} NaN/inf values of {tensor.numel()} (the first such tensor). "
                "Its predictions would all be NaN: the training run that saved it diverged (or the file was "
                "damaged). Retrain it with a lower optimizer.lr or gradient clipping (trainer.gradient_clip_val)."
            )


def load_model(source: str, tracking_uri: str | None = None) -> LoadedModel:
    """The model, tokenizer and label names of a run id, run directory or exported model directory."""
    from transformers import AutoTokenizer

    from encoderlab.models.files import check_model_dir

    directory, run_id = resolve_model_dir(source, tracking_uri)
    config = check_model_dir(directory, "Model directory")
    meta = (
        json.loads((directory / METADATA_FILE).read_text()) if (directory / METADATA_FILE).is_file() else {}
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as ex:
        raise EncoderlabError(
            f"Model directory {directory} has no usable tokenizer files (tokenizer.json / vocab): {ex}"
        ) from ex
    if config.get("model_type") == "encoderlab_scratch":
        from encoderlab.models.scratch import ScratchEncoder

        net = ScratchEncoder.from_pretrained(directory)
        family, model_max = "scratch", net.cfg.max_positions
    else:
        from encoderlab.models.hf_encoder import HFEncoderClassifier

        id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
        net = HFEncoderClassifier(str(directory), num_labels=len(id2label) or 2, id2label=id2label or None)
        family = "hf"
        model_max = config.get("max_position_embeddings", 512)
        if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            model_max -= 2  # positions are offset by the padding index
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    label_names = meta.get("label_names") or [id2label[i] for i in sorted(id2label)]
    max_length = min(int(meta.get("max_length", model_max)), model_max)
    check_finite(net, directory)
    net.eval()
    return LoadedModel(net, tokenizer, label_names, directory, family, max_length, model_max, run_id, meta)
