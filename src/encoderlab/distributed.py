"""Several processes, one run: how the processes of a distributed fit (Lightning DDP/FSDP) share one run
directory and one MLflow run.

Rank 0 (the process the user started, or rank 0 of torchrun/srun) composes the config, opens the run
directory and the MLflow run and prepares the data. Right before fitting it hands the other processes
(the followers) the resolved config, the run directory, the MLflow run id and the checkpoint to resume from:
- when Lightning starts the other processes itself (strategy=ddp on one machine): in environment variables
  that the processes it starts inherit (ENCODERLAB_RUN_*);
- when torchrun or SLURM started every process: by a broadcast over torch.distributed, whose process group
  Lightning then uses as its own.
A follower never composes Hydra outputs, creates a run or writes files: it trains on its share of every
batch, evaluates its share of each split, and ends with rank 0.

Nothing here imports torch at module level: the CLI asks `follower()` before anything else.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

# the hand-off in the environment of the processes Lightning starts: Handoff field -> variable
ENV = {
    "config": "ENCODERLAB_RUN_CONFIG",
    "run_dir": "ENCODERLAB_RUN_DIR",
    "run_id": "ENCODERLAB_RUN_ID",
    "checkpoint": "ENCODERLAB_RUN_CHECKPOINT",
}
# what Lightning's launcher sets in the process it starts from (restored after the run, so that the next
# run of the same process, e.g. a sweep's next trial, starts its processes again)
LIGHTNING_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# how long followers wait for rank 0 to compose, load and tokenize before the hand-off
HANDOFF_TIMEOUT = timedelta(minutes=30)


@dataclass
class Handoff:
    """What rank 0 hands its followers."""

    config: str  # the resolved config, YAML
    run_dir: str
    run_id: str = ""  # "" with logger.backend=none
    checkpoint: str = ""  # a last.ckpt to resume from; "" for a new fit
    error: str = ""  # set instead when rank 0 failed before fitting: the followers end

    def to_env(self) -> dict[str, str]:
        return {ENV[k]: v for k, v in asdict(self).items() if k in ENV}

    @classmethod
    def from_env(cls) -> Handoff:
        return cls(**{k: os.environ.get(name, "") for k, name in ENV.items()})


def launcher_rank() -> tuple[int, int] | None:
    """(global rank, world size) when torchrun or SLURM (srun with several tasks) started this process as
    one of several; None otherwise. Read from the environment only, as Lightning detects them."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
        world = int(env.get("WORLD_SIZE", "1"))
        return (int(env["RANK"]), world) if world > 1 else None
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        world = int(env["SLURM_NTASKS"])
        return (int(env.get("SLURM_PROCID", "0")), world) if world > 1 else None
    return None


def follower() -> str | None:
    """How this process follows a rank 0: 'spawned' (Lightning started it; the hand-off is in the
    environment), 'launched' (torchrun/SLURM rank > 0; the hand-off comes by broadcast), or None (rank 0,
    or a single process)."""
    if ENV["config"] in os.environ and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return "spawned"
    launched = launcher_rank()
    return "launched" if launched is not None and launched[0] > 0 else None


# ---- rank 0 ---------------------------------------------------------------------------------------
_handed_off = False
_restore: dict[str, str | None] = {}  # environment to put back after the run
_argv0: str | None = None


def hand_off(trainer: Any, handoff: Handoff, num_threads: int | None) -> None:
    """Before rank 0's fit: give the followers what they need, by broadcast (torchrun/SLURM started them)
    or in the environment of the processes Lightning is about to start."""
    global _handed_off, _argv0
    if launcher_rank() is not None:
        _handed_off = True
        _broadcast(handoff)
        _handed_off = True
        return
    if trainer.strategy.cluster_environment.creates_processes_externally:
        raise EncoderlabError(
            "LOCAL_RANK is set, but neither torchrun nor SLURM started this process: encoderlab cannot tell "
            "the other processes which run they belong to. Start distributed runs with `encoderlab train "
            "trainer=ddp_cpu ...` (one machine), `torchrun ... -m encoderlab train ...` or `srun`."
        )
    _argv0 = sys.argv[0]
    sys.argv[0] = _respawnable_entry()
    env = handoff.to_env()
    if num_threads:  # Lightning sets each process's threads to cores / processes unless this is set
        env["OMP_NUM_THREADS"] = str(num_threads)
    for key in (*LIGHTNING_ENV, *env):
        _restore.setdefault(key, os.environ.get(key))
    os.environ.update(env)


def _respawnable_entry() -> str:
    """What Lightning re-runs to start the other processes: `python -m <__main__'s module>` when encoderlab
    runs as a module, else `python <sys.argv[0]>` (set here to the console script)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        if spec.name.split(".")[0] != "encoderlab":
            raise EncoderlabError(
                "A distributed fit on one machine starts its other processes by running encoderlab again, "
                f"but this process runs '{spec.name}', not encoderlab: run it from the command line (`encoderlab "
                "train ...` or `python -m encoderlab train ...`), or start every process with torchrun."
            )
        return sys.argv[0]
    script = Path(sys.orig_argv[1]) if len(sys.orig_argv) > 1 else None
    if script is None or not script.is_file():
        raise EncoderlabError(
            "A distributed fit on one machine starts its other processes by running encoderlab again, but "
            "this process was not started from the `encoderlab` command or `python -m encoderlab`."
        )
    return str(script.resolve())


def end_of_run(failure: str | None = None) -> None:
    """After rank 0's command: followers of torchrun/SLURM that never got a hand-off (rank 0 failed first,
    or trained alone) are told to end, with `failure`; the environment Lightning's launch changed is put back; the process group
    Lightning's own launch used is closed (a sweep's next trial starts its processes again)."""
    global _handed_off, _argv0
    if launcher_rank() is not None:
        if not _handed_off and failure is not None:
            _handed_off = True  # told once; a process of torchrun/SLURM runs one command
            try:
                _broadcast(Handoff(config="", run_dir="", error=" ".join(failure.split())[:500]))
            except Exception as ex:  # the followers are gone or unreachable: nothing more to tell them
                log.warning("Could not tell the other processes to stop: %s", ex)
        return
    if _argv0 is not None:
        sys.argv[0], _argv0 = _argv0, None
    for key, value in _restore.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _restore.clear()
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def receive() -> Handoff:
    """A follower's hand-off: from the environment (Lightning started it) or rank 0's broadcast."""
    return Handoff.from_env() if follower() == "spawned" else _broadcast(None)


def _broadcast(handoff: Handoff | None) -> Handoff:
    """Rank 0 sends `handoff`, the others receive it, over the process group of torchrun's or SLURM's
    processes (created here with Lightning's view of the cluster, and left for Lightning to use)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

        cluster = TorchElasticEnvironment() if TorchElasticEnvironment.detect() else SLURMEnvironment()
        os.environ["MASTER_ADDR"] = cluster.main_address
        os.environ["MASTER_PORT"] = str(cluster.main_port)
        # no backend named: gloo for CPU tensors, plus NCCL for CUDA tensors where there are GPUs
        dist.init_process_group(
            rank=cluster.global_rank(), world_size=cluster.world_size(), timeout=HANDOFF_TIMEOUT
        )
    box = [handoff]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]
