"""Progress bars and wall times of the analysis stages.

`progress`: True shows the bars, False hides them (trainer.enable_progress_bar=false), None lets tqdm
decide (shown on a terminal, hidden when stderr is redirected)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger("encoderlab.analysis")
T = TypeVar("T")


def bar(items: Iterable[T], desc: str, progress: bool | None, total: int | None = None) -> Iterable[T]:
    """`items` under a tqdm bar (or as they are when the bar is off)."""
    if progress is False:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=None if progress is None else False)


@contextmanager
def timed(stage: str, timings: dict[str, float]) -> Iterator[None]:
    """Time a stage: logs its wall time and records it as timings['analysis/<stage>_seconds']."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    timings[f"analysis/{stage}_seconds"] = seconds
    log.info("Analysis %s: %.1f s", stage.replace("_", " "), seconds)
