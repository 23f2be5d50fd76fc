import pytest
import torch

from teddy import artifacts, cli, distill

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
    return artifacts.load_synthetic(out)


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
    from teddy.objectives import BNMatching
    from teddy.pool import load_pool

    cfg = config.load([BASE, TINY], ["distill.iterations=60", "distill.jitter=0", "distill.crop_scale_min=1.0"])
    pool, _ = load_pool(tmp_path / "pool", "base", "cpu")
    manifest = {"num_classes": 10, "channels": 1, "image_size": 8, "mean": [0.3], "std": [0.3]}
    batch = distill.Batch(0, (0,), tuple(range(10)))
    st = distill.new_state(distill.init_batch(manifest, cfg, None, batch, 0), cfg, "cpu")
    gen = torch.Generator().manual_seed(0)
    schedule = distill.draw_schedule(cfg, 10, lambda it, g: 0, gen, "cpu")
    st = distill.synthesize_batch(st, torch.arange(10), pool, BNMatching(cfg), schedule, cfg, gen, "cpu")
    total = st["curve"][:, 0] + cfg.distill.alpha_bn * st["curve"][:, 1]
    assert total[-5:].mean() < 0.5 * total[:5].mean()


def test_plan_batches_groups_classes():
    batches = distill.plan_batches(num_classes=5, ipc=2, classes_per_batch=2)
    assert [b.classes for b in batches] == [(0, 1), (2, 3), (4,)] * 2
    assert [b.index for b in batches] == list(range(6)) and [b.slots for b in batches] == [
        (0,),
        (0,),
        (0,),
        (1,),
        (1,),
        (1,),
    ]


def test_same_images_whatever_the_shard_count(tmp_path):
    whole = run_distill(tmp_path, "teddy", 2, "--set", "distill.classes_per_batch=4")
    d, p = tmp_path / "data", tmp_path / "pool"
    common = [
        *CFG,
        "--set",
        "distill.classes_per_batch=4",
        "--data",
        str(d),
        "--pool",
        str(p),
        "--method",
        "teddy",
        "--ipc",
        "2",
        "--seed",
        "0",
    ]
    shards = [tmp_path / f"shard{i}" for i in range(4)]
    for i, folder in enumerate(shards):  # 6 batches over 4 shards: uneven on purpose
        assert cli.main(["distill", *common, "--shard", f"{i}/4", "--out", str(folder)]) == 0
    merged = tmp_path / "merged"
    no_pool = [a for a in common if a not in ("--pool", str(p))]  # the merge job reads only the shards
    assert cli.main(["distill", *no_pool, "--merge", *map(str, shards), "--out", str(merged)]) == 0
    assert torch.equal(artifacts.load_synthetic(merged)["images"], whole["images"])
    assert torch.equal(artifacts.load_synthetic(merged)["labels"], whole["labels"])


def test_merge_with_a_missing_shard_fails(tmp_path):
    run_distill(tmp_path, "random", 1)
    common = [
        *CFG,
        "--data",
        str(tmp_path / "data"),
        "--pool",
        str(tmp_path / "pool"),
        "--method",
        "teddy",
        "--ipc",
        "2",
        "--seed",
        "0",
    ]
    assert cli.main(["distill", *common, "--shard", "0/2", "--out", str(tmp_path / "s0")]) == 0
    try:
        cli.main(["distill", *common, "--merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")])
    except RuntimeError as err:
        assert "a shard is missing" in str(err)
    else:
        raise AssertionError("merging an incomplete set must fail")


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


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, sig):
    """SIGKILL: resume from the last periodic checkpoint. SIGTERM (preemption): checkpoint now, exit 75."""
    import json
    import signal
    import subprocess
    import sys
    import time

    run_distill(tmp_path, "random", 1)  # builds data + pool
    common = [
        *CFG,
        "--set",
        "distill.iterations=300",
        "--set",
        "distill.checkpoint_every=10",
        "--data",
        str(tmp_path / "data"),
        "--pool",
        str(tmp_path / "pool"),
        "--method",
        "teddy",
        "--ipc",
        "2",
        "--seed",
        "0",
    ]
    assert cli.main(["distill", *common, "--out", str(tmp_path / "whole")]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "teddy", "distill", *common, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    assert proc.wait() == (75 if sig == "SIGTERM" else -signal.SIGKILL)
    assert (killed / "checkpoint.pt").exists() and not (killed / "synthetic.pt").exists()

    assert cli.main(["distill", *common, "--out", str(killed)]) == 0
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_batches"] + metrics["resumed_iterations"] > 0
    assert not (killed / "checkpoint.pt").exists()
    assert torch.equal(
        artifacts.load_synthetic(killed)["images"], artifacts.load_synthetic(tmp_path / "whole")["images"]
    )
