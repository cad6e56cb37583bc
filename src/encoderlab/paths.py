"""Where encoderlab's own files live (importable without Hydra, for fast CLI help)."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The packaged config tree: `encoderlab/conf` in a wheel, `<repo>/conf` in an editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"encoderlab's config tree was not found next to {here}")
