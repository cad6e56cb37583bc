"""Tracking outages: the start-up check of a tracking server, MLflow's HTTP limits from `logger.*`, and the
local journal of a run's tracking calls that failed while the server was away (`<run dir>/tracking/`),
replayed in order when it is back, at the end of the run, or by `encoderlab sync <run dir>`.

The journal is append-only (`pending.jsonl`, one call a line); `sent` holds how many of its lines reached
the server, so a replay resumes where the last one stopped and never sends a line twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

JOURNAL_DIR = "tracking"  # in a run directory
RUN_FILE = "run.json"  # the run's tracking URI and run id, written when the run is created
PENDING_FILE = "pending.jsonl"
SENT_FILE = "sent"
REJECTED_FILE = "rejected.jsonl"

# logger.* key -> MLflow's environment variable (set only when the user has not set it)
HTTP_ENV = {
    "request_timeout_s": "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "max_retries": "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "backoff_factor": "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
}


def is_http(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(("http://", "https://"))


def configure_http(logger_cfg: Any) -> None:
    """Bound MLflow's own HTTP timeout, retries and back-off for this process from logger.* (MLflow reads
    the variables at each request; a value the user exported wins)."""
    for key, var in HTTP_ENV.items():
        value = logger_cfg.get(key) if hasattr(logger_cfg, "get") else None
        if value is not None and var not in os.environ:
            os.environ[var] = str(int(value))


def probe(uri: str, timeout: float) -> str | None:
    """None when the server at `uri` answers its /health endpoint; else what went wrong, in words."""
    import requests

    try:
        res = requests.get(f"{uri.rstrip('/')}/health", timeout=(timeout, timeout))
    except requests.Timeout:
        return "no answer (timed out)"
    except requests.RequestException as ex:
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(ex))
        return errno.group(1).strip().lower() if errno else f"{type(ex).__name__}: {_short(ex)}"
    if res.ok or res.status_code in (401, 403):  # 401/403: an auth proxy; MLflow's client has the creds
        return None
    return f"HTTP {res.status_code}, where an MLflow server answers 200"


def check_server(uri: str, timeout: float) -> None:
    """Raise EncoderlabError naming the URI unless the tracking server answers within `timeout` s."""
    problem = probe(uri, timeout)
    if problem is not None:
        raise EncoderlabError(
            f"The MLflow tracking server {uri} is not reachable ({uri.rstrip('/')}/health, {timeout:g} s "
            f"timeout: {problem}). Check that "
            "the server is running and reachable from this machine, and that logger.tracking_uri (or "
            "$MLFLOW_TRACKING_URI) names it; logger.backend=none trains without tracking. Nothing was "
            "trained or logged."
        )


def preflight(cfg: Any) -> None:
    """The start-up check of `cfg`'s tracking server (http(s) URIs only), as TrackedRun does it."""
    logger = cfg.logger
    uri = logger.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if logger.backend == "mlflow" and is_http(uri):
        check_server(uri, float(logger.connect_timeout_s))


def _short(ex: BaseException) -> str:
    text = " ".join(str(ex).split())
    return text if len(text) <= 200 else text[:200] + "..."


