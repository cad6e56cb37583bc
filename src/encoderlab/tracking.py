"""MLflow run lifecycle: encoderlab owns the run, so a crash anywhere marks it FAILED with the reason."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

import encoderlab
from encoderlab.errors import EncoderlabError
from encoderlab.signals import Killed, SignalHandlers, signal_of
from encoderlab.signals import reason as signal_reason

log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db under the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'outputs' / 'mlflow.db'}"


T = TypeVar("T")

# what two processes creating or migrating the same SQL store at once run into (the loser's DDL or
# alembic's version-table update finds the other's work already done)
_STORE_RACES = ("already exists", "Online migration expected to match one row")
STORE_LOCK_TIMEOUT_S = 600.0


def open_store(url: str, opener: Callable[[], T], attempts: int = 5) -> T:
    """`opener()` (the first connection to a SQL store, which creates and migrates its tables), safe when
    several processes open the same new store at once: a SQLite store is opened under a file lock beside
    the database (<db>.lock); other SQL stores retry the known creation races a few times."""
    if url.startswith("sqlite:///"):
        from filelock import FileLock, Timeout

        db = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)
        try:
            with lock:
                return opener()
        except Timeout as ex:
            raise EncoderlabError(
                f"Another process held the lock {lock.lock_file} of the store {db} for over "
                f"{STORE_LOCK_TIMEOUT_S:.0f} s; if no encoderlab command is running, delete the lock file."
            ) from ex
    for attempt in range(attempts):
        try:
            return opener()
        except Exception as ex:
            if attempt == attempts - 1 or not any(race in str(ex) for race in _STORE_RACES):
                raise
            log.info("Store %s was being created by another process (%s); retrying", url, type(ex).__name__)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def tracking_client(uri: str | None = None):
    """An MlflowClient on `uri` (default_tracking_uri() when None), its store created safely (open_store)."""
    from mlflow.tracking import MlflowClient

    uri = uri or default_tracking_uri()
    return open_store(uri, lambda: MlflowClient(uri))


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params from a resolved config."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(d)
    return out


def _git(*args: str, cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """Commit, dirty flag and uncommitted diff of the repo the command runs in (else encoderlab's own)."""
    for where in (Path.cwd(), Path(encoderlab.__file__).resolve().parent):
        commit = _git("rev-parse", "HEAD", cwd=where)
        if commit:
            status = _git("status", "--porcelain", "--untracked-files=no", cwd=where) or ""
            diff = _git("diff", "HEAD", cwd=where) if status.strip() else ""
            return {
                "commit": commit.strip(),
                "dirty": bool(status.strip()),
                "diff": diff or "",
                "root": str(where),
            }
    return {"commit": None, "dirty": None, "diff": "", "root": None}


def pip_freeze() -> str:
    """Installed distributions, like `pip freeze` (without spawning pip)."""
    dists = {(d.metadata["Name"] or "?"): d.version for d in importlib.metadata.distributions()}
    return "\n".join(f"{n}=={v}" for n, v in sorted(dists.items(), key=lambda kv: kv[0].lower())) + "\n"


def default_run_name(cfg: DictConfig) -> str:
    """<experiment>-<MMDD-HHMMSS>-<4 hex>[-job<N>]: unique even after seed_everything fixed `random`."""
    import secrets
    from datetime import datetime

    from hydra.core.hydra_config import HydraConfig

    name = f"{cfg.experiment_name}-{datetime.now():%m%d-%H%M%S}-{secrets.token_hex(2)}"
    if _in_multirun():
        name += f"-job{HydraConfig.get().job.num}"
    return name


def model_label(cfg: DictConfig) -> str:
    """What a run's model is, in one string: a Hub id / directory, the scratch class, or an evaluated source."""
    if "model" in cfg:
        return str(cfg.model.get("name_or_path", cfg.model.get("_target_")))
    return str(cfg.get("source"))


PARENT_RUN_ENV = "ENCODERLAB_PARENT_RUN_ID"  # set by the multirun callback for the jobs of a sweep


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    mode = HydraConfig.get().mode if HydraConfig.initialized() else None
    return mode is not None and mode.name == "MULTIRUN"


def open_experiment(client, name: str, artifact_location: str | None, tracking_uri: str) -> str:
    """The id of experiment `name`, created if missing (artifacts under ./outputs/mlartifacts for local
    stores); safe when parallel jobs race to create it."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_location
    if location is None and not tracking_uri.startswith(("http://", "https://", "databricks")):
        location = (Path.cwd() / "outputs" / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def group_choice_tags() -> dict[str, str]:
    """The config-group options this run composed (model=minilm, dataset=sst2, ...), as
    `encoderlab.choice.<group>` tags: what `encoderlab table` groups runs by when a group varies."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {
        f"encoderlab.choice.{group}": str(choice)
        for group, choice in choices.items()
        if choice is not None and not group.startswith("hydra") and "schema" not in group
    }


