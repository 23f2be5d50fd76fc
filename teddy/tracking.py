"""MLflow mirroring: one run per stage execution. Tracking off → a no-op tracker; results and
metrics files never depend on it. The URI comes from config or MLFLOW_TRACKING_URI (never flags)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from teddy.config import to_dict
from teddy.io.files import first_line, read_json, write_json
from teddy.runtime.preemption import CallAbandoned, preemption

log = logging.getLogger(__name__)


class NullTracker:
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def set_tags(self, tags: Mapping[str, object]) -> None:
        pass

    def log_dataset(self, manifest_path: Path) -> None:
        pass

    def log_table(self, frame, name: str) -> None:
        pass


PENDING = "tracking_pending.json"  # what could not reach the store, beside the stage's outputs


class PendingTracker(NullTracker):
    """Keeps what could not be logged (the store unreachable, locked, its disk full) so that
    ``teddy sync-tracking`` can log it once the store is back; the stage itself goes on."""

    failed = None  # nothing to fail: it only keeps

    def __init__(self, record: dict):
        self.record = {**record, "metrics": [], "artifacts": []}

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.record["metrics"] += [[k, float(v), step] for k, v in metrics.items()]

    def log_artifact(self, path: str | Path) -> None:
        self.record["artifacts"].append(str(Path(path).resolve()))

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self.record["tags"] |= {k: str(v) for k, v in tags.items()}

    def save(self, folder: Path) -> Path:
        """Artifacts inside ``folder`` are kept relative to it, so that the results can be moved
        (copied back from a GPU node, say) before ``teddy sync-tracking`` runs."""

        root = Path(folder).resolve()
        kept = [Path(a) for a in self.record["artifacts"]]
        artifacts = [str(a.relative_to(root)) if a.is_relative_to(root) else str(a) for a in kept]
        write_json({**self.record, "artifacts": artifacts}, folder / PENDING)
        return folder / PENDING


class MlflowTracker(NullTracker):
    """Logs to the active MLflow run; after the first failure everything goes to ``pending``."""

    def __init__(self, mlflow, pending: PendingTracker):
        self.mlflow, self.pending, self.failed = mlflow, pending, None

    def _call(self, log_call, keep_call) -> None:
        if self.failed is None:
            try:
                with store_call("logging to MLflow"):
                    log_call()
                return
            except (Exception, CallAbandoned) as err:  # noqa: BLE001 - any store error: keep the rest for later
                self.failed = err
                log.warning(
                    "MLflow store stopped answering (%s): the rest of this run is kept for later",
                    first_line(err),
                )
        keep_call()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._call(
            lambda: self.mlflow.log_metrics(values, step=step), lambda: self.pending.log_metrics(values, step)
        )

    def log_artifact(self, path: str | Path) -> None:
        self._call(lambda: self.mlflow.log_artifact(str(path)), lambda: self.pending.log_artifact(path))

    def set_tags(self, tags: Mapping[str, object]) -> None:
        plain = {k: str(v) for k, v in tags.items()}
        self._call(lambda: self.mlflow.set_tags(plain), lambda: self.pending.set_tags(plain))

    def log_table(self, frame, name: str) -> None:
        self._call(lambda: self.mlflow.log_table(frame, artifact_file=name), lambda: None)

    def log_dataset(self, manifest_path: Path) -> None:
        if Path(manifest_path).is_file():
            self._call(lambda: dataset_input(self.mlflow, Path(manifest_path)), lambda: None)


def resolve_uri(uri: str) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path becomes absolute (shared by all jobs)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def flatten(d: Mapping, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, name + ".")
        else:
            out[name] = str(value)
    return out


def _set_experiment(mlflow, name: str, uri: str) -> None:
    """Concurrent jobs on one sqlite file may race to create the experiment: retried there. A
    server is asked once (its client already retries within tracking.timeout_s)."""
    attempts = 5 if uri.startswith("sqlite:") else 1
    for attempt in range(attempts):
        try:
            mlflow.set_experiment(name)
            return
        except Exception:  # noqa: BLE001 - retried, then re-raised
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise first use of a sqlite store across processes: MLflow creates its tables and runs
    schema migrations on first connection, and concurrent jobs racing there fail
    ('table _alembic_tmp_latest_metrics already exists'). Other stores need no lock."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    import fcntl

    lock_path = Path(uri[len(prefix) :] + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_call(what: str):
    """Around every call that reaches the store: a stop signal abandons it at once (the stage keeps
    what was not logged and stops as preemption asks), whatever the call's own timeout."""
    return preemption.abandonable(what)


