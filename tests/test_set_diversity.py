"""benchmarks/set_diversity.py: within-class spread of synthetic sets, paired against random."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from teddy.io import artifacts
from teddy.pool import members as pool

from .conftest import tiny_synthetic_set

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "set_diversity.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import set_diversity  # noqa: E402


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
    argv = [
        sys.executable,
        str(SCRIPT),
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


def test_penultimate_is_the_input_of_the_last_linear_layer():
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    ).eval()
    x = torch.rand(5, 1, 2, 2)
    assert torch.allclose(set_diversity.penultimate(model, x, batch=2), model[:3](x))
    with pytest.raises(ValueError, match="no Linear layer"):
        set_diversity.penultimate(torch.nn.Flatten(), x)


def test_pool_measures_in_the_base_models_features(tmp_path):
    """--pool: the distance is taken between the pool base model's penultimate features, not pixels."""
    _, _, pool_dir, syn = tiny_synthetic_set(tmp_path)
    distill = tmp_path / "distill"
    shutil.copytree(syn, distill / "random" / "ipc2" / "seed0")
    argv = [sys.executable, str(SCRIPT), "--distill", str(distill), "--ipc", "2", "--name", "f"]
    subprocess.run([*argv, "--pool", str(pool_dir), "--out", str(tmp_path)], check=True, capture_output=True)
    record = json.loads((tmp_path / "set_diversity_f.json").read_text())
    assert record["measure"] == "within_class_l2_base_model_features" and record["pool"] == str(pool_dir)
    s = artifacts.load_synthetic(syn)
    base = pool.load_pool(pool_dir, "base", "cpu")[0][0]
    features = set_diversity.within_class_distance(set_diversity.penultimate(base, s["images"]), s["labels"])
    pixels = set_diversity.within_class_distance(s["images"], s["labels"])
    assert record["methods"]["random"]["mean"] == pytest.approx(features, abs=1e-4)
    assert abs(features - pixels) > 1e-3
