"""benchmarks/set_diversity.py: within-class spread of synthetic sets, paired against random."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from teddy import artifacts

ROOT = Path(__file__).resolve().parent.parent


def test_within_class_distance_pairs_each_method_with_the_baseline(tmp_path):
    """Two images per class: random's are 0 and 1 everywhere (distance 2 on 2×2 pixels), the other
    method's 0 and 0.5 (distance 1) at both seeds → −1 [−1, −1], ratio 0.5; a method seen at one seed
    has no interval (null, valid JSON)."""
    distill = tmp_path / "distill"
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)] * 2)
    near = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5)] * 2)
    for method, images, seeds in (("random", far, (0, 1)), ("sel", near, (0, 1)), ("once", near, (0,))):
        for seed in seeds:
            folder = distill / method / "ipc2" / f"seed{seed}"
            folder.mkdir(parents=True)
            artifacts.save_synthetic(
                images, labels, folder / artifacts.SYNTHETIC, method=method, ipc=2, seed=seed
            )
    script = ROOT / "benchmarks" / "set_diversity.py"
    argv = [
        sys.executable,
        str(script),
        "--distill",
        str(distill),
        "--ipc",
        "2",
        "--name",
        "t",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(argv, check=True, capture_output=True)
    methods = json.loads((tmp_path / "set_diversity_t.json").read_text())["methods"]
    assert methods["random"]["mean"] == pytest.approx(2.0)
    assert methods["sel"]["minus_random"] == {"mean": -1.0, "low": -1.0, "high": -1.0, "n": 2}
    assert methods["sel"]["ratio_to_random"] == pytest.approx(0.5)
    assert methods["once"]["minus_random"] == {"mean": -1.0, "low": None, "high": None, "n": 1}
    bad = subprocess.run([*argv[:4], "--ipc", "7", *argv[6:]], capture_output=True, text=True)
    assert bad.returncode == 2 and "no */ipc7/seed*/synthetic.pt" in bad.stderr
