"""MLflow run lifecycle: encoderlab owns the run, so a crash anywhere marks it FAILED with the reason."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

import encoderlab
from encoderlab.errors import EncoderlabError, TrackingIncomplete
from encoderlab.failures import RunFailed, describe_failure, quiet_log_file_errors, traceback_to_log_files
from encoderlab.signals import Killed, SignalHandlers, signal_of
from encoderlab.signals import reason as signal_reason
from encoderlab.tracking_journal import (
    Journal,
    check_server,
    configure_http,
    is_connectivity_error,
    is_http,
    probe,
    send,
    wait_and_replay,
)

log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db under the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'outputs' / 'mlflow.db'}"


T = TypeVar("T")


def redact(url: str) -> str:
    """A store URL without its password (postgresql+psycopg://user:***@host/db), for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url


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
            log.info(
                "Store %s was being created by another process (%s); retrying", redact(url), type(ex).__name__
            )
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


STALE_AFTER_S = 600.0  # logger.stale_after_s's default: a run on another host silent this long died


def logged_run(run_id: str, tracking_uri: str | None = None):
    """(client, run, uri) of an MLflow run by id; an error naming the store when it has no such run."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    client = tracking_client(uri)
    try:
        return client, client.get_run(run_id), uri
    except MlflowException as ex:
        raise EncoderlabError(
            f"No MLflow run with id {run_id} in the tracking store {uri} (another store: --tracking-uri or "
            "MLFLOW_TRACKING_URI)."
        ) from ex


def drop_tag(client, run_id: str, key: str) -> None:
    """Delete a run's tag if it has it; another process deleting it at the same instant is fine."""
    from mlflow.exceptions import MlflowException

    if key in client.get_run(run_id).data.tags:
        try:
            client.delete_tag(run_id, key)
        except MlflowException:
            if key in client.get_run(run_id).data.tags:
                raise


def tracking_client(uri: str | None = None, stale_after_s: float = STALE_AFTER_S):
    """An MlflowClient on `uri` (default_tracking_uri() when None), its store created safely (open_store);
    RUNNING runs whose process provably died are marked FAILED first (mark_stale_runs)."""
    from mlflow.tracking import MlflowClient

    uri = uri or default_tracking_uri()
    client = open_store(uri, lambda: MlflowClient(uri))
    try:
        with quiet_store_errors():
            mark_stale_runs(client, stale_after_s)
    except Exception as ex:  # bookkeeping: never the reason a command fails
        log.warning(
            "Could not check %s for runs whose process died: %s", redact(uri), " ".join(str(ex).split())[:300]
        )
    return client


# ---- process records and stale runs --------------------------------------------------------------
_quiet = threading.local()


class _StoreErrorFilter(logging.Filter):
    """MLflow's SQL store logs each database error with its traceback before raising it. encoderlab says
    what went wrong itself where a store error is expected: drop those records from the heartbeat
    thread and inside `quiet_store_errors()`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName == "encoderlab-heartbeat" or getattr(_quiet, "on", False))


def _install_store_error_filter() -> None:
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _StoreErrorFilter) for f in store_log.filters):
        store_log.addFilter(_StoreErrorFilter())


class quiet_store_errors:
    """A block whose store errors encoderlab reports itself (one line, no traceback from MLflow)."""

    def __enter__(self) -> None:
        _install_store_error_filter()
        self.previous, _quiet.on = getattr(_quiet, "on", False), True

    def __exit__(self, *exc: object) -> None:
        _quiet.on = self.previous


HOST_TAG, PID_TAG, PID_STARTED_TAG = "encoderlab.host", "encoderlab.pid", "encoderlab.pid_started"
HEARTBEAT_TAG, HEARTBEAT_S_TAG = "encoderlab.heartbeat", "encoderlab.heartbeat_s"


def process_tags(heartbeat_s: float = 0) -> dict[str, str]:
    """This process as tags: host, pid, the pid's start time (tells a reused pid apart), a first heartbeat."""
    import psutil

    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PID_STARTED_TAG: f"{psutil.Process().create_time():.2f}",
        HEARTBEAT_TAG: f"{time.time():.3f}",
        HEARTBEAT_S_TAG: str(heartbeat_s),
    }


