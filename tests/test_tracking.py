"""One MLflow store shared by concurrent jobs (what cluster jobs on a shared file system do)."""

import os
import subprocess
import sys

from .conftest import BASE, ROOT

WRITER = """
import sys
from teddy import config, tracking
cfg = config.load([sys.argv[1]], ["tracking.enabled=true", f"tracking.uri={sys.argv[2]}"])
with tracking.stage_run(cfg, "evaluate", {"seed": sys.argv[3]}) as t:
    for step in range(30):
        t.log_metrics({"val_top1": float(step)}, step=step)
"""


def test_concurrent_jobs_write_one_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env_cmd = [sys.executable, "-c", WRITER, str(BASE), uri]
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which would win over the config here
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([*env_cmd, str(seed)], cwd=ROOT, env=env) for seed in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "teddy"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_top1")) == 30
