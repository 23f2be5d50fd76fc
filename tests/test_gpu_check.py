"""The prepared GPU check (benchmarks/gpu_check.py, `make gpu-check`) runs end to end on CPU with
smoke sizes, so a lent GPU session does not spend its minutes finding a broken script."""

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# the smoke run once, on one worker, for the tests that read it (make test: --dist loadscope keeps a
# module on one worker; xdist_group/loadgroup does not group under pytest 9.2 + xdist 3.8)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget", "900", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1000)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_every_part_runs_on_cpu(smoke):
    out, result = smoke
    assert {n: p["status"] for n, p in result["parts"].items()} == dict.fromkeys(
        ("gpu_tests", "bench_distill", "bench_evaluate", "bench_peers", "synthesis", "pipeline"), "ok"
    )
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (cpu)")
    assert json.loads((out / "gpu_check_distill.json").read_text())["device"] == "cpu"


def test_gpu_tests_are_collected_and_skip_without_cuda(smoke):
    import torch

    tests = smoke[1]["parts"]["gpu_tests"]["tests"]
    ran = "passed" if torch.cuda.is_available() else "skipped"  # the gpu tests need CUDA, not --device
    assert tests["tests"] >= 2 and tests[ran] == tests["tests"], tests


def test_figures_are_measured(smoke):
    parts = smoke[1]["parts"]
    assert parts["bench_distill"]["figures"]["overhead_vs_fwd_bwd"] > -1
    assert parts["bench_evaluate"]["figures"]["throughput_images_per_s"] > 0
    assert parts["bench_peers"]["figures"]["speedup_median"]["32px"] > 0
    assert parts["bench_peers"]["figures"]["agreement_max_rel"] < 1e-5
    assert parts["synthesis"]["figures"]["32px"]["images_per_s"] > 0
    walls = parts["pipeline"]["stage_wall_s"]
    assert set(walls) == {"prepare_data", "pretrain_pool", "distill", "relabel", "evaluate", "report"}
    assert all(w > 0 for w in walls.values())


def test_a_part_over_budget_is_killed_and_the_rest_skipped(tmp_path):
    """--budget smaller than a part's: nothing starts that cannot finish, and the JSON says why."""
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget", "30", "--out", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert all(p["status"] == "skipped" and "budget" in p["reason"] for p in parts.values())


def test_run_part_kills_an_overrunning_command(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    record = gpu_check.run_part([sys.executable, "-c", "import time; time.sleep(60)"], 1, tmp_path / "log")
    assert record["status"] == "timed_out" and record["wall_s"] < 10
