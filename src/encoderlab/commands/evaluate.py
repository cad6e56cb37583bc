"""`encoderlab evaluate`: the evaluation report of a trained model on any dataset split (conf/evaluate.yaml)."""

from __future__ import annotations

from encoderlab.compose import hydra_command


def task(cfg) -> float:
    from encoderlab.validate import validate_evaluate_config

    validate_evaluate_config(cfg)
    from encoderlab.evaluate import evaluate

    return evaluate(cfg)


def main(argv: list[str]) -> int:
    return hydra_command(argv, "evaluate", task)
