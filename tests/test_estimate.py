"""teddy estimate: work counted from the config, on the meta device, before any data exists."""

import pytest

from teddy import cli, config, estimate
from teddy.data import miniature
from teddy.workflow import resources

from .conftest import BASE, ROOT

IMAGENET = [BASE, ROOT / "config" / "experiments" / "imagenet1k.yaml"]


def rows_of(*overrides, paths=IMAGENET):
    cfg = config.load(paths, ["distill.ipcs=[10]", *overrides], check_data=False)
    rows, info = estimate.estimate(cfg)
    return {r.stage: r for r in rows}, info


def test_imagenet_counts_follow_the_config():
    rows, info = rows_of()
    assert "1,281,167 train / 50,000 val images, 1000 classes at 224 px (published size)" in info["dataset"]
    r18 = estimate.arch_cost("resnet18", estimate.models.InputSpec(1000, 3, 224, (0.5,) * 3, (0.2,) * 3), 0)
    assert r18.flops == pytest.approx(3.64e9, rel=0.02) and r18.params == 11_689_512  # torchvision's figures
    # distill: 2 optimised methods × 3 seeds × IPC 10 × 1000 classes × iterations × fwd+bwd
    assert rows["distill"].flops == pytest.approx(2 * 3 * 10 * 1000 * 1000 * 3 * r18.flops)
    assert rows["distill"].jobs == 2 * 3 * (10 + 1) + 3  # shards + merge per set; random one job
    assert rows["evaluate"].jobs == 3 * 3 * 5
    # a student's resumable state (weights, momentum, grads: 16 B/param; the largest student, ResNet-50's
    # 25.6 M) lives while its job runs
    assert rows["evaluate"].notes == ["resumable state ≤ 0.41 GB per running job, removed when it completes"]
    assert rows["evaluate"].disk_gb == pytest.approx(45 * 16 * 25_557_032 / 1e9)
    doubled, _ = rows_of("evaluate.epochs=600", "relabel.topk=null")
    assert doubled["evaluate"].flops > 1.9 * rows["evaluate"].flops
    assert doubled["relabel"].disk_gb > 20 * rows["relabel"].disk_gb  # 2 KB of fp16 logits vs 40 B top-10
    trained, _ = rows_of("pretrain_pool.checkpoint=null")
    weights, _ = rows_of("pretrain_pool.checkpoint=/models/resnet18.pth")
    assert trained["pretrain_pool"].flops - weights["pretrain_pool"].flops == pytest.approx(
        90 * 3 * r18.flops * 1_281_167
    )


def test_a_model_whose_last_maps_are_one_pixel_is_counted():
    """ResNet-18 on 8-px digits (the quickstart's students) ends in 1×1 maps: one image is no batch for
    batch norm's training statistics, so the count runs the model in eval mode (same FLOPs)."""
    digits = estimate.models.InputSpec(10, 1, 8, (0.5,), (0.2,))
    r18 = estimate.arch_cost("resnet18", digits, 0)
    assert r18.params == 11_172_810 and r18.flops > 0  # 3×3 stem, 10 classes
    rows, _ = rows_of(paths=[ROOT / "config" / "studies" / "quickstart.yaml"])
    assert rows["evaluate"].flops > 0


def test_counts_the_files_when_the_root_is_there(tmp_path, capsys):
    root = miniature.make("tiny_imagenet", tmp_path / "tiny", classes=3, train=4, val=2, size=16)
    paths = [BASE, ROOT / "config" / "experiments" / "tiny_imagenet.yaml"]
    _, info = rows_of(f"prepare_data.root={root}", "distill.ipcs=[1]", paths=paths)
    assert "12 train / 6 val images, 3 classes at 64 px (files under" in info["dataset"]
    args = ["estimate", "--config", str(BASE), "--config", str(paths[1]), "--set", "distill.ipcs=[10,50]"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert (
        "| stage | jobs | GPU-hours |" in out
        and "| **total** |" in out
        and "tiny_imagenet: 100,000 train" in out
    )


def test_runtime_zero_takes_the_slurm_limit_from_the_estimate():
    """resources.<stage>.runtime: 0 (the paper configs): twice the largest job's estimate + 10 min."""
    data = config.to_dict(config.load(IMAGENET, ["distill.ipcs=[10]"], check_data=False))
    rows = {
        r.stage: r for r in estimate.estimate(config.load(IMAGENET, ["distill.ipcs=[10]"], check_data=False))[0]
    }
    minutes = resources.stage_resources(data, "evaluate")["runtime"]
    assert minutes == pytest.approx(2 * rows["evaluate"].job_h * 60 + 10, abs=1)
    longer = config.to_dict(
        config.load(IMAGENET, ["distill.ipcs=[10]", "evaluate.epochs=600"], check_data=False)
    )
    assert resources.stage_resources(longer, "evaluate")["runtime"] - 10 == pytest.approx(
        2 * (minutes - 10), rel=0.05
    )
    faster = config.to_dict(
        config.load(IMAGENET, ["distill.ipcs=[10]", "resources.gpu_tflops=60"], check_data=False)
    )
    assert (
        resources.stage_resources(faster, "distill")["runtime"]
        < resources.stage_resources(data, "distill")["runtime"]
    )
    fixed = config.to_dict(
        config.load(IMAGENET, ["distill.ipcs=[10]", "resources.evaluate.runtime=90"], check_data=False)
    )
    assert resources.stage_resources(fixed, "evaluate")["runtime"] == 90


def test_the_full_data_row_is_counted_per_seed_with_its_own_epochs():
    """evaluate.full_data adds one relabel and one evaluation per seed (× archs) at the whole training
    set; its cost scales with evaluate.full_data_epochs, and a hard-label student doubles a student's."""
    on = ["evaluate.full_data=true"]
    rows, _ = rows_of()
    full = {k: rows_of(*on, f"evaluate.full_data_epochs={k}")[0] for k in (1, 2, 3)}
    assert full[1]["relabel"].jobs == rows["relabel"].jobs + 3
    assert full[1]["evaluate"].jobs == rows["evaluate"].jobs + 3 * 5
    for stage in ("relabel", "evaluate"):
        step = full[2][stage].flops - full[1][stage].flops
        assert step > 0 and full[3][stage].flops - full[2][stage].flops == pytest.approx(step)
    r18 = estimate.arch_cost("resnet18", estimate.models.InputSpec(1000, 3, 224, (0.5,) * 3, (0.2,) * 3), 0)
    # the hard-label student's share of one more epoch, for each of 3 seeds: the whole set (1,281
    # images per class) fwd+bwd, and one more curve point on the 50,000 val images
    step18 = 3 * (3 * r18.flops * 1281 * 1000 + r18.flops * 50_000)
    hard, _ = rows_of(*on, "evaluate.full_data_epochs=1", "evaluate.hard_label_archs=[resnet18]")
    hard2, _ = rows_of(*on, "evaluate.full_data_epochs=2", "evaluate.hard_label_archs=[resnet18]")
    gap = (hard2["evaluate"].flops - hard["evaluate"].flops) - (
        full[2]["evaluate"].flops - full[1]["evaluate"].flops
    )
    assert gap == pytest.approx(step18, rel=1e-6)


def test_the_full_data_row_is_estimated_on_its_own_students():
    everyone, _ = rows_of("evaluate.full_data=true")
    one, _ = rows_of("evaluate.full_data=true", "evaluate.full_data_archs=[resnet18]")
    assert everyone["evaluate"].jobs - one["evaluate"].jobs == 3 * 4  # 3 seeds × the 4 other students
    assert everyone["relabel"].jobs == one["relabel"].jobs
