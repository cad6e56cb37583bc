"""A process of a distributed fit other than rank 0 (no command line of its own: encoderlab.distributed)."""

from __future__ import annotations

import os
import sys

from encoderlab import distributed


def main() -> int:
    """Receive rank 0's hand-off, train and test this process's shares, end. Exit code 1 when rank 0
    failed before the fit (rank 0 reports why)."""
    handoff = distributed.receive()
    if handoff.error:
        rank = distributed.launcher_rank() or os.environ.get("LOCAL_RANK")
        print(f"rank {rank}: rank 0 stopped: {handoff.error}", file=sys.stderr)
        return 1
    from omegaconf import OmegaConf

    from encoderlab.config import register_configs
    from encoderlab.train import train

    register_configs()
    train(OmegaConf.create(handoff.config), follower=handoff)
    return 0
