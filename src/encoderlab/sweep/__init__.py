"""`encoderlab sweep`: Optuna searches over any config keys, one MLflow parent run per study.

space (the YAML search space) -> study (optuna storage, sampler, pruner) -> trials (objective, workers)
-> runner (the command's flow), with report (best.yaml, plots) and retest (winners on fresh seeds).
"""