class ParentRun:
    """The MLflow run that groups a sweep's runs (a `train -m` grid or an Optuna study): created once (or
    found again by its tags when a study resumes), its children linked by `mlflow.parentRunId`, ended
    with the children's count per status."""

    def __init__(self, client, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.tracking_uri = tracking_uri

    @classmethod
    def open(
        cls,
        logger_cfg: DictConfig,
        experiment_name: str,
        run_name: str,
        tags: dict[str, str],
        find_by: dict[str, str] | None = None,
    ) -> ParentRun:
        """Create the parent run, or with `find_by` (tags) reopen the one a previous process created."""
        uri = logger_cfg.tracking_uri or default_tracking_uri()
        client = tracking_client(uri)
        exp_id = open_experiment(client, experiment_name, logger_cfg.artifact_location, uri)
        if find_by:
            clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in find_by.items())
            found = client.search_runs([exp_id], filter_string=clauses)
            if found:
                run = found[0]
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                return cls(client, run.info.run_id, exp_id, uri)
        base = {"encoderlab.version": encoderlab.__version__}
        commit = git_state()["commit"]
        if commit:
            base["mlflow.source.git.commit"] = commit
        run = client.create_run(exp_id, run_name=run_name[:200], tags={**base, **(find_by or {}), **tags})
        return cls(client, run.info.run_id, exp_id, uri)

    def children(self) -> list:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
            max_results=10000,
        )

    def finish(self, status: str | None = None, error: str | None = None) -> dict[str, int]:
        """Log the children's count per status and end the run: `status`, or (None) FAILED when a child
        failed or was killed, else FINISHED."""
        counts: dict[str, int] = {}
        for child in self.children():
            counts[child.info.status] = counts.get(child.info.status, 0) + 1
        for child_status, n in counts.items():
            self.client.log_metric(self.run_id, f"sweep/children_{child_status.lower()}", n)
        self.client.log_metric(self.run_id, "sweep/children", sum(counts.values()))
        if error:
            self.client.set_tag(self.run_id, "encoderlab.error", error)
        if status is None:
            failed = counts.get("FAILED", 0) + counts.get("KILLED", 0)
            status = "FAILED" if failed or error else "FINISHED"
        self.client.set_terminated(self.run_id, status)
        return counts


# tags that say how a run was started: a resumed run keeps them
_ORIGIN_TAGS = (
    "mlflow.source.name",
    "encoderlab.command",
    "encoderlab.run_dir",
    "mlflow.source.git.commit",
    "encoderlab.git_dirty",
    "mlflow.parentRunId",
)


