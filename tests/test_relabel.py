import json

import pytest
import torch

from teddy import augment, cli, config, protocol
from teddy.io import artifacts
from teddy.pool.members import load_pool

from .conftest import BASE, TINY, evaluate_args, relabel_args, tiny_synthetic_set


def test_replayed_soft_labels_equal_teacher_on_stored_crops(tmp_path):
    cfg, d, p, s = tiny_synthetic_set(tmp_path)
    r = tmp_path / "soft"
    assert (
        cli.main(["relabel", *cfg, "--synthetic", str(s), "--pool", str(p), "--seed", "0", "--out", str(r)])
        == 0
    )
    soft = artifacts.load_soft_labels(r)
    images = torch.load(s / "synthetic.pt", weights_only=True)["images"]
    teacher = load_pool(p, "base", "cpu")[0][0]
    epochs = soft["crops"].shape[0]
    assert soft["logits"].shape == (epochs, len(images), 10) and soft["logits"].dtype == torch.float16
    views = {k: soft[k] for k in ("crops", "mix", "mix_mode")}
    assert views["mix_mode"] == "cutmix"  # the default protocol: CutMix views are what the teacher saw
    for e in range(epochs):
        with torch.no_grad():
            expected = teacher(augment.render(images, views, e, torch.arange(len(images))))
        assert torch.equal(soft["logits"][e], expected.half())
    # views differ between epochs: the soft labels are per crop, not per image
    assert not torch.equal(soft["crops"][0], soft["crops"][1])
    # the record names what it labels, and the agreement metric is the teacher's top-1 on those views
    syn = artifacts.load_synthetic(s)
    assert torch.equal(soft["labels"], syn["labels"]) and soft["synthetic_sha256"] == syn["sha256"]
    assert (soft["seed"], soft["method"], soft["ipc"]) == (0, syn["method"], syn["ipc"])
    assert (soft["mode"], soft["teacher"]) == ("precomputed", "base")
    metrics = json.loads((r / "metrics.json").read_text())
    agree = (soft["logits"].float().argmax(-1) == syn["labels"][None]).float().mean().item() * 100
    assert metrics["teacher_agreement"] == pytest.approx(agree) and metrics["views"] == epochs * len(images)


def test_draw_views_follow_the_relabel_config():
    """Per epoch: crops with the configured scale floor and flips, mixing rows for the configured mode."""
    from types import SimpleNamespace

    from teddy.stages.relabel import draw_views

    r = SimpleNamespace(crop_scale_min=0.5, flip=True, mix="cutmix", mix_alpha=1.0)
    views = draw_views(200, 3, r, torch.Generator().manual_seed(0))
    assert views["crops"].shape == (3, 200, 4) and views["mix"].shape == (3, 200, 4)
    assert views["mix_mode"] == "cutmix"
    assert (views["crops"][..., 0] < 0).any()  # flipped views
    assert ((views["crops"][..., 0].abs() * views["crops"][..., 1]) >= 0.5 - 1e-5).all()  # area ≥ 0.5
    assert not torch.equal(views["mix"][0, :, 0], torch.arange(200).float())  # partners drawn
    plain = draw_views(200, 2, SimpleNamespace(**{**vars(r), "flip": False, "mix": "none"}), torch.Generator())
    assert not (plain["crops"][..., 0] < 0).any() and (plain["mix"][..., 1] == 1).all()


def test_online_relabel_trains_like_replay(tmp_path):
    import json

    results = {}
    for mode in ("precomputed", "online"):
        cfg, d, p, s = tiny_synthetic_set(
            tmp_path, "--set", f"relabel.mode={mode}", "--set", "relabel.mix=cutmix"
        )
        r, e = tmp_path / f"soft_{mode}", tmp_path / f"eval_{mode}"
        assert (
            cli.main(["relabel", *cfg, "--synthetic", str(s), "--pool", str(p), "--seed", "0", "--out", str(r)])
            == 0
        )
        assert ("logits" in artifacts.load_soft_labels(r)) == (mode == "precomputed")
        assert (
            cli.main(
                [
                    "evaluate",
                    *cfg,
                    "--data",
                    str(d),
                    "--synthetic",
                    str(s),
                    "--soft-labels",
                    str(r),
                    "--pool",
                    str(p),
                    "--arch",
                    "convnet",
                    "--seed",
                    "0",
                    "--out",
                    str(e),
                ]
            )
            == 0
        )
        results[mode] = json.loads((e / "metrics.json").read_text())["curve"]
    # same views, same teacher: the students differ only by the fp16 rounding of stored logits
    for a, b in zip(results["precomputed"], results["online"], strict=True):
        assert abs(a["train_kl"] - b["train_kl"]) < 1e-2 * max(1.0, a["train_kl"])