def bound_requests(timeout_s: float) -> None:
    """MLflow's HTTP client retries a refused or silent server for minutes by default (7 retries,
    backoff factor 2, 120 s per request): bound each request by ``timeout_s`` with one short retry,
    unless the user set MLflow's own variables."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def probe(uri: str, timeout_s: float) -> None:
    """Raise OSError at once when an http(s) tracking server cannot be reached (closed port, unknown
    host, no route) instead of letting every call find out through its retries."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout_s):
        pass


def init_store(uri: str, experiment: str, timeout_s: float = 10.0):
    """Create the store and the experiment once (the workflow calls this before submitting jobs);
    an unreachable server fails within ``timeout_s``."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    bound_requests(timeout_s)
    uri = resolve_uri(uri)
    try:
        probe(uri, timeout_s)
    except OSError as err:
        raise OSError(f"tracking server {uri} unreachable ({first_line(err)})") from None
    import mlflow

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which would then win over the config of every
    # later stage run in this process (tests, notebooks calling cli.main): keep the caller's environment
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    with _store_lock(uri):
        _set_experiment(mlflow, experiment, uri)

    return mlflow


PARENT_ENV = "TEDDY_MLFLOW_PARENT_RUN"  # the pipeline invocation's run; every stage run nests under it
LONG_STAGES = ("pretrain_pool", "distill", "relabel", "evaluate")  # MLflow system metrics on these


def run_name(stage: str, selection: Mapping[str, object]) -> str:
    """What the run is, at a glance: ``evaluate teddy ipc10 resnet18 s0``, ``distill teddy ipc10 s0
    shard 1/4``, ``pretrain_pool post:1``."""
    parts = [stage]
    for key, fmt in (("method", "{}"), ("ipc", "ipc{}"), ("arch", "{}"), ("seed", "s{}"), ("member", "{}")):
        if selection.get(key) is not None:
            parts.append(fmt.format(selection[key]))
    if selection.get("shard") is not None:
        i, n = selection["shard"]
        parts.append(f"shard {i}/{n}")
    return " ".join(parts)


def job_start_ms() -> int:
    """When this process started: a run covers the job (interpreter and imports included)."""
    try:
        import psutil

        return int(psutil.Process().create_time() * 1000)
    except Exception:  # noqa: BLE001 - no psutil or no /proc: the run starts now
        return int(time.time() * 1000)


def dataset_input(mlflow, manifest_path: Path) -> None:
    """The prepared dataset as the run's MLflow dataset input (name, source, digest of its files)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    manifest = read_json(manifest_path)
    digest = manifest.get("cache_sha256") or manifest.get("index_sha256") or ""
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(manifest.get("root") or str(manifest_path.parent.resolve()))
    mlflow.log_input(MetaDataset(source, name=manifest["dataset"], digest=digest[:12]), context="real images")


def open_pipeline_run(cfg_data: Mapping, command: str, studies: list[str] | None = None) -> str | None:
    """The parent run of one pipeline invocation (Snakemake's onstart), named and tagged with its
    ``studies`` (default: the config's); its id goes to the jobs through the environment. None when
    tracking is off or the store is unreachable."""
    if not cfg_data["tracking"]["enabled"]:
        return None
    t = cfg_data["tracking"]
    try:
        mlflow = init_store(t["uri"], t["experiment"], t["timeout_s"])
        client = mlflow.MlflowClient(resolve_uri(cfg_data["tracking"]["uri"]))
        experiment = client.get_experiment_by_name(cfg_data["tracking"]["experiment"])
        study = ",".join(studies or [cfg_data["study"]["name"]])
        tags = {"stage": "pipeline", "study": study, "dataset": cfg_data["run"]["dataset"], "command": command}
        name = f"pipeline {study} {cfg_data['run']['dataset']} {time.strftime('%Y-%m-%d %H:%M')}"
        run = client.create_run(experiment.experiment_id, run_name=name, tags=tags)
    except Exception as err:  # noqa: BLE001 - the stages keep their own fallback
        log.warning("MLflow: no pipeline run (%s); stage runs will not be grouped", first_line(err))
        return None
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def close_pipeline_run(cfg_data: Mapping, status: str) -> None:
    run_id = os.environ.get(PARENT_ENV)
    if not run_id or not cfg_data["tracking"]["enabled"]:
        return
    try:
        import mlflow

        mlflow.MlflowClient(resolve_uri(cfg_data["tracking"]["uri"])).set_terminated(run_id, status)
    except Exception as err:  # noqa: BLE001
        log.warning("MLflow: the pipeline run %s stays open (%s)", run_id, first_line(err))


