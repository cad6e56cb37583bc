"""`encoderlab train`: compose conf/train.yaml with the overrides (a Hydra app, `-m` for grids) and train."""

from __future__ import annotations

from encoderlab.compose import hydra_command


def task(cfg) -> float | None:
    """Hydra task: check allowed values first, then import the heavy training stack."""
    from encoderlab.validate import validate_config

    validate_config(cfg)
    from encoderlab.tracking_journal import preflight

    preflight(cfg)  # an unreachable tracking server fails here, before the heavy imports
    from encoderlab.train import train

    return train(cfg)


def main(argv: list[str]) -> int:
    return hydra_command(argv, "train", task)
