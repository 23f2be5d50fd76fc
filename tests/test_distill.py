import torch

from teddy import cli, distill

from .conftest import BASE, TINY

CFG = ["--config", str(BASE), "--config", str(TINY)]


def run_distill(tmp_path, method, ipc, *extra):
    d, p = tmp_path / "data", tmp_path / "pool"
    if not d.exists():
        assert cli.main(["prepare-data", *CFG, "--out", str(d)]) == 0
        assert cli.main(["pretrain-pool", *CFG, "--data", str(d), "--out", str(p)]) == 0
    out = tmp_path / f"{method}_{ipc}_{len(extra)}"
    argv = [
        "distill",
        *CFG,
        *extra,
        "--data",
        str(d),
        "--pool",
        str(p),
        "--method",
        method,
        "--ipc",
        str(ipc),
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return distill.load_synthetic(out)


def test_random_real_images_per_class(tmp_path):
    syn = run_distill(tmp_path, "random", 3)
    assert torch.bincount(syn["labels"]).tolist() == [3] * 10
    assert syn["images"].min() >= 0 and syn["images"].max() <= 1


def test_teddy_batches_do_not_depend_on_ipc(tmp_path):
    one = run_distill(tmp_path, "teddy", 1)
    two = run_distill(tmp_path, "teddy", 2)
    assert torch.equal(one["images"], two["images"][:10])  # slot 0 is the same batch
    assert not torch.equal(two["images"][:10], two["images"][10:])
    assert two["images"].min() >= 0 and two["images"].max() <= 1  # clipped to the valid range


def test_synthesis_lowers_the_objective(tmp_path):
    run_distill(tmp_path, "random", 1)
    from teddy import config
    from teddy.pretrain_pool import load_pool

    cfg = config.load([BASE, TINY], ["distill.iterations=60", "distill.jitter=0", "distill.crop_scale_min=1.0"])
    pool = load_pool(tmp_path / "pool", "base", "cpu")
    manifest = {"num_classes": 10, "channels": 1, "image_size": 8, "mean": [0.3], "std": [0.3]}
    x0 = distill.init_batch(manifest, cfg, None, slot_seed=0)
    _, curve = distill.synthesize_batch(x0, torch.arange(10), pool, cfg, 0, "cpu")
    total = curve[:, 0] + cfg.distill.alpha_bn * curve[:, 1]
    assert total[-5:].mean() < 0.5 * total[:5].mean()


def test_teddy_without_pool_fails_before_work(tmp_path, capsys):
    d = tmp_path / "data"
    assert cli.main(["prepare-data", *CFG, "--out", str(d)]) == 0
    argv = [
        "distill",
        *CFG,
        "--data",
        str(d),
        "--method",
        "teddy",
        "--ipc",
        "1",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == 2
    assert "pass --pool" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
