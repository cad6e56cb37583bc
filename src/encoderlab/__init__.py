"""encoderlab: config-driven text-classification experiments with transformer encoders."""

import time

__version__ = "0.1.0"
STARTED_AT = time.time()  # when the command began: perf/seconds_to_first_step counts from here
_first_run_pending = True  # the command's first training run has not started yet


def restart_clock() -> None:
    """A new command begins (cli.main; tests run several in one process)."""
    global STARTED_AT, _first_run_pending
    STARTED_AT, _first_run_pending = time.time(), True


def run_started_at() -> float:
    """When the training run starting now began, for its time to the first step: the command's start for
    the command's first run (imports and start-up included), now for a later one in the same process
    (the next multirun job, sweep trial or re-test run), which would otherwise count its predecessors."""
    global _first_run_pending
    first, _first_run_pending = _first_run_pending, False
    return STARTED_AT if first else time.time()