def test_mixing():
    """CutMix pastes one axis-aligned box of the partner covering 1 − the kept share (λ, adjusted
    for clipping at the border); Mixup blends by λ; none leaves the view alone."""
    from teddy.method.losses import kept_fraction

    gen = torch.Generator().manual_seed(0)
    a, b = torch.zeros(32, 1, 128, 128), torch.ones(32, 1, 128, 128)
    mix = augment.sample_mix(32, "cutmix", 1.0, gen)
    out = augment.apply_mix(a, b, mix, "cutmix")
    pasted = out[:, 0] > 0.5
    for m in pasted:  # the pasted pixels are exactly the product of a row range and a column range
        rows, cols = m.any(1), m.any(0)
        assert torch.equal(m, rows[:, None] & cols[None, :])
        for line in (rows, cols):
            hit = torch.nonzero(line).flatten()
            assert len(hit) == 0 or hit[-1] - hit[0] + 1 == len(hit)  # contiguous
    share = pasted.float().mean((1, 2))
    assert torch.allclose(share, 1 - kept_fraction(mix, "cutmix"), atol=0.035)  # 128 px quantisation
    assert share.std() > 0.1 and (share > 0).sum() > 16  # boxes of many sizes were pasted
    up = augment.apply_mix(a, b, mix, "mixup")
    assert torch.allclose(up.mean((1, 2, 3)), 1 - mix[:, 1])
    none = augment.sample_mix(8, "none", 1.0, gen)
    assert torch.equal(augment.apply_mix(a[:8], b[:8], none, "none"), a[:8])


def test_curve_points_on_a_val_subset_final_on_the_whole_split(tmp_path):
    import json

    from teddy.stages import evaluate

    cfg, d, p, s = tiny_synthetic_set(
        tmp_path, "--set", "evaluate.epochs=4", "--set", "evaluate.curve_val_images=7"
    )
    r, e = tmp_path / "soft", tmp_path / "eval"
    assert (
        cli.main(["relabel", *cfg, "--synthetic", str(s), "--pool", str(p), "--seed", "0", "--out", str(r)])
        == 0
    )
    args = [
        "--data",
        str(d),
        "--synthetic",
        str(s),
        "--soft-labels",
        str(r),
        "--arch",
        "convnet",
        "--seed",
        "0",
    ]
    assert cli.main(["evaluate", *cfg, *args, "--out", str(e)]) == 0
    curve = json.loads((e / "metrics.json").read_text())["curve"]
    n_val = len(artifacts.load_cache(d)["val_y"])
    assert [c["val_images"] for c in curve] == [7, 7, 7, n_val]
    # a fixed subset: the same indices for every student, and distinct
    a, b = evaluate.curve_subset(n_val, 7), evaluate.curve_subset(n_val, 7)
    assert torch.equal(a, b) and len(set(a.tolist())) == 7
    assert evaluate.curve_subset(n_val, 0) is None and evaluate.curve_subset(n_val, n_val) is None