class TrackedRun:
    """An MLflow run (or, with logger.backend=none, a local-only stand-in with the same methods)."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        command: str = "train",
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.resume_run_id = resume_run_id  # encoderlab resume: reopen this run instead of creating one
        self._resumed_metrics: dict[str, float] = {}  # its metrics' latest values when reopened
        self.command = command
        self.parent_run_id = parent_run_id
        self.extra_tags = dict(tags or {})
        self.run_dir = run_dir
        self.enabled = cfg.logger.backend == "mlflow"
        self.client = None
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self._signals: SignalHandlers | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> TrackedRun:
        self._signals = SignalHandlers().install()  # SIGTERM/SIGINT raise Killed until __exit__
        try:
            return self._open()
        except BaseException:
            self._signals.restore()
            raise

    def _open(self) -> TrackedRun:
        if not self.enabled:
            return self
        self.tracking_uri = self.cfg.logger.tracking_uri or default_tracking_uri()
        self.client = tracking_client(self.tracking_uri)
        name = self.cfg.experiment_name
        self.experiment_id = open_experiment(
            self.client, name, self.cfg.logger.artifact_location, self.tracking_uri
        )
        git = git_state()
        tags = {
            "mlflow.source.name": f"encoderlab {self.command}",
            "mlflow.source.type": "LOCAL",
            "encoderlab.version": encoderlab.__version__,
            "encoderlab.command": shlex.join(["encoderlab", self.command, *sys.argv[1:]]),
            "encoderlab.run_dir": str(self.run_dir),
            "encoderlab.dataset": self.cfg.dataset.name,
            "encoderlab.model": model_label(self.cfg),
            **{str(k): str(v) for k, v in self.cfg.logger.tags.items()},
        }
        if git["commit"]:
            tags.update(
                {"mlflow.source.git.commit": git["commit"], "encoderlab.git_dirty": str(git["dirty"]).lower()}
            )
        tags.update(group_choice_tags())
        tags.update(self.extra_tags)
        if self.parent_run_id:  # a trial of `encoderlab sweep`
            tags["mlflow.parentRunId"] = self.parent_run_id
        parent = os.environ.get(PARENT_RUN_ENV)
        if (
            parent and not self.parent_run_id and _in_multirun()
        ):  # a job of `encoderlab train -m`: a child of the sweep's parent run
            from hydra.core.hydra_config import HydraConfig

            tags.update(
                {
                    "mlflow.parentRunId": parent,
                    "encoderlab.sweep_job": str(HydraConfig.get().job.num),
                    "encoderlab.sweep_job_overrides": " ".join(HydraConfig.get().overrides.task),
                }
            )
        if self.resume_run_id:
            run = self._reopen(tags)
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=self.cfg.run_name or default_run_name(self.cfg), tags=tags
            )
        self.run_id = run.info.run_id
        log.info("MLflow run %s in experiment '%s' (%s)", self.run_id, name, self.tracking_uri)
        self.log_text(pip_freeze(), "environment/pip_freeze.txt")
        if git["diff"]:
            self.log_text(git["diff"], "environment/uncommitted.diff")
        return self

    def _reopen(self, tags: dict[str, str]):
        """The run `resume_run_id`, RUNNING again: its origin tags kept, the others refreshed, the resume
        counted (encoderlab.resumed, encoderlab.resumed_at) and the previous end's reason moved aside."""
        from datetime import datetime, timezone

        run = self.client.get_run(self.resume_run_id)
        old = run.data.tags
        self.experiment_id = run.info.experiment_id
        new = {k: v for k, v in tags.items() if k not in _ORIGIN_TAGS or k not in old}
        new["encoderlab.resumed"] = str(int(old.get("encoderlab.resumed", "0")) + 1)
        new["encoderlab.resumed_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        new["encoderlab.resumed_from"] = f"{run.info.status}: {old.get('encoderlab.error', '')}".rstrip(": ")
        if tags.get("mlflow.source.git.commit", old.get("mlflow.source.git.commit")) != old.get(
            "mlflow.source.git.commit"
        ):
            new["encoderlab.resumed_git_commit"] = tags["mlflow.source.git.commit"]
        self.client.update_run(run.info.run_id, status="RUNNING")
        if "encoderlab.error" in old:
            self.client.delete_tag(run.info.run_id, "encoderlab.error")
        for k, v in new.items():
            self.client.set_tag(run.info.run_id, k, v)
        self._resumed_metrics = dict(run.data.metrics)
        return run

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._close(exc)
        finally:
            if self._signals is not None:
                self._signals.restore()
        signum = signal_of(exc)
        if signum is not None:  # the CLI exits 128 + signum with one line naming the run
            killed = exc if isinstance(exc, Killed) else Killed(signum)
            killed.run_id, killed.run_dir = self.run_id, str(self.run_dir)
            if killed is not exc:  # Lightning's SIGTERMException is a SystemExit with code 0
                raise killed from exc
        return False

    def _close(self, exc: BaseException | None) -> None:
        if not self.enabled or self.run_id is None:
            return
        if exc is None:
            self.client.set_terminated(self.run_id, "FINISHED")
        elif type(exc).__name__ == "TrialPruned":  # optuna stopped an unpromising sweep trial
            self.client.set_tag(self.run_id, "encoderlab.trial_state", "PRUNED")
            self.client.set_terminated(self.run_id, "KILLED")
            log.info("MLflow run %s: trial pruned", self.run_id)
        else:
            signum = signal_of(exc)
            status = "KILLED" if signum or isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
            reason = signal_reason(signum) if signum else f"{type(exc).__name__}: {exc}"
            try:
                self.client.set_tag(self.run_id, "encoderlab.error", reason[:4900])
                self.log_text(reason + "\n", "error.txt")
            finally:
                self.client.set_terminated(self.run_id, status)
            log.error("MLflow run %s marked %s: %s", self.run_id, status, reason)

    # ---- logging --------------------------------------------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if self._resumed_metrics.get(k) == float(v):  # logged before the resume: no second point
                continue
            self.client.log_metric(self.run_id, k, float(v), step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, frame, artifact_file: str) -> None:
        """A DataFrame as an MLflow table artifact (shown as a table in the UI's artifact view)."""
        if self.enabled:
            self.client.log_table(self.run_id, data=frame, artifact_file=artifact_file)

    def lightning_logger(self):
        """A Lightning logger writing metrics into this run (it never ends the run itself)."""
        if not self.enabled:
            from lightning.pytorch.loggers import CSVLogger

            return CSVLogger(save_dir=str(self.run_dir), name="metrics", version="")
        from lightning.pytorch.loggers import MLFlowLogger

        class _RunOwnedMLFlowLogger(MLFlowLogger):
            def finalize(self, status: str = "success") -> None:  # TrackedRun sets the final status
                pass

        return _RunOwnedMLFlowLogger(
            experiment_name=self.cfg.experiment_name,
            tracking_uri=self.tracking_uri,
            run_id=self.run_id,
            log_model=False,
        )


def resolved_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
