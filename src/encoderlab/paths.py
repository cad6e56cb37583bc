"""Where encoderlab's own files live (importable without Hydra, for fast CLI help)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _packaged(name: str, marker: str | None = None) -> Path:
    """`encoderlab/<name>` in a wheel, `<repo>/<name>` in an editable install."""
    for candidate in (_HERE / name, _HERE.parents[1] / name):
        if candidate.is_dir() and (marker is None or (candidate / marker).is_file()):
            return candidate
    raise FileNotFoundError(f"encoderlab's {name}/ folder was not found next to {_HERE}")


def conf_dir() -> Path:
    """The packaged config tree."""
    return _packaged("conf", "train.yaml")


def packaged_sweeps_dir() -> Path:
    """The packaged search spaces (sweeps/<name>.yaml)."""
    return _packaged("sweeps")


def bundled_data_dir() -> Path:
    """Datasets shipped inside the package (encoderlab/data/bundled/<name>/<split>.parquet)."""
    return _HERE / "data" / "bundled"


def bundled_file(relative: str) -> str:
    """`${bundled:uci_sentences/train.parquet}` in a config: the absolute path of a bundled data file."""
    path = bundled_data_dir() / relative
    if not path.is_file():
        shipped = sorted(
            str(p.relative_to(bundled_data_dir())) for p in bundled_data_dir().rglob("*.parquet")
        )
        raise FileNotFoundError(
            f"${{bundled:{relative}}}: no such file in {bundled_data_dir()}. "
            f"Bundled files: {', '.join(shipped) or 'none'}."
        )
    return str(path)
