"""`encoderlab resume <run-id|run-dir>`: continue a killed or crashed train run from its last.ckpt.

    encoderlab resume 3f2c...e9                        # an MLflow run id (its encoderlab.run_dir tag)
    encoderlab resume outputs/runs/2026-01-01/12-00-00-quickstart-a1b2c3
    encoderlab resume 3f2c...e9 --tracking-uri http://host:5000

The same MLflow run goes back to RUNNING, training continues where last.ckpt left it (metrics at the
steps they would have had), then test, report and export run as for `encoderlab train`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from encoderlab.commands import command_parser

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as Hydra's, for train


def main(argv: list[str]) -> int:
    p = command_parser("resume", __doc__)
    p.add_argument("run", help="MLflow run id or run directory of the train run to continue")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store of the run (default: the run's logger.tracking_uri, $MLFLOW_TRACKING_URI or "
        "sqlite:///outputs/mlflow.db)",
    )
    args = p.parse_args(argv)

    from encoderlab.resume import check_resumable, locate, resume

    found = locate(args.run, args.tracking_uri)  # errors before any log file is opened
    check_resumable(found)
    handlers = _log_to(found.run_dir / "train.log")
    try:
        resume(found)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return 0


def _log_to(path: Path) -> list[logging.Handler]:
    """INFO logs on stdout and appended to the run's train.log, as train's Hydra logging does."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="a", encoding="utf-8")]
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    return handlers
