"""Post generation: pruned, fine-tuned, BN-recalibrated members; pool selection."""

import pytest
import torch

from teddy import cli, models, prepare_data, pretrain_pool
from teddy.losses import BNStatsRecorder
from teddy.utils import load_torch

from .conftest import BASE, TINY

CFG = [
    "--config",
    str(BASE),
    "--config",
    str(TINY),
    "--set",
    "pretrain_pool.post_members=2",
    "--set",
    "pretrain_pool.recalib_images=200",
    "--set",
    "pretrain_pool.width=16",
]


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    assert cli.main(["prepare-data", *CFG, "--out", str(tmp / "data")]) == 0
    assert cli.main(["pretrain-pool", *CFG, "--data", str(tmp / "data"), "--out", str(tmp / "pool")]) == 0
    return tmp


def test_manifest_lists_prior_and_post_members(pool_dir):
    pool, entries = pretrain_pool.load_pool(pool_dir / "pool", "both", "cpu")
    assert [e["origin"] for e in entries] == ["prior", "post", "prior", "post"]
    post = [e for e in entries if e["origin"] == "post"]
    assert all(0.2 <= e["prune_ratio"] <= 0.6 for e in post)
    assert all(e["params"] < entries[0]["params"] for e in post)  # pruned: fewer parameters
    assert len(pretrain_pool.load_pool(pool_dir / "pool", "both", "cpu", size=3)[0]) == 3


def test_pruned_member_loads_weights_only_and_runs(pool_dir):
    ckpt = load_torch(pool_dir / "pool" / "post_000.pt")
    model = models.from_checkpoint(ckpt).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    base = models.from_checkpoint(load_torch(pool_dir / "pool" / "base.pt"))
    assert models.count_params(model) < models.count_params(base)


def test_recalibrated_bn_stats_equal_real_statistics(pool_dir):
    """After recalibration every BN layer caches exactly the statistics of the same real images
    (features in eval mode; BatchNorm stores the unbiased variance)."""
    data = prepare_data.load(pool_dir / "data" / "cache.pt")
    model = models.from_checkpoint(load_torch(pool_dir / "pool" / "post_001.pt")).eval()
    images = data["train_x"][:300]
    pretrain_pool.recalibrate_bn(model, images, batch=64, device="cpu")  # several batches on purpose
    rec = BNStatsRecorder(model)
    with torch.no_grad(), rec.record():
        model(images.float() / 255)
    for layer, mean, var in zip(rec.layers, rec.means, rec.vars, strict=True):
        assert torch.allclose(layer.running_mean, mean, atol=1e-5)
        ratio = layer.running_var / var.clamp_min(1e-12)
        expected = ratio.new_full(ratio.shape, ratio.median().item())
        assert torch.allclose(ratio, expected, atol=1e-3) and 1 <= ratio.median() < 1.01


@pytest.mark.parametrize("sampling", ["uniform", "round_robin", "accuracy"])
def test_distill_draws_from_post_members(pool_dir, sampling):
    import json

    out = pool_dir / f"syn_{sampling}"
    argv = [
        "distill",
        *CFG,
        "--set",
        "distill.pool=both",
        "--set",
        "distill.pool_size=3",
        "--set",
        f"distill.pool_sampling={sampling}",
        "--data",
        str(pool_dir / "data"),
        "--pool",
        str(pool_dir / "pool"),
        "--method",
        "teddy",
        "--ipc",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["pool_size"] == 3


def test_post_pool_without_post_members_fails_before_work(capsys):
    from teddy import config

    with pytest.raises(config.ConfigError, match="set pretrain_pool.post_members"):
        config.load([BASE], ["distill.pool=post"])