def record_process(client, run_id: str, heartbeat_s: float = 0) -> None:
    """Record this process as the one running `run_id` (a new run, or a run reopened to resume it)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags(heartbeat_s).items()])


def _process_state(pid: int, started: float | None) -> str:
    """'alive', 'gone' (no such process, or a zombie) or 'reused' (the pid belongs to a newer process)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "gone"
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return "reused"
    except psutil.NoSuchProcess:  # ZombieProcess included
        return "gone"
    except psutil.Error:  # AccessDenied: cannot tell, so alive
        return "alive"
    return "alive"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def stale_reason(tags: dict[str, str], stale_after_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING run with these tags is provably dead, or None: on this host its process is gone (or
    its pid is another process's now); on another host its heartbeat is older than stale_after_s (and
    than 3 of its own beats). Runs without encoderlab's host tag are never judged."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if not host or not pid or not pid.isdigit():
        return None
    now = time.time() if now is None else now
    beat = _float(tags.get(HEARTBEAT_TAG))
    if beat is not None:
        from datetime import datetime

        last = f"last heartbeat {datetime.fromtimestamp(beat):%Y-%m-%d %H:%M:%S}, {now - beat:.0f} s ago"
    else:
        last = "no heartbeat recorded"
    if host == socket.gethostname():
        state = _process_state(int(pid), _float(tags.get(PID_STARTED_TAG)))
        if state == "alive":
            return None
        detail = ", now another process's" if state == "reused" else ""
        return f"process died (host {host}, pid {pid}{detail}, {last})"
    interval = _float(tags.get(HEARTBEAT_S_TAG))
    if beat is None or interval == 0:  # logger.heartbeat_s=0: silence says nothing
        return None
    limit = max(stale_after_s, 3 * (interval or 0))
    if now - beat <= limit:
        return None
    return f"process died (host {host}, pid {pid}, {last}; no heartbeat for over {limit:.0f} s)"


def _search_all(search: Callable[..., Any], **kwargs: Any) -> list:
    """Every page of an MLflow search."""
    out: list = []
    token = None
    while True:
        page = search(**kwargs, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def mark_stale_runs(client, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Mark FAILED the RUNNING runs whose process provably died (stale_reason), with the reason in
    `encoderlab.error` and the last heartbeat as end time. One search over the store's RUNNING runs."""
    experiments = _search_all(client.search_experiments, max_results=1000)
    if not experiments:
        return []
    runs = _search_all(
        client.search_runs,
        experiment_ids=[e.experiment_id for e in experiments],
        filter_string="attributes.status = 'RUNNING'",
        max_results=1000,
    )
    marked = []
    now = time.time()
    for run in runs:
        reason = stale_reason(run.data.tags, stale_after_s, now)
        if reason is None:
            continue
        beat = _float(run.data.tags.get(HEARTBEAT_TAG))
        client.set_tag(run.info.run_id, "encoderlab.error", reason)
        client.set_terminated(run.info.run_id, "FAILED", end_time=int((beat or now) * 1000))
        log.info("MLflow run %s (%s) marked FAILED: %s", run.info.run_id, run.info.run_name, reason)
        marked.append(run.info.run_id)
    return marked


class Heartbeat:
    """A daemon thread setting `encoderlab.heartbeat` (unix seconds) on a run every `interval_s`: one
    set_tag per beat; a failed call is logged at debug and tried again at the next beat."""

    def __init__(self, client, run_id: str, interval_s: float, paused=lambda: False) -> None:
        self.client, self.run_id, self.interval_s = client, run_id, float(interval_s)
        self.paused = paused  # e.g. while the tracking server is away: a beat would only wait on it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self.interval_s > 0:
            _install_store_error_filter()
            self._thread = threading.Thread(target=self._beat, name="encoderlab-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.paused():
                continue
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
            except Exception as ex:
                log.debug("Heartbeat of run %s not recorded: %s", self.run_id, ex)

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)  # a beat stuck on a slow server must not hold up the exit
            self._thread = None


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params from a resolved config."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(d)
    return out


# config keys that say where and how a run ran, not what it trained (paths, timestamps, names, runtime
# knobs): logged as `encoderlab.config.<key>` tags, so that the params compared across runs are the
# hyperparameters. The logged config/config.yaml keeps every key.
BOOKKEEPING_KEYS = (
    "output_dir",
    "run_name",
    "num_threads",
    "trainer.enable_progress_bar",
    "dataset.cache_dir",
    "dataset.num_workers",
)
BOOKKEEPING_PREFIXES = ("logger.", "hydra.")
BOOKKEEPING_SUFFIXES = (".dirpath",)  # checkpoint folders
CONFIG_TAG = "encoderlab.config."


def is_bookkeeping(key: str) -> bool:
    """Whether a flattened config key is bookkeeping (a tag), not a hyperparameter (a param)."""
    return (
        key in BOOKKEEPING_KEYS or key.startswith(BOOKKEEPING_PREFIXES) or key.endswith(BOOKKEEPING_SUFFIXES)
    )


def split_config(flat: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A flattened config as (params, tags): bookkeeping keys become `encoderlab.config.<key>` tags."""
    params = {k: v for k, v in flat.items() if not is_bookkeeping(k)}
    tags = {f"{CONFIG_TAG}{k}": v[:5000] for k, v in flat.items() if is_bookkeeping(k)}
    return params, tags


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
    """<experiment>-<MMDD-HHMMSS>-<4 hex>[-fold<i>][-job<N>]: unique even after seed_everything fixed
    `random`; -fold<i> with dataset.cv (cross-validation)."""
    import secrets
    from datetime import datetime

    from hydra.core.hydra_config import HydraConfig

    name = f"{cfg.experiment_name}-{datetime.now():%m%d-%H%M%S}-{secrets.token_hex(2)}"
    cv = OmegaConf.select(cfg, "dataset.cv")
    if cv is not None and cv.get("folds") is not None:
        name += f"-fold{cv.fold}"
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


# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and a new experiment opens
# on the GenAI traces overview; "custom_model_development" ("Machine learning") opens the runs table
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """A run's page (or the experiment's runs table) in the MLflow UI of a tracking server, in its
    "Model training" view (MLflow 3.17's UI opens on the GenAI view unless the URL or the switch says so)."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def open_experiment(client, name: str, artifact_location: str | None, tracking_uri: str) -> str:
    """The id of experiment `name`, created if missing (artifacts under ./outputs/mlartifacts for local
    stores) as a training experiment (EXPERIMENT_KIND_TAG); safe when parallel jobs race to create it.
    An existing experiment without a kind gets it; a kind set by a user is kept."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = artifact_location
        if location is None and not tracking_uri.startswith(("http://", "https://", "databricks")):
            location = (Path.cwd() / "outputs" / "mlartifacts").as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
            )
        except MlflowException:  # another job created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
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
        self.heartbeat: Heartbeat | None = None
        self.heartbeat_s = 30.0

    def _own(self, heartbeat_s: float) -> None:
        """Record this process as the parent run's and keep its heartbeat."""
        self.stop_heartbeat()
        self.heartbeat_s = heartbeat_s
        record_process(self.client, self.run_id, heartbeat_s)
        self.heartbeat = Heartbeat(self.client, self.run_id, heartbeat_s).start()

    def adopt(self) -> bool:
        """While this process still logs children into the run: take it over (RUNNING again, this process
        recorded with its heartbeat) when it ended FAILED or KILLED because the process that owned it
        died or was killed, e.g. one of a study's workers on several machines. True when it did."""
        run = self.client.get_run(self.run_id)
        if run.info.status not in ("FAILED", "KILLED"):
            return False
        self.client.update_run(self.run_id, status="RUNNING")
        drop_tag(self.client, self.run_id, "encoderlab.error")
        self._own(self.heartbeat_s)
        log.info("MLflow parent run %s taken over (it was %s)", self.run_id, run.info.status)
        return True

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
        heartbeat_s = logger_cfg.get("heartbeat_s", 30)
        client = tracking_client(uri, logger_cfg.get("stale_after_s", STALE_AFTER_S))
        exp_id = open_experiment(client, experiment_name, logger_cfg.artifact_location, uri)
        if find_by:
            clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in find_by.items())
            found = client.search_runs([exp_id], filter_string=clauses)
            if found:
                run = found[0]
                parent = cls(client, run.info.run_id, exp_id, uri)
                parent.heartbeat_s = heartbeat_s
                # a sweep's worker processes reopen the run their (living) sweep process owns: leave it
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                    parent._own(heartbeat_s)
                elif HOST_TAG not in run.data.tags:
                    parent._own(heartbeat_s)
                return parent
        base = {"encoderlab.version": encoderlab.__version__}
        commit = git_state()["commit"]
        if commit:
            base["mlflow.source.git.commit"] = commit
        run = client.create_run(exp_id, run_name=run_name[:200], tags={**base, **(find_by or {}), **tags})
        parent = cls(client, run.info.run_id, exp_id, uri)
        parent._own(heartbeat_s)
        return parent

    def stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    def children(self) -> list:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
            max_results=10000,
        )

    def finish(self, status: str | None = None, error: str | None = None) -> dict[str, int]:
        """Log the children's count per status and end the run: `status`, or (None) FAILED when a child
        failed or was killed, else FINISHED."""
        self.stop_heartbeat()
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
    """An MLflow run (or, with logger.backend=none and in the followers of a distributed fit, a stand-in
    with the same methods that tracks nothing)."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        command: str = "train",
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
        follower: bool = False,
    ) -> None:
        self.cfg = cfg
        self.follower = follower  # rank > 0 of a distributed fit: rank 0 tracks the run
        self.resume_run_id = resume_run_id  # encoderlab resume: reopen this run instead of creating one
        self._resumed_points: dict[str, set[tuple[int, float]]] = {}  # (step, value) logged before a resume
        self.command = command
        self.parent_run_id = parent_run_id
        self.extra_tags = dict(tags or {})
        self.run_dir = run_dir
        self.enabled = cfg.logger.backend == "mlflow" and not follower
        self.client = None
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self._signals: SignalHandlers | None = None
        self._heartbeat: Heartbeat | None = None
        self._journal = None  # tracking_journal.Journal once the run exists on an http(s) server
        self._offline_since: float | None = None  # wall time the server went away; None while online
        self._server_back = threading.Event()  # set by the watcher thread when /health answers again
        self._watcher: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> TrackedRun:
        quiet_log_file_errors()  # a full disk: one line about the log file, not a traceback per record
        self._signals = SignalHandlers().install()  # SIGTERM/SIGINT raise Killed until __exit__
        try:
            return self._open()
        except BaseException as ex:
            try:
                failure = self._end(ex)  # the run was created, then e.g. logging its environment failed
            finally:
                self._signals.restore()
            if failure is not None:
                raise RunFailed(failure) from ex
            raise

    def _open(self) -> TrackedRun:
        if not self.enabled:
            return self
        try:
            return self._create_run()
        except EncoderlabError:
            raise
        except Exception as ex:  # the server passed the health check, then failed to create the run
            if not (is_http(self.tracking_uri) and type(ex).__module__.startswith(("mlflow", "requests"))):
                raise
            detail = " ".join(str(ex).split())[:300]
            raise EncoderlabError(
                f"The MLflow tracking server {self.tracking_uri} failed to create the run ({detail}). Check "
                "that it is an MLflow server and running, and that logger.tracking_uri (or "
                "$MLFLOW_TRACKING_URI) names it. Nothing was trained or logged."
            ) from ex

    def _create_run(self) -> TrackedRun:
        self.tracking_uri = self.cfg.logger.tracking_uri or default_tracking_uri()
        if is_http(self.tracking_uri):  # fail in seconds, before any data or model work
            configure_http(self.cfg.logger)
            check_server(self.tracking_uri, self._setting("connect_timeout_s", 5.0))
        self.client = tracking_client(self.tracking_uri, self.cfg.logger.get("stale_after_s", STALE_AFTER_S))
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
        heartbeat_s = self.cfg.logger.get("heartbeat_s", 30)
        record_process(self.client, self.run_id, heartbeat_s)  # what tells a dead run from a live one
        self._heartbeat = Heartbeat(self.client, self.run_id, heartbeat_s, lambda: self.offline).start()
        log.info("MLflow run %s in experiment '%s' (%s)", self.run_id, name, self.tracking_uri)
        if is_http(self.tracking_uri):
            log.info("MLflow UI: %s", ui_url(self.tracking_uri, self.experiment_id, self.run_id))
        if is_http(self.tracking_uri):  # a server can go away mid-run: calls it misses are journaled
            self._journal = Journal(self.run_dir)
            self._journal.write_run(self.tracking_uri, self.run_id, self.experiment_id)
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
        drop_tag(self.client, run.info.run_id, "encoderlab.error")
        for k, v in new.items():
            self.client.set_tag(run.info.run_id, k, v)
        self._resumed_points = {
            key: {(m.step, m.value) for m in self.client.get_metric_history(run.info.run_id, key)}
            for key in run.data.metrics
        }
        return run

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            failure = self._end(exc)
        finally:
            if self._signals is not None:
                self._signals.restore()
        signum = signal_of(exc)
        if signum is not None:  # the CLI exits 128 + signum with one line naming the run
            killed = exc if isinstance(exc, Killed) else Killed(signum)
            killed.run_id, killed.run_dir = self.run_id, str(self.run_dir)
            if killed is not exc:  # Lightning's SIGTERMException is a SystemExit with code 0
                raise killed from exc
        if failure is not None:  # the CLI prints the one paragraph; the traceback is in the log file
            raise RunFailed(failure) from exc
        return False

    def _end(self, exc: BaseException | None) -> str | None:
        """Stop the heartbeat and close the run; returns the message of a disk-full, out-of-memory or
        tracking failure (failures.describe_failure), else None. With such a failure, a store that
        cannot be written either (the same full disk, the server gone) is said once, not raised."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        failure = None
        if exc is not None:
            failure = describe_failure(exc, self.cfg, self.run_dir, self.tracking_uri)
            if isinstance(exc, Exception):
                files = traceback_to_log_files(exc)
                if failure is not None and files:
                    failure += f" The traceback is in {files[0]}."
        if failure is None:
            self._close(exc)
            return None
        try:
            with quiet_store_errors():  # the same full disk or dead server: said once, below
                self._close(exc, failure)
        except Exception as ex:
            root = ex
            while root.__cause__ is not None:  # e.g. sqlite3's "database or disk is full"
                root = root.__cause__
            log.warning(
                "MLflow run %s could not be marked FAILED (%s: %s); the next encoderlab command that "
                "opens the store marks it once this process has ended",
                self.run_id,
                type(root).__name__,
                " ".join(str(root).split())[:200],
            )
        return failure

    def _close(self, exc: BaseException | None, failure: str | None = None) -> None:
        if not self.enabled or self.run_id is None:
            return
        if exc is None:
            self._call({"op": "terminate", "status": "FINISHED", "end_time": _now_ms()})
        elif type(exc).__name__ == "TrialPruned":  # optuna stopped an unpromising sweep trial
            self.set_tags({"encoderlab.trial_state": "PRUNED"})
            self._call({"op": "terminate", "status": "KILLED", "end_time": _now_ms()})
            log.info("MLflow run %s: trial pruned", self.run_id)
        else:
            signum = signal_of(exc)
            status = "KILLED" if signum or isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
            reason = signal_reason(signum) if signum else failure or f"{type(exc).__name__}: {exc}"
            try:
                self.set_tags({"encoderlab.error": reason[:4900]})
                self.log_text(reason + "\n", "error.txt")
            finally:
                self._call({"op": "terminate", "status": status, "end_time": _now_ms()})
            log.error("MLflow run %s marked %s: %s", self.run_id, status, reason)
        self._final_sync(exc)

    def _final_sync(self, exc: BaseException | None) -> None:
        """Send what the journal still holds, waiting up to logger.final_sync_timeout_s for the server;
        what is left is reported with how to sync it (TrackingIncomplete when the run itself succeeded)."""
        if self._journal is None or not self._journal.pending():
            self._offline_since = None  # stops the watcher
            return
        self._offline_since = None  # the final wait probes by itself
        timeout = self._setting("final_sync_timeout_s", 60.0)
        if signal_of(exc) is not None:  # a preempted job has seconds left before SIGKILL
            timeout = min(timeout, 5.0)
        log.warning(
            "Tracking server %s is away: waiting up to %g s to send the journaled calls",
            self.tracking_uri,
            timeout,
        )
        every = min(self._setting("retry_interval_s", 15.0), 2.0)
        if wait_and_replay(
            self._journal, self.client, self.run_id, self.tracking_uri, time.monotonic() + timeout, every
        ):
            log.info("Tracking server %s is back: the run's journaled calls were sent", self.tracking_uri)
            return
        left = self._journal.pending_counts()
        message = (
            f"the tracking server {self.tracking_uri} did not come back within "
            f"logger.final_sync_timeout_s={timeout:g} s: MLflow run {self.run_id} has not received "
            f"{left.describe()}. They are kept in {self._journal.pending_path}; when the server is back, "
            f"send them with: encoderlab sync {self.run_dir}"
        )
        if exc is None:
            raise TrackingIncomplete(
                f"The {self.command} run finished and its files are in {self.run_dir}, but {message} (exit code "
                f"{TrackingIncomplete.exit_code}: trained, tracking incomplete)."
            )
        log.error("Also, %s", message)

    # ---- outage handling ------------------------------------------------------------------------
    def _setting(self, key: str, default: float) -> float:
        value = self.cfg.logger.get(key) if "logger" in self.cfg else None
        return float(default if value is None else value)

    @property
    def offline(self) -> bool:
        """Whether the tracking server is away (calls are being journaled): a heartbeat skips its beat."""
        return self._offline_since is not None

    def _call(self, entry: dict) -> None:
        """One tracking call: sent now; or, while the server is away (or when it fails to reach it),
        journaled in the run directory for a later replay. Other errors raise as MLflow's do."""
        if self._journal is None:
            send(self.client, self.run_id, entry)
            return
        if self.offline and not self._reconnect():
            self._journal.append(entry)
            return
        try:
            send(self.client, self.run_id, entry)
        except Exception as ex:
            if not is_connectivity_error(ex):
                raise
            self._go_offline(ex)
            self._journal.append(entry)

    def _go_offline(self, ex: BaseException) -> None:
        if self._offline_since is None:
            self._offline_since = time.time()
            log.warning(
                "Tracking server %s unreachable (%s): training goes on; tracking calls are kept in %s and "
                "sent when the server answers again (checked every %g s)",
                self.tracking_uri,
                " ".join(str(ex).split())[:200],
                self._journal.pending_path,
                self._setting("retry_interval_s", 15.0),
            )
        if self._watcher is None or not self._watcher.is_alive():
            self._server_back.clear()
            self._watcher = threading.Thread(
                target=self._watch, name="encoderlab-tracking-probe", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        """Probe the server every logger.retry_interval_s in the background (a server that does not answer
        at all costs the probe's timeout, which training must not wait for) until it answers."""
        interval, timeout = self._setting("retry_interval_s", 15.0), self._setting("connect_timeout_s", 5.0)
        while self.offline:
            time.sleep(interval)
            if self.offline and probe(self.tracking_uri, timeout) is None:
                self._server_back.set()
                return

    def _reconnect(self) -> bool:
        """While offline: once the watcher found the server back, replay the journal in order. True when
        the run is online again with nothing pending."""
        if not self._server_back.is_set():
            return False
        self._server_back.clear()
        try:
            sent = self._journal.replay(self.client, self.run_id)
        except Exception as ex:
            if not is_connectivity_error(ex):
                raise
            self._go_offline(ex)
            return False
        log.info(
            "Tracking server %s is back after %.0f s: sent %s",
            self.tracking_uri,
            time.time() - (self._offline_since or time.time()),
            sent.describe(),
        )
        self._offline_since = None
        return True

    # ---- logging --------------------------------------------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        if self.enabled:
            self._call({"op": "params", "params": {k[:250]: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled and metrics:
            at = step or 0
            values = {
                k: float(v)
                for k, v in metrics.items()
                if (at, float(v)) not in self._resumed_points.get(k, ())  # logged before a resume: once
            }
            if values:
                self._call({"op": "metrics", "metrics": values, "step": step, "timestamp": _now_ms()})

    def log_inputs(self, datasets: list[dict]) -> None:
        """Dataset inputs of the run (data.inputs.split_inputs: name, digest, source, schema, profile and
        the split as context), shown in the UI's Dataset column."""
        if self.enabled and datasets:
            self._call({"op": "inputs", "datasets": datasets})

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled and tags:
            self._call({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._call({"op": "artifact", "local": str(Path(path).resolve()), "artifact_path": artifact_path})

    def register_model(self, name: str, artifact_path: str) -> None:
        """Register the run's MLflow model at `artifact_path` as the next version of `name`."""
        if self.enabled:
            self._call({"op": "register", "name": name, "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self._call({"op": "text", "text": text, "artifact_file": artifact_file})

    def log_table(self, frame, artifact_file: str) -> None:
        """A DataFrame as an MLflow table artifact (shown as a table in the UI's artifact view)."""
        if self.enabled:
            self._call({"op": "table", "frame": frame, "artifact_file": artifact_file})

    def lightning_logger(self):
        """A Lightning logger writing metrics into this run through its tracking calls (it never ends
        the run itself); a follower's writes nothing."""
        if not self.enabled and not self.follower:
            from lightning.pytorch.loggers import CSVLogger

            return CSVLogger(save_dir=str(self.run_dir), name="metrics", version="")
        from encoderlab.run_logger import RunLogger

        return RunLogger(self)


def _now_ms() -> int:
    return int(time.time() * 1000)


def resolved_config(cfg: DictConfig) -> dict:
    """The config with its interpolations resolved, except `${bundled:...}`: a bundled file's absolute
    path is this installation's, so the logged config keeps the name that resolves on any other."""
    return _keep_bundled(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg))


def _keep_bundled(resolved: Any, raw: Any) -> Any:
    if isinstance(raw, str) and raw.startswith("${bundled:"):
        return raw
    if isinstance(resolved, dict) and isinstance(raw, dict):
        return {k: _keep_bundled(v, raw.get(k)) for k, v in resolved.items()}
    if isinstance(resolved, list) and isinstance(raw, list) and len(resolved) == len(raw):
        return [_keep_bundled(v, r) for v, r in zip(resolved, raw, strict=True)]
    return resolved