def test_topk_sharded_soft_labels_replay_the_teachers_top_classes(tmp_path):
    """relabel.topk + shard_epochs: files of 2 epochs holding the 3 largest logits per view (fp16);
    replay gives them back in place (−inf elsewhere), and the student trains on them."""
    import json

    cfg, d, p, s = tiny_synthetic_set(tmp_path, "--set", "evaluate.epochs=5")
    full, top = tmp_path / "full", tmp_path / "top"
    assert cli.main(["relabel", *cfg, *relabel_args(p, s), "--out", str(full)]) == 0
    extra = ["--set", "relabel.topk=3", "--set", "relabel.shard_epochs=2"]
    assert cli.main(["relabel", *cfg, *extra, *relabel_args(p, s), "--out", str(top)]) == 0
    dense, sparse = artifacts.load_soft_labels(full), artifacts.load_soft_labels(top)
    assert "logits" not in sparse and [x["start"] for x in sparse["logit_shards"]] == [0, 2, 4]
    assert torch.load(top / "soft_labels.pt", weights_only=True)["topk"] == 3  # the record says its k
    # the teacher's agreement counts every shard's views, as the inline file's does
    agreement = [json.loads((f / "metrics.json").read_text())["teacher_agreement"] for f in (full, top)]
    assert agreement[0] == pytest.approx(agreement[1])
    # top-k alone (no shard_epochs): one file of every epoch, nothing inline
    alone = tmp_path / "alone"
    assert cli.main(["relabel", *cfg, extra[0], extra[1], *relabel_args(p, s), "--out", str(alone)]) == 0
    assert [x.name for x in alone.glob("logits_e*.pt")] == ["logits_e0000-0005.pt"]
    assert sorted(x.name for x in top.glob("logits_e*.pt")) == [
        "logits_e0000-0002.pt",
        "logits_e0002-0004.pt",
        "logits_e0004-0005.pt",
    ]
    n = dense["logits"].shape[1]
    idx = torch.arange(n)
    for epoch in range(5):
        want = dense["logits"][epoch].float()
        got = sparse["replay"](epoch, idx, "cpu")
        kept = torch.isfinite(got)
        assert kept.sum(1).tolist() == [3] * n  # exactly k classes per view
        assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, want.topk(3, 1).indices, True))
        assert torch.equal(got[kept], want[kept])
    # soft_label_bytes: every file evaluate reads, inline logits included (at this size the files'
    # own overhead outweighs what top-3 saves, so no ordering is asserted)
    sparse_bytes = json.loads((top / "metrics.json").read_text())["soft_label_bytes"]
    dense_bytes = json.loads((full / "metrics.json").read_text())["soft_label_bytes"]
    assert dense_bytes == (full / "soft_labels.pt").stat().st_size
    assert sparse_bytes == sum(f.stat().st_size for f in top.glob("*.pt"))
    # a damaged shard is found when evaluate reaches it, and by teddy verify
    shard = top / "logits_e0002-0004.pt"
    shard.write_bytes(shard.read_bytes()[:-7] + b"damaged")
    assert [x.name for x, _ in artifacts.verify_tree(top)[1]] == [shard.name]
    out = tmp_path / "eval"
    args = evaluate_args(d, s, top)
    assert cli.main(["evaluate", *cfg, *args, "--out", str(out)]) == 1


def test_the_full_data_row_has_its_own_epochs_in_relabel_and_evaluate(tmp_path):
    """evaluate.full_data_epochs: the full-data set's relabel stores that many views per image and
    both its students (soft and hard labels) train that many epochs; an IPC set keeps evaluate.epochs."""
    from teddy import config

    over = ["evaluate.full_data=true", "evaluate.epochs=3", "evaluate.full_data_epochs=2"]
    over += ["evaluate.hard_label_archs=[convnet]"]
    extra = [a for o in over for a in ("--set", o)]
    cfg_obj = config.load([BASE, TINY], over)
    full = protocol.full_data_ipc(cfg_obj)
    assert protocol.student_epochs(cfg_obj, "random", full) == 2
    assert (
        protocol.student_epochs(cfg_obj, "random", 2) == 3
        and protocol.student_epochs(cfg_obj, "teddy", full) == 3
    )
    # full data at a configured IPC is random's own row: the sets' epochs
    same = config.load([BASE, TINY], [*over, f"distill.ipcs=[1, {full}]"])
    assert protocol.student_epochs(same, "random", full) == 3
    assert protocol.student_epochs(config.load([BASE, TINY], over[1:]), "random", full) == 3  # row off

    for ipc, epochs in ((full, 2), (2, 3)):
        cfg, d, p, s = tiny_synthetic_set(tmp_path / f"ipc{ipc}", *extra, ipc=ipc)
        r, e = tmp_path / f"soft{ipc}", tmp_path / f"eval{ipc}"
        relabel = ["relabel", *cfg, "--synthetic", str(s), "--pool", str(p), "--seed", "0", "--out", str(r)]
        assert cli.main(relabel) == 0
        soft = artifacts.load_soft_labels(r)
        assert soft["crops"].shape[0] == epochs and soft["logits"].shape[0] == epochs
        assert json.loads((r / "metrics.json").read_text())["views"] == epochs * len(soft["labels"])
        args = ["--data", str(d), "--synthetic", str(s), "--soft-labels", str(r), "--arch", "convnet"]
        assert cli.main(["evaluate", *cfg, *args, "--seed", "0", "--out", str(e)]) == 0
        metrics = json.loads((e / "metrics.json").read_text())
        assert metrics["epochs"] == epochs
        assert metrics["curve"][-1]["epoch"] == epochs and metrics["hard_curve"][-1]["epoch"] == epochs


