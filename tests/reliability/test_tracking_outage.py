"""With the MLflow store unreachable the stage still finishes and writes its metrics; what was not
logged is kept beside its outputs, and `teddy sync-tracking` logs it once the store works."""

import json
import logging

from teddy import cli

from ..conftest import BASE, TINY


def test_unreachable_store_then_sync(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so restored after the test
    cfg = ["--config", str(BASE), "--config", str(TINY), "--set", "tracking.enabled=true"]
    cfg += ["--set", f"tracking.uri=sqlite:///{blocker}/mlflow.db"]
    out = tmp_path / "data"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["prepare-data", *cfg, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["train_count"] > 0
    pending = json.loads((out / "tracking_pending.json").read_text())
    assert "cannot be used" in caplog.text and "teddy sync-tracking" in caplog.text
    assert {m[0] for m in pending["metrics"]} >= {"wall_s", "train_count"}

    assert cli.main(["sync-tracking", str(tmp_path)]) == 1  # still down: says so, keeps the file
    assert (out / "tracking_pending.json").is_file()

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # the store is back (here: somewhere else)
    assert cli.main(["sync-tracking", str(tmp_path)]) == 0
    assert not (out / "tracking_pending.json").exists()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("teddy").experiment_id])
    assert run.info.run_name == "prepare_data" and run.info.status == "FINISHED"
    kept = {name: value for name, value, _ in pending["metrics"]}
    assert (
        run.data.metrics["train_count"] == kept["train_count"] and run.data.metrics["wall_s"] == kept["wall_s"]
    )
    assert run.data.tags["synced_later"] == "true" and run.data.params["run.dataset"] == "digits"


def test_a_store_failing_midway_keeps_the_rest(tmp_path, monkeypatch):
    from teddy import config, tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so restored after the test
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config.load([BASE, TINY], ["tracking.enabled=true", f"tracking.uri={store}"])
    with tracking.stage_run(cfg, "evaluate", {"seed": 0}, tmp_path) as tracker:
        tracker.log_metrics({"val_top1": 1.0}, step=1)
        monkeypatch.setattr(
            tracker.mlflow, "log_metrics", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
        )
        tracker.log_metrics({"val_top1": 2.0}, step=2)
        tracker.log_metrics({"val_top1": 3.0}, step=3)
    monkeypatch.undo()
    pending = json.loads((tmp_path / "tracking_pending.json").read_text())
    assert pending["metrics"] == [["val_top1", 2.0, 2], ["val_top1", 3.0, 3]]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert cli.main(["sync-tracking", str(tmp_path)]) == 0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    history = client.get_metric_history(pending["run_id"], "val_top1")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_results_moved_before_sync_keep_their_artifacts(tmp_path, monkeypatch):
    """A GPU node without the store: its results are copied elsewhere, then synced; the artifacts
    inside the stage's folder are found there (kept relative), not at the node's absolute path."""
    import shutil

    from teddy import config, tracking

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so restored after the test
    cfg = config.load([BASE, TINY], ["tracking.enabled=true", f"tracking.uri=sqlite:///{blocker}/mlflow.db"])
    node = tmp_path / "node" / "evaluate"
    node.mkdir(parents=True)
    (node / "curve.csv").write_text("epoch,top1\n1,0.5\n")
    with tracking.stage_run(cfg, "evaluate", {"seed": 0}, node) as tracker:
        tracker.log_artifact(node / "curve.csv")
    assert json.loads((node / "tracking_pending.json").read_text())["artifacts"] == ["curve.csv"]

    here = tmp_path / "copied" / "evaluate"
    shutil.copytree(node, here)
    shutil.rmtree(tmp_path / "node")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert cli.main(["sync-tracking", str(tmp_path / "copied")]) == 0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("teddy").experiment_id])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["curve.csv"]


# -- a tracking server that cannot be reached, or never answers, cannot hold a job (issue 36, 5) ------


def stage_env(uri: str) -> dict:
    import os

    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_costs_seconds_not_minutes(tmp_path):
    """Connection refused: MLflow's client would retry for minutes; the stage runs at once."""
    import subprocess
    import sys
    import time

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = [sys.executable, "-m", "teddy", "prepare-data", "--config", str(BASE), "--config", str(TINY)]
    argv += ["--set", "tracking.enabled=true", "--out", str(tmp_path / "data")]
    t0 = time.monotonic()
    done = subprocess.run(argv, env=stage_env(uri), capture_output=True, text=True, timeout=90)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    assert took < 30, f"{took:.0f} s with an unreachable tracking server"
    assert (tmp_path / "data" / "tracking_pending.json").is_file()


def test_sigterm_is_answered_while_the_server_hangs(tmp_path):
    """A server that accepts connections and never answers: the stage's first store call hangs;
    SIGTERM (SLURM's preemption) still stops the job at once with the resumable exit code."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from teddy.runtime.preemption import preemption

    cfg = ["--config", str(BASE), "--config", str(TINY)]
    assert cli.main(["prepare-data", *cfg, "--out", str(tmp_path / "data")]) == 0
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # accepts (the kernel does) and never answers
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    argv = [sys.executable, "-m", "teddy", "pretrain-pool", *cfg, "--set", "tracking.enabled=true"]
    argv += ["--data", str(tmp_path / "data"), "--member", "base", "--out", str(tmp_path / "base")]
    env = stage_env(uri) | {"MLFLOW_HTTP_REQUEST_TIMEOUT": "600"}  # the user's own bound: a long one
    job = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "base").is_dir():
            time.sleep(0.2)  # the job made its output folder: it is in the stage now
        time.sleep(2)
        job.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, _ = job.communicate(timeout=60)
        assert time.monotonic() - t0 < 15, out[-2000:]
        assert job.returncode == preemption.EXIT_CODE, out[-2000:]
    finally:
        job.kill()
        server.close()


def test_a_server_that_never_answers_costs_about_its_timeout(tmp_path):
    """Accepts connections, never answers: each request gives up after tracking.timeout_s (one
    retry), the first failure sends the rest to the pending record, and nothing retries beyond."""
    import socket
    import subprocess
    import sys
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    connections = []  # what the job asked: counted, not timed (a loaded machine moves wall time)

    def accept() -> None:
        while True:
            try:
                connections.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    argv = [sys.executable, "-m", "teddy", "prepare-data", "--config", str(BASE), "--config", str(TINY)]
    argv += ["--set", "tracking.enabled=true", "--set", "tracking.timeout_s=2", "--out", str(tmp_path / "data")]
    try:
        t0 = time.monotonic()
        done = subprocess.run(argv, env=stage_env(uri), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-2000:]
    # idle: 3 requests in ~10 s; when the experiment was retried on servers: 11 requests, 34 s
    assert len(connections) <= 4, f"{len(connections)} requests to a silent server ({took:.0f} s)"
    assert took < 90, f"{took:.0f} s with a silent tracking server and a 2 s bound"  # a hang, not a load
    assert (tmp_path / "data" / "tracking_pending.json").is_file()
