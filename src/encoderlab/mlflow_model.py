"""A trained model as an MLflow model, so the MLflow ecosystem can load, register and serve it.

    <run dir>/mlflow_model/          logged as the run's `model` artifact: runs:/<run id>/model
        MLmodel                      flavors: python_function (every family), transformers (HF encoders)
        model/                       the save_pretrained directory (= <run dir>/model, hard-linked)
        components/tokenizer/        the transformers flavor's tokenizer (HF encoders)
        input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

The python_function flavor is encoderlab's own batched, length-sorted inference (`predict_proba`), so
`mlflow.pyfunc.load_model(...).predict(df)` and `mlflow models serve` answer exactly as `encoderlab predict`
does: a DataFrame with `text` (and `text_pair` where the model was trained on pairs) in, one row per text
out (label, top_label, confidence, prob_<label>). Params: threshold, mc_dropout, batch_size, precision.
`mlflow.transformers.load_model(...)` gives a text-classification pipeline for HF encoders.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from encoderlab.errors import EncoderlabError
from encoderlab.models.trained import SAVED, load_model

ARTIFACT = "model"  # the run's artifact path: runs:/<run id>/model
LOCAL_DIR = "mlflow_model"  # where a run builds it, beside <run dir>/model
PINNED = ("torch", "transformers", "tokenizers", "safetensors", "mlflow", "pandas", "numpy")
EXAMPLE_TEXTS = ("A wonderful, moving film.", "Dull and far too long.")


def requirements() -> list[str]:
    """The packages inference needs, pinned to the versions that trained and saved the model."""
    pins = [f"encoderlab=={metadata.version('encoderlab')}"]
    for name in PINNED:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def signature(label_names: list[str], pairs: bool, multilabel: bool = False):
    """Input: text (+ text_pair); output: encoderlab predict's columns; params with their defaults.
    Multi-label: labels (the predicted set, 'joy;love'), n_labels and prob_<label>."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [ColSpec("string", "text")] + ([ColSpec("string", "text_pair")] if pairs else [])
    outputs = [ColSpec("string", "label"), ColSpec("string", "top_label"), ColSpec("double", "confidence")]
    if multilabel:
        outputs = [ColSpec("string", "labels"), ColSpec("long", "n_labels")]
    outputs += [ColSpec("double", f"prob_{name}") for name in label_names]
    params = ParamSchema(
        [
            ParamSpec("threshold", "double", 0.0),  # abstain under this top probability (0: never)
            ParamSpec("mc_dropout", "long", 0),  # N > 0: mean of N passes with dropout on, plus std_<label>
            ParamSpec("batch_size", "long", 64),
            ParamSpec("precision", "string", "auto"),  # auto | 32 | bf16, as encoderlab predict --precision
        ]
    )
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


def save(
    model_dir: Path,
    path: Path,
    *,
    label_names: list[str],
    pairs: bool = False,
    example: list[str] | None = None,
    multilabel: bool = False,
    hf_parts: tuple[Any, Any] | None = None,
) -> Path:
    """Build the MLflow model of the save_pretrained directory `model_dir` at `path` (replaced).
    `hf_parts` = (transformers model, tokenizer) adds the transformers flavor (HF encoders)."""
    import mlflow.pyfunc

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    texts = list(example or EXAMPLE_TEXTS)[:3]
    example_frame = {"text": texts, **({"text_pair": texts} if pairs else {})}
    import pandas as pd

    mlflow.pyfunc.save_model(
        str(path),
        loader_module=__name__,
        data_path=str(model_dir),
        signature=signature(label_names, pairs, multilabel),
        input_example=pd.DataFrame(example_frame),
        pip_requirements=requirements(),
    )
    data = path / "data"  # where save_model copied model_dir: moved to model/, where the transformers
    (data / Path(model_dir).name).rename(path / SAVED)  # flavor looks for the weights too
    data.rmdir()
    _set_data(path)
    if hf_parts is not None:
        _add_transformers_flavor(path, *hf_parts)
    _link_same_files(Path(model_dir), path / SAVED)
    return path


def _set_data(path: Path) -> None:
    from mlflow.models import Model

    model = Model.load(str(path / "MLmodel"))
    model.flavors["python_function"]["data"] = SAVED
    model.save(str(path / "MLmodel"))


