"""GPU path (marker gpu, run where CUDA exists): bf16 autocast + channels_last vs fp32."""

import pytest
import torch

from teddy import config, models
from teddy.method.objectives import BNMatching
from teddy.stages import distill

from .conftest import BASE, TINY

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_synthesis_within_tolerance_of_fp32():
    spec = models.InputSpec(10, 1, 16, (0.3,), (0.3,))
    torch.manual_seed(0)
    member = models.create_model("convnet", spec, width=32)
    with torch.no_grad():
        member.train()(torch.rand(512, 1, 16, 16))
    finals = {}
    for dtype in ("float32", "bfloat16"):
        cfg = config.load([BASE, TINY], [f"run.dtype={dtype}", "distill.iterations=100"])
        pool = [member.cuda().eval().requires_grad_(False).to(memory_format=torch.channels_last)]
        gen = torch.Generator().manual_seed(0)
        st = distill.new_state(torch.rand(10, 1, 16, 16, generator=gen), cfg, "cuda")
        schedule = distill.draw_schedule(cfg, 10, lambda it, g: 0, gen, "cuda")
        st = distill.synthesize_batch(st, torch.arange(10), pool, BNMatching(cfg), schedule, cfg, gen, "cuda")
        finals[dtype] = (st["x"].detach().float().cpu(), st["curve"][-10:].mean(0).cpu())
    # stated tolerance: final loss terms within 10 % and images within 0.05 mean absolute pixel difference
    assert torch.allclose(finals["bfloat16"][1], finals["float32"][1], rtol=0.1)
    assert (finals["bfloat16"][0] - finals["float32"][0]).abs().mean() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ddp_with_nccl_on_one_gpu(tmp_path):
    """torchrun with run.device=cuda takes the NCCL backend; world size 1 when only one GPU is there,
    so the NCCL path (process group, DDP wrapper, all-reduce) runs on any GPU node."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from teddy import cli

    from .conftest import ROOT

    procs = min(torch.cuda.device_count(), 2)
    cfg = ["--config", str(BASE), "--config", str(TINY), "--set", "run.device=cuda"]
    assert cli.main(["prepare-data", *cfg, "--out", str(tmp_path / "data")]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={procs}", "-m", "teddy", "pretrain-pool", *cfg]
    cmd += ["--data", str(tmp_path / "data"), "--member", "base", "--out", str(tmp_path / "base")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert (record["world_size"], record["backend"]) == (procs, "nccl")