def test_a_diverged_teacher_fails_relabel_not_evaluate(tmp_path, monkeypatch, capsys):
    """Logits beyond fp16's range were stored as inf and evaluate then asked to rebuild the soft
    labels, which gives the same: relabel names the diverged teacher and the fix, and writes no
    soft_labels.pt."""
    from teddy.stages import relabel

    cfg, d, p, s = tiny_synthetic_set(tmp_path)
    real = relabel.teacher_logits
    monkeypatch.setattr(relabel, "teacher_logits", lambda *a: real(*a) * 1e5)  # ~1e5-1e6: past 65504
    out = tmp_path / "soft"
    assert cli.main(["relabel", *cfg, *relabel_args(p, s), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "beyond fp16" in err and "pretrain_pool.lr" in err and "Traceback" not in err
    assert f"relabel.teacher 'base' from {p} gives logits up to" in err  # the teacher and its pool
    assert not (out / artifacts.SOFT_LABELS).exists()
    with pytest.raises(artifacts.ArtifactError, match="non-finite"):
        relabel.check_teacher_logits(torch.tensor([[[0.0, float("nan")]]]), "base", "pool")
    relabel.check_teacher_logits(torch.tensor([[[-60000.0, 60000.0]]]), "base", "pool")  # fits fp16


def test_teacher_logits_check_takes_fp16s_whole_range_and_names_the_fix():
    """Logits up to fp16's largest value (65504) are stored as they are; beyond it, or not finite
    anywhere, relabel stops with the teacher, the pool and the fix named."""
    from teddy.stages.relabel import FP16_MAX, check_teacher_logits

    check_teacher_logits(torch.tensor([[[-FP16_MAX, FP16_MAX]]]), "base", "pool")  # the edge fits
    fix = (
        "retrain the pool with a lower pretrain_pool.lr or more pretrain_pool.warmup_epochs — rebuilding "
        "the soft labels alone gives the same"
    )
    with pytest.raises(artifacts.ArtifactError) as err:
        check_teacher_logits(torch.full((1, 2, 3), float("inf")), "ensemble", "results/pool")
    assert "relabel.teacher 'ensemble' from results/pool gives non-finite logits:" in str(err.value)
    assert fix in " ".join(str(err.value).split())
    with pytest.raises(artifacts.ArtifactError) as err:
        check_teacher_logits(torch.tensor([[[0.0, 70000.0]]]), "base", "p")
    assert "gives logits up to 7e+04, beyond fp16's 65504:" in str(err.value)


def test_relabel_logs_each_epoch_and_refuses_a_pool_of_another_recipe(tmp_path, caplog, capsys):
    """Progress: one line per epoch (1/E … E/E) when run.progress_seconds is tiny; the teacher is
    checked against the config's pool recipe (a wider pool than the config's is refused)."""
    import logging

    cfg, d, p, s = tiny_synthetic_set(tmp_path)
    often = ["--set", "run.progress_seconds=0.000001"]
    with caplog.at_level(logging.INFO, logger="teddy.relabel"):
        assert cli.main(["relabel", *cfg, *often, *relabel_args(p, s), "--out", str(tmp_path / "soft")]) == 0
    epochs = protocol.student_epochs(config.load([BASE, TINY]), "random", 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("relabel random ipc2: ")]
    assert [line.split()[3] for line in lines] == [f"{e}/{epochs}" for e in range(1, epochs + 1)], lines
    metrics = json.loads((tmp_path / "soft" / "metrics.json").read_text())
    assert (metrics["method"], metrics["ipc"]) == ("random", 2)
    wider = ["--set", "pretrain_pool.width=16"]
    out = tmp_path / "other"
    assert cli.main(["relabel", *cfg, *wider, *relabel_args(p, s), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "was built by another recipe (pretrain_pool.width: 8 in the pool, 16 in this config)" in err
    assert not (out / artifacts.SOFT_LABELS).exists()
