"""MLflow mirroring: one run per stage execution. Tracking off → a no-op tracker; results and
metrics files never depend on it. The URI comes from config or MLFLOW_TRACKING_URI (never flags)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

from teddy.config import to_dict


class NullTracker:
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def set_tags(self, tags: Mapping[str, object]) -> None:
        pass


class MlflowTracker(NullTracker):
    def __init__(self, mlflow):
        self.mlflow = mlflow

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self.mlflow.log_artifact(str(path))

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in tags.items()})


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


def _set_experiment(mlflow, name: str) -> None:
    for attempt in range(5):  # concurrent jobs may race to create the experiment
        try:
            mlflow.set_experiment(name)
            return
        except Exception:  # noqa: BLE001 - retried, then re-raised
            if attempt == 4:
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


def init_store(uri: str, experiment: str):
    """Create the store and the experiment once (the workflow calls this before submitting jobs)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        _set_experiment(mlflow, experiment)
    return mlflow


@contextlib.contextmanager
def stage_run(cfg, stage: str, tags: Mapping[str, object]):
    """Yield a tracker for one stage execution (run name = stage name)."""
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    mlflow = init_store(cfg.tracking.uri, cfg.tracking.experiment)
    with mlflow.start_run(run_name=stage, tags={k: str(v) for k, v in tags.items()}):
        mlflow.log_params(flatten(to_dict(cfg)))
        yield MlflowTracker(mlflow)