def is_connectivity_error(ex: BaseException) -> bool:
    """A tracking call failed because the server is away or broken (connection refused or reset, timeout,
    5xx after MLflow's retries), not because the call was wrong (a bad param is a 4xx)."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    seen: set[int] = set()
    err: BaseException | None = ex
    transport = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.RetryError,
        requests.exceptions.ChunkedEncodingError,
        ConnectionError,
        TimeoutError,
    )
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, transport):
            return True
        if isinstance(err, requests.HTTPError) and err.response is not None:
            return err.response.status_code >= 500
        if isinstance(err, RestException):  # the server answered with an MLflow error
            return err.get_http_status_code() >= 500
        if isinstance(err, MlflowException):  # MLflow's wrapper of a transport failure or a non-JSON 5xx
            text = err.message
            if text.startswith("API request to") and (
                "failed with exception" in text or "failed with timeout" in text or "error code 5" in text
            ):
                return True
        err = err.__cause__ or err.__context__
    return False


# ---- journal entries -------------------------------------------------------------------------------
# {"op": "metrics", "metrics": {k: v}, "step": s, "timestamp": ms}
# {"op": "params", "params": {k: v}}           {"op": "tags", "tags": {k: v}}
# {"op": "artifact", "local": path, "artifact_path": p}    (a file or a directory)
# {"op": "table", "local": parquet, "artifact_file": f}     {"op": "terminate", "status": s, "end_time": ms}
# {"op": "register", "name": registered model, "artifact_path": the run's MLflow model}
# {"op": "inputs", "datasets": [{name, digest, source_type, source, schema, profile, context}]}


def send(client, run_id: str, entry: dict) -> None:
    """One journal entry (or a live call in the same shape) to the tracking server."""
    from mlflow.entities import Metric, Param, RunTag

    op = entry["op"]
    if op == "metrics":
        ts, step = entry["timestamp"], entry.get("step") or 0
        items = [Metric(k, float(v), ts, step) for k, v in entry["metrics"].items()]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i : i + 1000])
    elif op == "params":
        items = [Param(k, v) for k, v in entry["params"].items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
    elif op == "artifact":
        path = Path(entry["local"])
        if not path.exists():
            raise FileNotFoundError(f"{path} (journaled as artifact {entry.get('artifact_path')}) is gone")
        if path.is_dir():
            client.log_artifacts(run_id, str(path), entry.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(path), entry.get("artifact_path"))
    elif op == "text":
        client.log_text(run_id, entry["text"], entry["artifact_file"])
    elif op == "table":
        import pandas as pd

        frame = entry["frame"] if "frame" in entry else pd.read_parquet(entry["local"])
        client.log_table(run_id, data=frame, artifact_file=entry["artifact_file"])
    elif op == "register":
        register(client, run_id, entry["name"], entry["artifact_path"])
    elif op == "inputs":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        fields = ("name", "digest", "source_type", "source", "schema", "profile")
        inputs = [
            DatasetInput(
                Dataset(**{k: d.get(k) for k in fields}),
                [InputTag("mlflow.data.context", d["context"])] if d.get("context") else [],
            )
            for d in entry["datasets"]
        ]
        _log_inputs(client, run_id, inputs)
    elif op == "terminate":
        client.set_terminated(run_id, entry["status"], end_time=entry.get("end_time"))
    else:
        raise ValueError(f"unknown journal entry {op!r}")


def _log_inputs(client, run_id: str, inputs: list, attempts: int = 5) -> None:
    """client.log_inputs, again when another run of the experiment inserted the same dataset (name,
    digest) between the store's lookup and its insert: parallel runs on one dataset race there, on SQLite
    and on a server's database alike. The failed call is rolled back whole; the retry finds the dataset."""
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as ex:
            text = str(ex)
            duplicate = "datasets" in text and ("UNIQUE constraint" in text or "duplicate key" in text)
            if not duplicate or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def register(client, run_id: str, name: str, artifact_path: str) -> str:
    """A new version of registered model `name` (created if missing) from the run's model artifact;
    the run is tagged encoderlab.registered_model=<name>/<version>. Returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as ex:
        if ex.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id).version
    client.set_tag(run_id, "encoderlab.registered_model", f"{name}/{version}")
    return str(version)


@dataclass
class Counts:
    """What a set of journal entries holds, for messages: metric values, params, tags, artifacts, status."""

    metrics: int = 0
    params: int = 0
    tags: int = 0
    artifacts: int = 0
    inputs: int = 0
    status: str | None = None
    missing: list[str] = field(default_factory=list)

    def add(self, entry: dict) -> None:
        op = entry["op"]
        if op == "metrics":
            self.metrics += len(entry["metrics"])
        elif op == "params":
            self.params += len(entry["params"])
        elif op == "tags":
            self.tags += len(entry["tags"])
        elif op in ("artifact", "table", "text"):
            self.artifacts += 1
        elif op == "register":
            self.tags += 1
        elif op == "inputs":
            self.inputs += len(entry["datasets"])
        elif op == "terminate":
            self.status = entry["status"]

    @property
    def empty(self) -> bool:
        return not (self.metrics or self.params or self.tags or self.artifacts or self.inputs or self.status)

    def describe(self) -> str:
        parts = [
            f"{self.metrics} metric values",
            f"{self.params} params",
            f"{self.tags} tags",
            f"{self.artifacts} artifacts",
        ]
        if self.inputs:
            parts.append(f"{self.inputs} dataset inputs")
        if self.status:
            parts.append(f"the final status {self.status}")
        return ", ".join(parts)


class Journal:
    """The tracking calls of one run that have not reached the server yet (`<run dir>/tracking/`)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / JOURNAL_DIR
        self.pending_path = self.dir / PENDING_FILE
        self.sent_path = self.dir / SENT_FILE

    # ---- the run it belongs to
    def write_run(self, tracking_uri: str, run_id: str, experiment_id: str | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"tracking_uri": tracking_uri, "run_id": run_id, "experiment_id": experiment_id}
        (self.dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")

    def read_run(self) -> dict:
        path = self.dir / RUN_FILE
        if not path.is_file():
            raise EncoderlabError(
                f"{self.dir.parent} is not an encoderlab run directory with a tracking record "
                f"({JOURNAL_DIR}/{RUN_FILE} is missing): pass the run directory that `encoderlab train` "
                "printed (outputs/runs/<date>/<time>-<name>)."
            )
        return json.loads(path.read_text())

    # ---- entries
    def append(self, entry: dict) -> None:
        """Journal one call; text and tables become files under tracking/files/ (JSON holds no frames)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = dict(entry)
        if entry["op"] == "text":
            local = self.dir / "files" / entry["artifact_file"]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(entry.pop("text"))
            folder = os.path.dirname(entry.pop("artifact_file")) or None
            entry = {"op": "artifact", "local": str(local), "artifact_path": folder}
        elif entry["op"] == "table":
            local = self.dir / "files" / f"{entry['artifact_file']}.parquet"
            local.parent.mkdir(parents=True, exist_ok=True)
            entry.pop("frame").to_parquet(local)
            entry["local"] = str(local)
        with self.pending_path.open("a") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def entries(self) -> list[dict]:
        if not self.pending_path.is_file():
            return []
        return [json.loads(line) for line in self.pending_path.read_text().splitlines() if line.strip()]

    def sent(self) -> int:
        try:
            return int(self.sent_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _mark_sent(self, n: int) -> None:
        tmp = self.sent_path.with_suffix(".tmp")
        tmp.write_text(f"{n}\n")
        os.replace(tmp, self.sent_path)

    def pending(self) -> list[dict]:
        return self.entries()[self.sent() :]

    def pending_counts(self) -> Counts:
        counts = Counts()
        for entry in self.pending():
            counts.add(entry)
        return counts

    def replay(self, client, run_id: str, connectivity=is_connectivity_error) -> Counts:
        """Send the pending entries in order, each once. A connectivity error stops the replay (raised: the
        rest stays pending); an entry the server rejects for another reason (a bad value, a file that is
        gone) is set aside in rejected.jsonl with the reason and the replay goes on."""
        from filelock import FileLock

        sent = Counts()
        with FileLock(str(self.dir / "journal.lock"), timeout=600):
            entries, done = self.entries(), self.sent()
            for i in range(done, len(entries)):
                try:
                    send(client, run_id, entries[i])
                except Exception as ex:
                    if connectivity(ex):
                        raise
                    log.error(
                        "Tracking: the server rejected a journaled %s: %s", entries[i]["op"], _short(ex)
                    )
                    with (self.dir / REJECTED_FILE).open("a") as f:
                        f.write(json.dumps({**entries[i], "error": _short(ex)}) + "\n")
                    sent.missing.append(entries[i]["op"])
                else:
                    sent.add(entries[i])
                self._mark_sent(i + 1)
        return sent


def sync_run_dir(
    run_dir: Path, tracking_uri: str | None = None, timeout: float = 10.0
) -> tuple[dict, Counts]:
    """`encoderlab sync`: replay a run directory's journal to its tracking server (or `tracking_uri`).
    Returns the run record (with the URI used) and what was sent."""
    journal = Journal(run_dir)
    record = journal.read_run()
    uri = tracking_uri or record["tracking_uri"]
    record["tracking_uri"] = uri
    if not journal.pending():
        return record, Counts()
    if is_http(uri):
        check_server(uri, timeout)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        client.get_run(record["run_id"])  # a wrong server must not consume the journal as "rejected"
    except Exception as ex:
        if is_connectivity_error(ex):
            raise EncoderlabError(f"The tracking server {uri} failed to answer: {_short(ex)}") from ex
        raise EncoderlabError(
            f"MLflow run {record['run_id']} is not in the tracking store {uri} ({_short(ex)}): pass the "
            "server the run was created on with --tracking-uri. Nothing was sent."
        ) from ex
    try:
        sent = journal.replay(client, record["run_id"])
    except Exception as ex:
        if not is_connectivity_error(ex):
            raise
        left = journal.pending_counts()
        raise EncoderlabError(
            f"The tracking server {uri} went away during the sync ({_short(ex)}); still not sent: "
            f"{left.describe()}. Run `encoderlab sync {run_dir}` again when it is back."
        ) from ex
    return record, sent


def wait_and_replay(journal: Journal, client, run_id: str, uri: str, deadline: float, every: float) -> bool:
    """Probe the server until `deadline` (monotonic), replaying the journal when it answers; True when
    nothing is left pending."""
    while journal.pending():
        if probe(uri, min(5.0, max(0.5, deadline - time.monotonic()))) is None:
            try:
                journal.replay(client, run_id)
                continue
            except Exception as ex:
                if not is_connectivity_error(ex):
                    raise
        if time.monotonic() + every > deadline:
            return False
        time.sleep(every)
    return True
