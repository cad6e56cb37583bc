"""A trained model as a self-contained, Hub-ready directory: the save_pretrained files, the tokenizer,
encoderlab.json, a model card (README.md) generated from the run and, optionally, an ONNX graph; and its
upload to the Hugging Face Hub. An export only reads the run: it never changes it."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

FORMATS = ("hf", "onnx")
QUANTIZE = ("int8",)
EXPORTS_DIR = Path("outputs") / "exports"
# files of a model directory that are not the model (an earlier card, ONNX files of another export)
_NOT_COPIED = ("README.md", ".gitattributes")


class ExportUsageError(EncoderlabError):
    """The export was asked for something it cannot do as asked (e.g. overwrite without --overwrite)."""

    exit_code = 2


@dataclass
class Exported:
    directory: Path
    run_id: str | None
    name: str
    onnx: dict | None


def export_name(model_dir: Path, run_name: str | None, run_id: str | None) -> str:
    """The default directory name: the run name, else the run id, else the directory's own name (a run
    directory's name for its model/ folder)."""
    name = run_name or run_id
    if not name:
        name = model_dir.parent.name if model_dir.name == "model" else model_dir.name
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "model"


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportUsageError(f"--output {out} is a file; give a directory (it is created if missing).")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportUsageError(
            f"--output {out} exists and is not empty; the export would replace its files. Pass --overwrite "
            "to replace it, or choose another directory with --output."
        )


def heldout_texts(run_dir: Path | None, limit: int = 64) -> list[str] | None:
    """Test texts of the run (its predictions file) for the ONNX parity check; None when not kept."""
    if run_dir is None:
        return None
    path = run_dir / "predictions" / "test_predictions.csv"
    if not path.is_file():
        return None
    import pandas as pd

    try:
        texts = pd.read_csv(path, usecols=["text"], keep_default_na=False, dtype=str, nrows=limit)["text"]
    except (OSError, ValueError):
        return None
    return [t for t in texts.tolist() if t.strip()] or None


def export_model(
    source: str,
    output: Path | None = None,
    *,
    fmt: str = "hf",
    quantize: str | None = None,
    overwrite: bool = False,
    tracking_uri: str | None = None,
) -> Exported:
    """Write the export of `source` (run id, run directory, model directory) to `output` (default
    outputs/exports/<name>): built in a temporary directory beside it, then renamed into place."""
    from encoderlab import model_card
    from encoderlab.models.files import check_model_dir
    from encoderlab.models.trained import resolve_model_dir

    if fmt not in FORMATS:
        raise ExportUsageError(f"--format {fmt!r} is not a format; allowed: {', '.join(FORMATS)}.")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise ExportUsageError(
            f"--quantize {quantize} needs --format onnx and one of: {', '.join(QUANTIZE)} "
            "(int8: dynamic quantization of the ONNX graph)."
        )
    if output is not None:
        _check_target(output.resolve(), overwrite)  # before any download or card work
    model_dir, run_id = resolve_model_dir(source, tracking_uri)
    check_model_dir(model_dir, "Model directory")
    record = model_card.gather(model_dir, run_id, tracking_uri)
    name = export_name(model_dir, record.run_name, record.run_id)
    out = (output or EXPORTS_DIR / name).resolve()
    _check_target(out, overwrite)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(3)}"
    try:
        shutil.copytree(
            model_dir, tmp, ignore=shutil.ignore_patterns(*_NOT_COPIED, "*.onnx", "onnx_parity.json")
        )
        if fmt == "onnx":
            record.onnx = _onnx(model_dir, tmp, quantize, heldout_texts(record.run_dir))
        card = model_card.render(record, name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, record.run_id, name, record.onnx)


def _onnx(model_dir: Path, out_dir: Path, quantize: str | None, texts: list[str] | None) -> dict:
    from encoderlab.onnx_export import export_onnx  # checks the `onnx` extra itself

    return export_onnx(model_dir, out_dir, quantize=quantize, texts=texts)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an old directory (--overwrite) is moved aside first and removed
    once the new one is there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(3)}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def push_to_hub(directory: Path, repo: str, *, private: bool = False, token: str | None = None) -> str:
    """Create the Hub model repo `repo` (kept if it exists) and upload `directory` into it; returns the
    repo URL. The endpoint is $HF_ENDPOINT (default https://huggingface.co), the token --token, else
    $HF_TOKEN or the one `hf auth login` saved. Any failure is one EncoderlabError line."""
    from encoderlab.errors import require_extra

    require_extra("huggingface_hub", "huggingface_hub", "hub", "--push-to-hub")
    if not re.match(r"^[\w.-]+/[\w.-]+$", repo) and not re.match(r"^[\w.-]+$", repo):
        raise ExportUsageError(
            f"--push-to-hub {repo!r} is not a Hub repo id; give NAME or OWNER/NAME (letters, digits, '-', '_', '.')."
        )
    from huggingface_hub import HfApi

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=endpoint, token=token)
    step = "create the repo"
    try:
        url = api.create_repo(repo, exist_ok=True, private=private, repo_type="model")
        step = "upload the files"
        api.upload_folder(
            repo_id=getattr(url, "repo_id", repo),
            folder_path=str(directory),
            repo_type="model",
            commit_message="encoderlab export",
        )
    except Exception as ex:
        raise EncoderlabError(
            f"Push to the Hub failed: could not {step} {repo} on {endpoint} ({_hub_reason(ex)}). The export "
            f"is complete and kept in {directory}; upload it later with `hf upload {repo} {directory}`."
        ) from ex
    return str(url)


def _hub_reason(ex: BaseException) -> str:
    """What went wrong with a Hub call, in a few words (status code, a missing token, no network)."""
    response = getattr(ex, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return "HTTP 401 Unauthorized: no valid token; pass --token, set HF_TOKEN or run `hf auth login`"
    if status == 403:
        return "HTTP 403 Forbidden: the token may not write to this repo or namespace"
    if status is not None:
        return f"HTTP {status}: {' '.join(str(ex).split())[:200]}"
    text = " ".join(str(ex).split())
    return f"{type(ex).__name__}: {text[:200]}" if text else type(ex).__name__
