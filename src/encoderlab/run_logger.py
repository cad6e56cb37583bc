"""The Lightning logger of a tracked run: forwards Lightning's metrics and hyperparameters to the run's
TrackedRun, so they go through the same outage handling as every other tracking call."""

from __future__ import annotations

import re
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class RunLogger(Logger):
    """Lightning -> TrackedRun.log_metrics / log_params; it never ends the run (TrackedRun does)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self._run = run

    @property
    def name(self) -> str:
        return "encoderlab"

    @property
    def version(self) -> str:
        return self._run.run_id or ""

    @property
    def save_dir(self) -> str | None:
        return None

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
        if flat:
            self._run.log_params({k: str(v) for k, v in flat.items()})

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # MLflow's allowed characters in metric names (as Lightning's MLFlowLogger does)
        clean = {
            re.sub(r"[^a-zA-Z0-9_/. -]+", "", k): float(v)
            for k, v in metrics.items()
            if not isinstance(v, str)
        }
        if clean:
            self._run.log_metrics(clean, step=step or 0)

    def finalize(self, status: str) -> None:  # TrackedRun sets the final status
        pass