def _add_transformers_flavor(path: Path, hf_model: Any, tokenizer: Any) -> None:
    """mlflow.transformers' own flavor config and tokenizer component, pointed at our `model/` directory
    (which holds the same save_pretrained weights) instead of a second copy of the weights."""
    import mlflow.transformers
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        scratch = Path(tmp) / "transformers"
        mlflow.transformers.save_model(
            {"model": hf_model, "tokenizer": tokenizer},
            str(scratch),
            task="text-classification",
            pip_requirements=requirements(),
        )
        flavor = Model.load(str(scratch / "MLmodel")).flavors["transformers"]
        if flavor.get("model_binary") != SAVED:
            raise EncoderlabError(
                f"mlflow.transformers saved its model under {flavor.get('model_binary')!r}, not {SAVED!r}: this "
                "MLflow version lays models out differently; log with logger.log_model=false or pin mlflow."
            )
        if (scratch / "components").is_dir():
            shutil.move(str(scratch / "components"), str(path / "components"))
    model = Model.load(str(path / "MLmodel"))
    model.flavors["transformers"] = flavor
    model.save(str(path / "MLmodel"))


def _link_same_files(source: Path, copy: Path) -> None:
    """Hard-link the copy's files that equal the source's, so a run keeps one copy of its weights on disk."""
    for file in copy.iterdir():
        twin = source / file.name
        if file.is_file() and twin.is_file() and filecmp.cmp(file, twin, shallow=False):
            tmp = file.with_name(file.name + ".link")
            try:
                os.link(twin, tmp)
                os.replace(tmp, file)
            except OSError:  # another filesystem, or no hard links there: keep the copy
                tmp.unlink(missing_ok=True)


# ---- the python_function flavor ------------------------------------------------------------------


def _load_pyfunc(data_path: str) -> EncoderlabPyfunc:
    """MLflow's entry point (loader_module): the model of the save_pretrained directory `data_path`."""
    return EncoderlabPyfunc(load_model(data_path))


class EncoderlabPyfunc:
    """`predict(texts)` -> one row per text, as `encoderlab predict` writes them."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded

    def predict(self, model_input: Any, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        from encoderlab.inference import label_set_rows, predict_proba, prediction_rows, resolve_precision

        texts, pairs = _texts(model_input)
        params = params or {}
        threshold = float(params.get("threshold") or 0.0)
        mc_dropout = int(params.get("mc_dropout") or 0)
        batch_size = int(params.get("batch_size") or 64)
        if mc_dropout < 0 or batch_size < 1 or not 0.0 <= threshold <= 1.0:
            raise EncoderlabError(
                f"params: threshold must be in [0, 1], mc_dropout >= 0, batch_size >= 1; got threshold="
                f"{threshold}, mc_dropout={mc_dropout}, batch_size={batch_size}."
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = resolve_precision(str(params.get("precision") or "auto"), device)
        if precision not in ("32", "bf16"):
            raise EncoderlabError(f"params: precision must be auto, 32 or bf16; got {precision!r}.")
        out = predict_proba(
            self.loaded.net,
            self.loaded.tokenizer,
            texts,
            pairs,
            batch_size=batch_size,
            max_length=self.loaded.max_length,
            mc_dropout=mc_dropout,
            device=device,
            precision=precision,
            multilabel=self.loaded.multilabel,
        )
        if self.loaded.multilabel:  # each label's own threshold (encoderlab.json); `threshold` overrides
            thresholds = (
                [threshold] * len(self.loaded.label_names) if threshold > 0 else self.loaded.thresholds
            )
            return pd.DataFrame(label_set_rows(out, self.loaded.label_names, thresholds))
        rows = prediction_rows(out, self.loaded.label_names, threshold if threshold > 0 else None)
        return pd.DataFrame(rows)


def _texts(model_input: Any) -> tuple[list[str], list[str] | None]:
    """Texts (and text pairs) from a DataFrame (`text`, optional `text_pair`; or a single column), a
    Series, a dict of columns, a list of strings, or one string."""
    import pandas as pd

    frame = model_input
    if isinstance(frame, str):
        frame = [frame]
    if isinstance(frame, dict):
        frame = pd.DataFrame(frame)
    if isinstance(frame, pd.Series):
        frame = frame.to_frame("text")
    if isinstance(frame, list | tuple):
        frame = pd.DataFrame({"text": list(frame)})
    if not isinstance(frame, pd.DataFrame):
        raise EncoderlabError(
            f"Input of type {type(model_input).__name__}: pass a DataFrame with a 'text' column (and "
            "'text_pair' for a pair model), a list of strings or a dict of columns."
        )
    if "text" not in frame.columns:
        if len(frame.columns) != 1:
            raise EncoderlabError(
                f"Input columns {list(map(str, frame.columns))}: expected 'text' (and 'text_pair')."
            )
        frame = frame.rename(columns={frame.columns[0]: "text"})
    texts = ["" if v is None else str(v) for v in frame["text"].tolist()]
    pairs = (
        ["" if v is None else str(v) for v in frame["text_pair"].tolist()]
        if "text_pair" in frame.columns
        else None
    )
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise EncoderlabError(
            f"{len(empty)} empty text(s) (rows {empty[:10]}): every text needs a character."
        )
    return texts, pairs