@contextlib.contextmanager
def stage_run(
    cfg,
    stage: str,
    tags: Mapping[str, object],
    out: Path | None = None,
    name: str | None = None,
):
    """Yield a tracker for one stage execution, named for what it is (:func:`run_name`), nested
    under the pipeline's run when there is one, covering the job since its process started, with
    the dataset as input and system metrics on long stages. If the store cannot be
    reached, or stops answering, the stage still finishes; what was not logged is written to
    ``out``/tracking_pending.json and a warning says so (``teddy sync-tracking`` logs it later)."""
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    uri = resolve_uri(cfg.tracking.uri)
    name = name or stage
    record = {"uri": uri, "experiment": cfg.tracking.experiment, "run_name": name}
    record |= {"tags": {k: str(v) for k, v in tags.items()}, "params": flatten(to_dict(cfg))}
    pending = PendingTracker(record)
    tracker = pending
    try:
        with store_call("opening the MLflow run"):
            _open_run(cfg, stage, record, name, pending)
        tracker = MlflowTracker(_mlflow(), pending)
    except (Exception, CallAbandoned) as err:  # noqa: BLE001 - unreachable, locked, full: the stage goes on
        log.warning("MLflow store %s cannot be used (%s): this run is kept for later", uri, first_line(err))
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        if "run_id" in pending.record:  # a run was created (even if logging its params failed)
            try:
                with store_call("closing the MLflow run"):
                    _mlflow().end_run(status)
            except (Exception, CallAbandoned) as err:  # noqa: BLE001
                tracker.failed = tracker.failed or err
        if tracker is pending or tracker.failed is not None:
            where = pending.save(out) if out is not None else "nowhere (no output folder)"
            log.warning(
                "not logged to MLflow: kept in %s; run `teddy sync-tracking <results>` once %s works",
                where,
                uri,
            )


def _mlflow():
    import mlflow  # imported by init_store first (the telemetry switch is set before the import)

    return mlflow


def _open_run(cfg, stage: str, record: dict, name: str, pending: PendingTracker) -> None:
    """Start this stage's MLflow run (nested under the pipeline's run) and log its params."""
    mlflow = init_store(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.timeout_s)
    client = mlflow.MlflowClient(record["uri"])
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    run_tags = dict(record["tags"])
    parent = os.environ.get(PARENT_ENV)
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment.experiment_id, start_time=job_start_ms(), tags=run_tags, run_name=name)
    pending.record["run_id"] = run.info.run_id
    mlflow.start_run(run_id=run.info.run_id, log_system_metrics=stage in LONG_STAGES)
    mlflow.log_params(record["params"])


def sync_pending(path: Path) -> str:
    """Log one tracking_pending.json to its store (MLFLOW_TRACKING_URI wins), then remove it."""
    import time as _time

    from mlflow.entities import Metric, Param, RunTag

    rec = read_json(path)
    mlflow = init_store(rec["uri"], rec["experiment"])
    client = mlflow.MlflowClient()
    run_id = rec.get("run_id")
    try:
        client.get_run(run_id) if run_id else None
    except Exception:  # noqa: BLE001 - the run never reached this store
        run_id = None
    if run_id is None:
        experiment = client.get_experiment_by_name(rec["experiment"])
        run_id = client.create_run(
            experiment.experiment_id, run_name=rec["run_name"], tags=rec["tags"]
        ).info.run_id
        params = [Param(k, v[:6000]) for k, v in rec["params"].items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
    now = int(_time.time() * 1000)
    metrics = [Metric(k, v, now, step or 0) for k, v, step in rec["metrics"]]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    client.log_batch(
        run_id, tags=[RunTag(k, v) for k, v in rec["tags"].items()] + [RunTag("synced_later", "true")]
    )
    for artifact in rec["artifacts"]:
        file = path.parent / artifact  # relative: beside the pending file; absolute: as written
        if file.is_file():
            client.log_artifact(run_id, str(file))
    client.set_terminated(run_id, "FINISHED")
    path.unlink()
    return run_id
