import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from teddy import cli
from teddy.io import artifacts
from teddy.method import init
from teddy.stages import distill

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
    from teddy.method.objectives import BNMatching
    from teddy.pool.members import load_pool

    cfg = config.load([BASE, TINY], ["distill.iterations=60", "distill.jitter=0", "distill.crop_scale_min=1.0"])
    pool, _ = load_pool(tmp_path / "pool", "base", "cpu")
    manifest = {"num_classes": 10, "channels": 1, "image_size": 8, "mean": [0.3], "std": [0.3]}
    batch = distill.Batch(0, (0,), tuple(range(10)))
    st = distill.new_state(init.init_batch(manifest, cfg, None, batch, 0), cfg, "cpu")
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
    # the report follows the merged set to the pool its shards read (the pool's time, the teacher)
    assert json.loads((merged / "metrics.json").read_text())["pool_dir"] == str(p)


def test_merge_with_a_missing_shard_fails(tmp_path, capsys):
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
    capsys.readouterr()
    code = cli.main(["distill", *common, "--merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()  # one line, not a traceback (issue 36, 8)
    assert code == 1 and len(err.splitlines()) == 1 and "a shard is missing" in err, err
    assert not (tmp_path / "m" / "synthetic.pt").exists()


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


def _source(n_per_class: int = 20, classes: int = 3):
    from teddy.data.source import ArraySource

    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    tensors = {"train_x": x, "train_y": y, "val_x": x[:classes], "val_y": y[:classes]}
    return ArraySource({"num_classes": classes}, tensors)


def test_candidates_are_disjoint_across_slots_and_independent_of_batching():
    source = _source()
    per_slot = {}
    for slots in (1, 2, 3):
        for batch in distill.plan_batches(3, ipc=3, classes_per_batch=2, slots_per_batch=slots):
            idx = init.candidates(source, batch, ipc=3, per_image=4, seed=7)
            assert idx.shape == (len(batch.labels), 4)
            assert torch.equal(source.labels("train")[idx], batch.labels[:, None].expand(-1, 4))
            for row, slot, c in zip(
                idx, [s for s in batch.slots for _ in batch.classes], batch.labels.tolist(), strict=True
            ):
                assert (
                    per_slot.setdefault((slot, c), row.tolist()) == row.tolist()
                )  # same whatever the grouping
    for c in range(3):
        picked = [i for s in range(3) for i in per_slot[(s, c)]]
        assert len(picked) == len(set(picked)) == 12  # no candidate serves two slots of a class
    # a class too small for ipc × per_image gives every slot what it can (20 // 3 = 6)
    batch = distill.plan_batches(3, ipc=3, classes_per_batch=None)[0]
    assert init.candidates(source, batch, ipc=3, per_image=50, seed=7).shape == (3, 6)


def _brightness_case():
    """Two rows of four constant candidates (levels 0.3, 0.9, 0.1, 0.6) and a teacher whose class-1
    logit grows with brightness: for label 1 the brightest is the easiest, for label 0 the darkest,
    whatever the crops."""
    from teddy import config

    levels = torch.tensor([0.3, 0.9, 0.1, 0.6])
    images = levels.view(1, 4, 1, 1, 1).expand(2, 4, 1, 6, 6).contiguous()

    def teacher(x):
        b = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(b), 10 * (b - 0.5)], dim=1)

    return config.load([BASE, TINY], []), images, teacher


def test_teacher_choice_picks_the_lowest_cross_entropy():
    cfg, images, teacher = _brightness_case()
    labels = torch.tensor([1, 0])
    pick = init.teacher_choice(teacher, images, labels, 3, cfg, torch.Generator(), "cpu", [0, 0])
    assert pick.tolist() == [1, 2]


def test_teacher_choice_takes_the_asked_rank_of_each_row():
    """ranks[i] picks row i's candidate at that place in the easiest-first order."""
    cfg, images, teacher = _brightness_case()
    labels, gen = torch.tensor([1, 0]), torch.Generator()
    assert init.teacher_choice(teacher, images, labels, 2, cfg, gen, "cpu", [1, 3]).tolist() == [3, 1]
    assert init.teacher_choice(teacher, images, labels, 2, cfg, gen, "cpu", [3, 2]).tolist() == [2, 3]


def test_stratified_pick_spreads_the_slots_over_the_ranks():
    assert [init.pick_rank(s, 50, 16, "easiest", 1.0) for s in range(50)] == [0] * 50
    assert init.pick_rank(0, 1, 16, "stratified", 1.0) == 0  # one image per class: the easiest
    ranks = [init.pick_rank(s, 50, 16, "stratified", 1.0) for s in range(50)]
    assert ranks == sorted(ranks) and set(ranks) == set(range(16))  # every rank, easiest to hardest
    assert max(ranks.count(r) for r in range(16)) - min(ranks.count(r) for r in range(16)) <= 1
    half = [init.pick_rank(s, 10, 16, "stratified", 0.5) for s in range(10)]
    assert half == [0, 0, 1, 2, 3, 4, 4, 5, 6, 7]  # the easier half only
    assert [init.pick_rank(s, 3, 2, "stratified", 1.0) for s in range(3)] == [0, 0, 1]  # n < ipc


def test_stratified_init_keeps_slot_zero_and_takes_harder_images_later(tmp_path):
    common = [
        "--set",
        "distill.init=teacher",
        "--set",
        "distill.iterations=0",
        "--set",
        "distill.init_candidates=4",
    ]
    easy = run_distill(tmp_path, "teddy", 3, *common)
    strat = run_distill(tmp_path, "teddy", 3, *common, "--set", "distill.init_pick=stratified")
    assert torch.equal(easy["labels"], strat["labels"])
    slot = torch.arange(len(easy["labels"])) // 10  # slot-major: slot 0 is the first 10 images
    assert torch.equal(easy["images"][slot == 0], strat["images"][slot == 0])
    differ = (easy["images"] != strat["images"]).flatten(1).any(1)
    assert differ[slot > 0].float().mean() > 0.5  # ranks 1 and 2 of 4, not the easiest


@pytest.mark.parametrize("init", ["teacher", "real"])
def test_real_inits_keep_distinct_real_training_images(tmp_path, init):
    syn = run_distill(tmp_path, "teddy", 3, "--set", f"distill.init={init}", "--set", "distill.iterations=0")
    from teddy.data.source import open_source
    from teddy.train import to_unit

    source = open_source(tmp_path / "data")
    train = to_unit(source.images("train", torch.arange(source.count("train"))))
    flat = train.flatten(1)
    match = (syn["images"].flatten(1)[:, None, :] == flat[None]).all(-1)  # (set, train)
    assert match.any(1).all()  # every image is a training image, untouched
    rows = match.float().argmax(1)
    assert len(set(rows.tolist())) == len(rows)  # no image picked twice
    assert torch.equal(source.labels("train")[rows], syn["labels"])  # of its own class


def test_slots_per_batch_puts_several_ipc_slots_in_one_batch(tmp_path):
    one = run_distill(tmp_path, "teddy", 3, "--set", "distill.slots_per_batch=2")
    assert torch.bincount(one["labels"]).tolist() == [3] * 10
    batches = distill.plan_batches(10, ipc=3, classes_per_batch=None, slots_per_batch=2)
    assert [b.slots for b in batches] == [(0, 1), (2,)]
    assert batches[0].labels.tolist() == list(range(10)) * 2
    from teddy import config  # the stage's plan takes the config's slots_per_batch

    cfg = config.load([BASE, TINY], ["distill.slots_per_batch=2", "distill.classes_per_batch=null"])
    assert [b.slots for b in distill.batches_of(cfg, 10, 3)] == [(0, 1), (2,)]


@pytest.mark.parametrize(("matching", "term"), [("taylor", "taylor"), ("cosine", "grad_cos")])
def test_real_batch_matchings_run_through_distill_and_lower_their_loss(tmp_path, matching, term):
    extra = ["--set", f"distill.matching={matching}", "--set", "distill.iterations=30"]
    extra += ["--set", "distill.jitter=0", "--set", "distill.crop_scale_min=1.0"]
    syn = run_distill(tmp_path, "teddy", 1, *extra)
    out = next(p for p in tmp_path.iterdir() if (p / "metrics.json").exists() and p.name.startswith("teddy"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == {"taylor": "TaylorMatching", "cosine": "CosineMatching"}[matching]
    curve = artifacts.load_batches(out)[0]["curve"][:, 0]
    assert curve[-5:].mean() < curve[:5].mean()  # the objective it names is what it optimises
    assert syn["images"].shape[0] == 10


def test_taylor_matching_is_the_first_order_term_on_the_batch_classes():
    """TaylorMatching = −ηK ⟨∇θ CE(real of the batch's classes), ∇θ CE(x̃)⟩, computed here by hand
    on a linear model (∇W CE = (softmax − onehot)ᵀ x / n)."""
    from types import SimpleNamespace

    from teddy.method.objectives import TaylorMatching

    source = _source(n_per_class=20, classes=3)
    cfg = SimpleNamespace(distill=SimpleNamespace(real_batch=5, unroll_steps=4, inner_lr=0.1))
    obj = TaylorMatching(cfg, source, "cpu")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(2, 1, 4, 4)
    labels = torch.tensor([2, 0])
    loss, _ = obj(model, x, labels, torch.Generator().manual_seed(3))
    x_real, y_real = obj.real(torch.tensor([0, 2]), torch.Generator().manual_seed(3))
    assert set(y_real.tolist()) == {0, 2}

    expected = -0.1 * 4 * (_linear_grads(model, x_real, y_real) * _linear_grads(model, x, labels)).sum()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_class_conditional_bn_term_by_hand():
    """distill.class_bn: with a BN layer right on the pixels, class c's target is the mean / biased
    variance of its real images' pixels, and the term is the class-mean of
    w (|μ_syn,c − μ_c| + |σ²_syn,c − σ²_c|) (one channel: the norms are absolute values)."""
    from types import SimpleNamespace

    from teddy.method.objectives import BNMatching

    source = _source(n_per_class=5, classes=3)
    d = SimpleNamespace(alpha_bn=1.0, first_bn_weight=10.0, class_bn=0.5, class_stat_images=100)
    obj = BNMatching(SimpleNamespace(distill=d), source, "cpu")
    assert obj.names == ("ce", "bn", "class_bn")
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    labels = torch.tensor([0, 2, 0, 2])
    # each class's synthetic pixels near its own real pixels (class c's real images hold 5c … 5c + 4):
    # matching a class against another class's images would show as a large gap
    x = (labels.view(-1, 1, 1, 1) * 5 + 4 * torch.rand(4, 1, 4, 4)) / 255
    loss, terms = obj(model, x, labels, torch.Generator())
    train = source.images("train", torch.arange(15)).float() / 255
    expected = []
    for c in (0, 2):
        real, syn = train[source.labels("train") == c], x[labels == c]
        mean_gap = (syn.mean() - real.mean()).abs()
        var_gap = (syn.var(unbiased=False) - real.var(unbiased=False)).abs()
        expected.append(10.0 * (mean_gap + var_gap))
    assert torch.allclose(terms[2], torch.stack(expected).mean(), atol=1e-5)
    assert torch.allclose(loss, terms[0] + 1.0 * (terms[1] + 0.5 * terms[2]), atol=1e-5)


def test_class_bn_runs_through_distill_and_lowers_its_term(tmp_path):
    extra = ["--set", "distill.class_bn=1.0", "--set", "distill.iterations=40", "--set", "distill.jitter=0"]
    run_distill(tmp_path, "teddy", 1, *extra)
    out = next(p for p in tmp_path.iterdir() if p.name.startswith("teddy"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "final_loss_class_bn" in metrics
    curve = artifacts.load_batches(out)[0]["curve"][:, 2]
    assert curve[-5:].mean() < curve[:5].mean()


def test_unrolled_runs_through_distill_and_lowers_the_outer_loss(tmp_path):
    extra = ["--set", "distill.iterations=30", "--set", "distill.unroll_steps=2", "--set", "distill.jitter=0"]
    extra += ["--set", "distill.crop_scale_min=1.0", "--set", "distill.inner_lr=0.1"]
    run_distill(tmp_path, "unrolled", 1, *extra)
    out = next(p for p in tmp_path.iterdir() if p.name.startswith("unrolled"))
    assert json.loads((out / "metrics.json").read_text())["objective"] == "Unrolled"
    curve = artifacts.load_batches(out)[0]["curve"][:, 0]  # real-batch CE after the inner steps
    assert curve[-5:].mean() < curve[:5].mean()


def _linear_grads(model, inputs, y):
    """∇(W, b) CE of a Flatten + Linear model, flattened: ∇W = (softmax − onehot)ᵀ x / n, ∇b = Σ."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    flat = inputs.flatten(1)
    err = (torch.softmax(flat @ w.T + b, 1) - torch.nn.functional.one_hot(y, 3)) / len(y)
    return torch.cat([(err.T @ flat).flatten(), err.sum(0)])


def test_cosine_matching_is_one_minus_the_gradient_cosine_per_synthetic_image():
    """CosineMatching = Σ_i 1 − cos(∇θ CE(real batch of class y_i), ∇θ CE(x̃_i, y_i)), by hand on a
    linear model; the logged term is the loss."""
    from types import SimpleNamespace

    from teddy.method.objectives import CosineMatching

    source = _source(n_per_class=20, classes=3)
    obj = CosineMatching(SimpleNamespace(distill=SimpleNamespace(real_batch=4)), source, "cpu")
    assert obj.names == ("grad_cos",)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, labels = torch.rand(2, 1, 4, 4), torch.tensor([2, 0])
    loss, terms = obj(model, x, labels, torch.Generator().manual_seed(3))
    x_real, y_real = obj.real(labels, torch.Generator().manual_seed(3))
    expected = sum(
        1
        - torch.nn.functional.cosine_similarity(
            _linear_grads(model, x_real[4 * i : 4 * i + 4], y_real[4 * i : 4 * i + 4]),
            _linear_grads(model, x[i : i + 1], labels[i : i + 1]),
            dim=0,
        )
        for i in range(2)
    )
    assert torch.allclose(loss, expected, atol=1e-6) and torch.equal(terms, loss.detach()[None])


@pytest.mark.parametrize("kind", ["CosineMatching", "TaylorMatching", "Unrolled"])
def test_real_batch_objectives_follow_the_batch_generator_alone(kind):
    """The real batch an objective draws depends on the generator distill hands it, never on the
    global RNG: a rerun or another shard draws the same images."""
    from types import SimpleNamespace

    from teddy.method import objectives

    cfg = SimpleNamespace(distill=SimpleNamespace(real_batch=3, unroll_steps=1, inner_lr=0.1))
    obj = getattr(objectives, kind)(cfg, _source(n_per_class=20, classes=3), "cpu")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, labels = torch.rand(2, 1, 4, 4), torch.tensor([2, 0])

    def loss(seed, global_seed):
        torch.manual_seed(global_seed)
        return obj(model, x, labels, torch.Generator().manual_seed(seed))[0].item()

    assert loss(3, 0) == loss(3, 1) != loss(4, 0)


def test_objectives_without_real_images_say_so():
    from types import SimpleNamespace

    from teddy.method.objectives import BNMatching, CosineMatching

    d = SimpleNamespace(alpha_bn=1.0, first_bn_weight=1.0, class_bn=0.5, class_stat_images=3, real_batch=2)
    with pytest.raises(ValueError, match="this objective needs real images"):
        CosineMatching(SimpleNamespace(distill=d), None, "cpu")
    with pytest.raises(ValueError, match="distill.class_bn needs real images"):
        BNMatching(SimpleNamespace(distill=d), None, "cpu")


def test_bn_matching_is_ce_plus_alpha_times_the_bn_term():
    """Without class_bn: terms (ce, bn), loss ce + α_bn · bn, bn by hand for a BN layer on the pixels."""
    from types import SimpleNamespace

    from teddy.method.objectives import BNMatching

    d = SimpleNamespace(alpha_bn=0.3, first_bn_weight=10.0, class_bn=0.0, class_stat_images=3)
    obj = BNMatching(SimpleNamespace(distill=d), None, "cpu")
    assert obj.names == ("ce", "bn")
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    model[0].running_mean.fill_(0.2)
    model[0].running_var.fill_(0.5)
    x, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    loss, terms = obj(model, x, labels, torch.Generator())
    bn = 10.0 * ((x.mean() - 0.2).abs() + (x.var(unbiased=False) - 0.5).abs())
    assert torch.allclose(terms[1], bn, atol=1e-5)
    assert torch.allclose(terms[0], torch.nn.functional.cross_entropy(model(x), labels), atol=1e-6)
    assert torch.allclose(loss, terms[0] + 0.3 * terms[1], atol=1e-6)


def test_crop_curriculum_moves_the_crop_floor_linearly_from_first_to_last_step():
    """distill.crop_scale_min_end: the schedule's crops cover whole images at the first step
    (floor 1.0) and reach the end floor (0.08) at the last, linearly; unset, every step has the
    same floor and the same draws as before the key existed."""
    from teddy import config

    over = ["distill.iterations=5", "distill.crop_scale_min=1.0", "distill.flip=false"]
    cfg = config.load([BASE, TINY], [*over, "distill.crop_scale_min_end=0.08"])
    assert [round(distill.crop_floor(cfg.distill, it), 2) for it in range(5)] == [1.0, 0.77, 0.54, 0.31, 0.08]
    two = config.load([BASE, TINY], [*over, "distill.iterations=2", "distill.crop_scale_min_end=0.08"])
    assert [distill.crop_floor(two.distill, it) for it in (0, 1)] == [
        1.0,
        pytest.approx(0.08),
    ]  # ends at the end
    crops = distill.draw_schedule(cfg, 4000, lambda it, g: 0, torch.Generator().manual_seed(0), "cpu").crops
    area = crops[..., 0].abs() * crops[..., 1]
    # whole images first: one side spans the image, the other the aspect ratio's share (≥ √0.75)
    assert (torch.maximum(crops[0, :, 0].abs(), crops[0, :, 1]) == 1).all() and area[0].min() > 0.86
    for it in range(2, 5):  # floors ≤ 0.54: no crop reaches past the image, so the floor is exact
        floor = distill.crop_floor(cfg.distill, it)
        assert floor - 1e-5 <= area[it].min() < floor + 0.02
    assert area[1].min() > 0.74  # floor 0.77, less what clipping to the image takes
    fixed = config.load([BASE, TINY], over)
    plain = distill.draw_schedule(fixed, 50, lambda it, g: 0, torch.Generator().manual_seed(0), "cpu").crops
    assert all(distill.crop_floor(fixed.distill, it) == 1.0 for it in range(5))
    same = config.load([BASE, TINY], [*over, "distill.crop_scale_min_end=1.0"])
    again = distill.draw_schedule(same, 50, lambda it, g: 0, torch.Generator().manual_seed(0), "cpu").crops
    assert torch.equal(plain, again)
    with pytest.raises(config.ConfigError, match="crop_scale_min_end"):
        config.load([BASE, TINY], [*over, "distill.crop_scale_min_end=0"])


def test_merge_metrics_sums_walls_averages_rates_and_keeps_the_pool(tmp_path):
    """A merge job's metrics: shard count, the first shard's pool (folder, size, members, objective),
    wall seconds summed, iteration time and each final loss term averaged, health notes once each."""
    shards = [
        {
            "inputs": {"data": "d", "pool": "results/pool/abc"},
            "pool_size": 3,
            "pool_members": ["p0", "p1", "p2"],
        }
        | {"objective": "bn", "wall_s": 2.0, "iter_s": 0.1, "final_loss_ce": 1.0, "final_loss_bn": 4.0}
        | {"health": ["b note", "a note"]},
        {
            "inputs": {"data": "d", "pool": "results/pool/abc"},
            "pool_size": 3,
            "pool_members": ["p0", "p1", "p2"],
        }
        | {"objective": "bn", "wall_s": 3.5, "iter_s": 0.3, "final_loss_ce": 2.0, "final_loss_bn": 6.0}
        | {"health": ["a note"]},
    ]
    folders = []
    for i, metrics in enumerate(shards):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "metrics.json").write_text(json.dumps(metrics))
        folders.append(str(tmp_path / f"s{i}"))
    assert distill.merge_metrics(folders) == {
        "shards": 2,
        "pool_dir": "results/pool/abc",
        "pool_size": 3,
        "pool_members": ["p0", "p1", "p2"],
        "objective": "bn",
        "shard_wall_s": 5.5,
        "health": ["a note", "b note"],
        "iter_s": pytest.approx(0.2),
        "final_loss_ce": 1.5,
        "final_loss_bn": 5.0,
    }
    # shards recorded before pool_members and inputs existed: no members, no pool folder
    old = {k: v for k, v in shards[0].items() if k not in ("pool_members", "inputs", "health")}
    (tmp_path / "s0" / "metrics.json").write_text(json.dumps(old))
    merged = distill.merge_metrics([folders[0]])
    assert (merged["pool_members"], merged["pool_dir"], merged["health"]) == ([], None, [])


@pytest.mark.parametrize("curve", [None, torch.tensor([[1.0, 2.0], [0.5, 1.5]])])
def test_a_saved_synthesis_state_restores_everything_it_holds(curve):
    """distill's checkpoint: images, Adam's moments, the lr schedule, the step, the loss curve so far
    (none before the first logged step) and the batch generator come back as they were."""
    from teddy import config

    cfg = config.load([BASE, TINY])
    st = distill.new_state(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), cfg, "cpu")
    (st["x"] ** 2).sum().backward()
    st["opt"].step()
    st["sched"].step()
    st["it"], st["curve"] = 1, curve
    gen = torch.Generator().manual_seed(7)
    torch.rand(3, generator=gen)  # the generator part-way through its draws
    saved = distill.state_dict(st, gen)
    assert (saved["curve"] is None) == (curve is None)
    again = torch.Generator()
    back = distill.load_state(saved, cfg, again, "cpu")
    assert torch.equal(back["x"], st["x"]) and back["it"] == 1
    assert (back["curve"] is None) if curve is None else torch.equal(back["curve"], curve)
    assert torch.equal(again.get_state(), gen.get_state())
    assert back["sched"].state_dict() == st["sched"].state_dict()
    moments = back["opt"].state_dict()["state"][0], st["opt"].state_dict()["state"][0]
    assert all(torch.equal(moments[0][k], moments[1][k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_distill_draws_pool_size_members_and_refuses_a_pool_of_another_recipe_or_data(tmp_path, capsys):
    """distill.pool_size caps the members drawn; the pool is checked against the config's recipe and
    against the prepared data it is asked to synthesize from."""
    run_distill(tmp_path, "random", 1)  # the tiny data and pool
    d, p = tmp_path / "data", tmp_path / "pool"
    common = [*CFG, "--pool", str(p), "--method", "teddy", "--ipc", "1", "--seed", "0"]
    one = tmp_path / "one"
    assert (
        cli.main(["distill", *common, "--set", "distill.pool_size=1", "--data", str(d), "--out", str(one)]) == 0
    )
    metrics = json.loads((one / "metrics.json").read_text())
    assert metrics["pool_size"] == 1 and len(metrics["pool_members"]) == 1
    capsys.readouterr()
    wider = ["--set", "pretrain_pool.width=16", "--data", str(d), "--out", str(tmp_path / "wider")]
    assert cli.main(["distill", *common, *wider]) == 1
    assert (
        "was built by another recipe (pretrain_pool.width: 8 in the pool, 16 in this config)"
        in capsys.readouterr().err
    )
    other = tmp_path / "other_data"  # fewer training images: another prepared dataset, the same pool recipe
    fewer = ["--set", "prepare_data.max_train_per_class=20"]
    assert cli.main(["prepare-data", *CFG, *fewer, "--out", str(other)]) == 0
    assert cli.main(["distill", *common, *fewer, "--data", str(other), "--out", str(tmp_path / "o")]) == 1
    assert "was trained on other data than" in capsys.readouterr().err


def test_a_shards_metrics_are_its_batches_own_numbers(tiny_inputs, tmp_path):
    """run_shard's record: final loss terms = the last step of the batches' mean curve, the curve
    logged per step, one member draw per iteration, the batch count, and iteration and image rates
    that agree with the batch sizes (iter_s × images_per_s = images per iteration)."""
    cfg, tracker = tiny(), Recorder()
    out = tmp_path / "shard"
    out.mkdir()
    metrics = distill.run_shard(cfg, tiny_inputs, out, "teddy", 2, 0, (0, 1), "cpu", tracker)
    logged = tracker.steps
    done = artifacts.load(out / artifacts.BATCHES)
    curve = torch.stack([b["curve"] for b in done.values()]).mean(0)
    names = [k.removeprefix("final_loss_") for k in metrics if k.startswith("final_loss_")]
    assert names and len(curve) == cfg.distill.iterations
    assert all(metrics[f"final_loss_{n}"] == pytest.approx(float(curve[-1, k])) for k, n in enumerate(names))
    assert sorted(logged) == list(range(len(curve)))
    assert all(
        logged[it][f"loss_{n}"] == pytest.approx(float(curve[it, k]))
        for it in logged
        for k, n in enumerate(names)
    )
    batches = distill.batches_of(cfg, 10, 2)
    assert metrics["batches"] == len(done) == len(batches) and metrics["health"] == []
    assert (metrics["resumed_batches"], metrics["resumed_iterations"]) == (0, 0)
    assert len(metrics["member_draws"]) == metrics["pool_size"] == len(metrics["pool_members"])
    assert all(isinstance(m, str) and m for m in metrics["pool_members"])
    assert sum(metrics["member_draws"]) == cfg.distill.iterations * len(batches)
    per_iteration = sum(len(b.labels) for b in batches) / len(batches)
    assert metrics["iter_s"] * metrics["images_per_s"] == pytest.approx(per_iteration)
    assert not (out / "checkpoint.pt").exists()
    assert metrics["synthesis_key"] == distill.synthesis_key(cfg, "teddy", 2, 0, tiny_inputs["pool"])


# --- distill's functions, called directly on the tiny data and pool (built once for this module) ---


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    d, p = root / "data", root / "pool"
    assert cli.main(["prepare-data", *CFG, "--out", str(d)]) == 0
    assert cli.main(["pretrain-pool", *CFG, "--data", str(d), "--out", str(p)]) == 0
    return {"data": str(d), "pool": str(p)}


def tiny(*overrides):
    from teddy import config

    return config.load([BASE, TINY], overrides)


class Recorder:
    """A tracker that keeps what a stage logs."""

    def __init__(self):
        self.steps, self.artifacts = {}, []

    def log_metrics(self, values, step):
        self.steps[step] = values

    def log_artifact(self, path):
        self.artifacts.append(path)


class Quadratic:
    """A stand-in objective: pulls the view to 0.5; records what each step handed it."""

    names = ["l2", "extra"]

    def __init__(self, extra=0.0):
        self.extra, self.calls = extra, []

    def __call__(self, member, view, labels, gen):
        self.calls.append((member, gen))
        loss = (view - 0.5).pow(2).mean()
        return loss, torch.stack([loss.detach(), torch.tensor(self.extra)])


@pytest.mark.parametrize(("iterations", "every", "saves"), [(4, 2, [2]), (5, 2, [2, 4]), (3, 1, [1, 2])])
def test_synthesize_batch_runs_each_step_once_and_checkpoints_on_the_cadence(iterations, every, saves):
    """A checkpoint every ``checkpoint_every`` steps, never after the last (the batch is done then);
    each step draws its own pool member and hands the batch's generator to the objective."""
    cfg = tiny(f"distill.iterations={iterations}", f"distill.checkpoint_every={every}")
    gen = torch.Generator().manual_seed(0)
    schedule = distill.draw_schedule(cfg, 3, lambda it, g: it % 2, gen, "cpu")
    objective, saved = Quadratic(), []
    st = distill.new_state(torch.rand(3, 1, 8, 8), cfg, "cpu")
    labels = torch.tensor([0, 1, 2])
    st = distill.synthesize_batch(
        st, labels, ["m0", "m1"], objective, schedule, cfg, gen, "cpu", lambda s: saved.append(s["it"])
    )
    assert saved == saves and st["it"] == iterations
    assert [m for m, _ in objective.calls] == [("m0", "m1")[it % 2] for it in range(iterations)]
    assert all(g is gen for _, g in objective.calls)
    assert st["curve"].shape == (iterations, 2) and bool((st["curve"][:, 0] > 0).all())
    assert float(st["x"].detach().min()) >= 0 and float(st["x"].detach().max()) <= 1  # clamped to valid images
    # without a save function (no checkpointing) the batch runs through
    st = distill.new_state(torch.rand(3, 1, 8, 8), cfg, "cpu")
    assert distill.synthesize_batch(st, labels, ["m0", "m1"], Quadratic(), schedule, cfg, gen, "cpu")["it"] == (
        iterations
    )


def test_a_preempted_batch_saves_then_stops_with_where_it_was(monkeypatch):
    from teddy.runtime.preemption import Preempted, preemption

    cfg = tiny("distill.iterations=4")
    gen = torch.Generator().manual_seed(0)
    schedule = distill.draw_schedule(cfg, 2, lambda it, g: 0, gen, "cpu")
    st = distill.new_state(torch.rand(2, 1, 8, 8), cfg, "cpu")
    monkeypatch.setattr(preemption, "signal", 15)
    saved = []
    with pytest.raises(Preempted, match=r"^preempted at iteration 0 of a batch; checkpoint saved$"):
        save = lambda s: saved.append(s["it"])  # noqa: E731
        distill.synthesize_batch(st, torch.tensor([0, 1]), ["m"], Quadratic(), schedule, cfg, gen, "cpu", save)
    assert saved == [0]


def test_new_state_starts_at_step_zero_with_the_synthesis_optimiser():
    cfg = tiny("distill.lr=0.07")
    x0 = torch.rand(2, 3, 8, 8)
    st = distill.new_state(x0, cfg, "cpu")
    assert (st["it"], st["curve"]) == (0, None) and st["x"].requires_grad
    assert st["x"].is_contiguous()  # channels-last only on CUDA, where its kernels are faster
    group = st["opt"].param_groups[0]
    assert group["betas"] == (0.5, 0.9) and group["params"][0] is st["x"]
    assert st["sched"].get_last_lr()[0] <= 0.07


def test_the_schedule_draws_a_member_per_step_and_flips_only_when_asked():
    for flip in (False, True):
        cfg = tiny("distill.iterations=6", f"distill.flip={str(flip).lower()}")
        seen = []

        def draw(it, gen, seen=seen):
            seen.append(it)
            return it % 3

        schedule = distill.draw_schedule(cfg, 50, draw, torch.Generator().manual_seed(1), "cpu")
        assert seen == list(range(6)) and schedule.members == [0, 1, 2, 0, 1, 2]
        assert schedule.crops.shape == (6, 50, 4) and len(schedule.shifts) == 6
        assert bool((schedule.crops[..., 0] < 0).any()) is flip  # a negative width is a mirrored crop


@pytest.mark.parametrize(("n_classes", "ipc", "max_ipc"), [(3, 3, 2), (10, 12, 3)])
def test_the_grid_has_a_row_per_class_and_the_first_images_of_each_in_order(tmp_path, n_classes, ipc, max_ipc):
    """Classes interleaved in the set, each class's slots in order: the grid keeps that order
    (a stable sort: at 120 images torch's default sort on CPU reorders ties)."""
    from PIL import Image

    size = 4
    labels = torch.arange(n_classes).repeat(ipc)[
        torch.randperm(n_classes * ipc, generator=torch.Generator().manual_seed(0))
    ]
    slot = {c: 0 for c in range(n_classes)}
    images = torch.zeros(len(labels), 3, size, size)
    levels = n_classes * ipc + 1
    for i, c in enumerate(labels.tolist()):
        images[i, :] = (c * ipc + slot[c]) / levels  # grey level = the image's (class, slot)
        images[i, 1] = 0.05  # a colour image: channels kept apart
        slot[c] += 1
    path = tmp_path / "grid.png"
    distill.save_grid(images, labels, ipc, max_ipc, path)
    grid = torch.tensor(np.array(Image.open(path).convert("RGB"))).float() / 255
    # max_ipc columns, a class per row, one pixel of white padding around every image
    assert grid.shape == (n_classes * (size + 1) + 1, max_ipc * (size + 1) + 1, 3)
    assert bool((grid[0] == 1).all()) and bool((grid[:, 0] == 1).all())
    for c in range(n_classes):
        for s in range(max_ipc):
            cell = grid[1 + c * (size + 1) : (c + 1) * (size + 1), 1 + s * (size + 1) : (s + 1) * (size + 1)]
            assert cell[..., 0].mean().item() == pytest.approx((c * ipc + s) / levels, abs=1 / 255)
            assert cell[..., 1].mean().item() == pytest.approx(0.05, abs=1 / 255)


def test_a_merge_names_the_batches_it_found_and_expected():
    with pytest.raises(Exception, match=r"hold batches \[\], expected 0\.\.2: a shard is missing or belongs"):
        distill.merge([], 3)


def test_run_records_what_it_made_and_creates_its_folder(tiny_inputs, tmp_path):
    """run's metrics name the set (label, algorithm, IPC, seed, image count, shard), the set file
    carries the same, the grid goes to the tracker, and a nested output folder is created."""
    cfg, tracker = tiny(), Recorder()
    out = tmp_path / "a" / "b"
    common = {"ipc": 1, "seed": 0, "device": "cpu", "tracker": tracker}
    metrics = distill.run(cfg, tiny_inputs, {"out": out}, method="teddy", **common)
    assert {k: metrics[k] for k in ("method", "algorithm", "ipc", "seed", "num_images")} == {
        "method": "teddy",
        "algorithm": "teddy",
        "ipc": 1,
        "seed": 0,
        "num_images": 10,
    }
    assert metrics["batches"] == 1 and tracker.artifacts == [out / distill.GRID]
    syn = artifacts.load_synthetic(out)
    assert (syn["method"], syn["ipc"], syn["seed"]) == ("teddy", 1, 0)
    part = distill.run(cfg, tiny_inputs, {"out": tmp_path / "part"}, method="teddy", shard=(0, 2), **common)
    assert (part["shard"], part["method"], part["ipc"], part["batches"]) == ("0/2", "teddy", 1, 1)
    # random: the seed picks the images, the same seed the same images
    first, again, other = (
        distill.run(cfg, tiny_inputs, {"out": tmp_path / f"r{i}"}, method="random", **(common | {"seed": s}))
        for i, s in enumerate((3, 3, 4))
    )
    sets = [artifacts.load_synthetic(tmp_path / f"r{i}")["images"] for i in range(3)]
    assert torch.equal(sets[0], sets[1]) and not torch.equal(sets[0], sets[2])
    assert (first["method"], first["seed"], other["seed"], again["num_images"]) == ("random", 3, 4, 10)


def test_a_shard_without_batches_writes_an_empty_part_the_merge_takes(tiny_inputs, tmp_path):
    """More shards than batches (IPC 1 is one batch here): the extra shard writes an empty part
    instead of failing, and the merge's rate and losses come from the shards that worked."""
    common = [*CFG, "--data", tiny_inputs["data"], "--method", "teddy", "--ipc", "1", "--seed", "0"]
    parts = [tmp_path / f"s{i}" for i in range(2)]
    for i, part in enumerate(parts):
        shard = ["--pool", tiny_inputs["pool"], "--shard", f"{i}/2", "--out", str(part)]
        assert cli.main(["distill", *common, *shard]) == 0
    shard = [json.loads((p / "metrics.json").read_text()) for p in parts]
    assert shard[1]["batches"] == 0 and shard[1]["health"] == []
    assert not any(k.startswith("final_loss_") for k in shard[1])
    merged = tmp_path / "m"
    assert cli.main(["distill", *common, "--merge", *map(str, parts), "--out", str(merged)]) == 0
    metrics = json.loads((merged / "metrics.json").read_text())
    recorded = (metrics["num_images"], metrics["shards"], metrics["algorithm"], metrics["ipc"])
    assert recorded == (10, 2, "teddy", 1)
    assert metrics["iter_s"] == pytest.approx(shard[0]["iter_s"])
    assert metrics["final_loss_ce"] == pytest.approx(shard[0]["final_loss_ce"])


def _batches(out):
    return {i: b["images"] for i, b in artifacts.load(out / distill.BATCHES).items()}


def test_a_shard_resumes_after_its_last_whole_batch(tiny_inputs, tmp_path, monkeypatch, caplog):
    """Stopped between batches: the rerun keeps the finished batch, synthesizes the rest, says so
    in its progress lines, and ends where an uninterrupted run ends."""
    from teddy.runtime.progress import Progress

    def progress_lines():
        lines = [r.getMessage() for r in caplog.records if r.name == "teddy.distill"]
        assert all(line.startswith("distill teddy ipc2 seed0 shard 0/1 batches: ") for line in lines)
        caplog.clear()
        return [line.split(": ")[1].split(" ")[0] for line in lines], lines

    cfg = tiny()
    whole = tmp_path / "whole"
    whole.mkdir()
    monkeypatch.setattr(Progress, "every", 0.0)
    caplog.set_level(logging.INFO, logger="teddy.distill")
    distill.run_shard(cfg, tiny_inputs, whole, "teddy", 2, 0, (0, 1), "cpu", Recorder())
    assert progress_lines()[0] == ["0/2", "1/2", "2/2"]
    out = tmp_path / "stopped"
    out.mkdir()
    real, calls = distill.draw_schedule, []

    def stop_at_the_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return real(*args)

    monkeypatch.setattr(distill, "draw_schedule", stop_at_the_second_batch)
    with pytest.raises(RuntimeError, match="stopped"):
        distill.run_shard(cfg, tiny_inputs, out, "teddy", 2, 0, (0, 1), "cpu", Recorder())
    monkeypatch.setattr(distill, "draw_schedule", real)
    caplog.clear()
    metrics = distill.run_shard(cfg, tiny_inputs, out, "teddy", 2, 0, (0, 1), "cpu", Recorder())
    assert (metrics["resumed_batches"], metrics["resumed_iterations"], metrics["batches"]) == (1, 0, 2)
    expected = _batches(whole)
    assert set(_batches(out)) == {0, 1} and all(torch.equal(_batches(out)[i], expected[i]) for i in expected)
    counts, lines = progress_lines()
    assert counts == ["1/2", "1/2", "2/2"]
    assert "inf s left" in lines[0]  # nothing done by this run yet: no rate claimed from the checkpoint
    assert not (out / "checkpoint.pt").exists()


def test_a_shard_resumes_inside_a_batch_and_counts_only_its_own_steps(tiny_inputs, tmp_path, monkeypatch):
    cfg = tiny("distill.checkpoint_every=2")
    whole = tmp_path / "whole"
    whole.mkdir()
    distill.run_shard(cfg, tiny_inputs, whole, "teddy", 2, 0, (0, 1), "cpu", Recorder())
    out = tmp_path / "stopped"
    out.mkdir()
    real, calls = distill.synthesize_batch, []

    def stop_after_a_checkpoint_of_the_second_batch(*args):
        *head, save = args
        calls.append(1)

        def save_then_stop(st):
            save(st)
            if len(calls) == 2:
                raise RuntimeError("stopped")

        return real(*head, save_then_stop)

    monkeypatch.setattr(distill, "synthesize_batch", stop_after_a_checkpoint_of_the_second_batch)
    with pytest.raises(RuntimeError, match="stopped"):
        distill.run_shard(cfg, tiny_inputs, out, "teddy", 2, 0, (0, 1), "cpu", Recorder())
    monkeypatch.setattr(distill, "synthesize_batch", real)
    metrics = distill.run_shard(cfg, tiny_inputs, out, "teddy", 2, 0, (0, 1), "cpu", Recorder())
    assert (metrics["resumed_batches"], metrics["resumed_iterations"]) == (1, 2)
    expected = _batches(whole)
    assert all(torch.equal(_batches(out)[i], expected[i]) for i in expected)
    # this run made 2 steps of batch 1 (10 images each): the rates count those, not the checkpoint's
    assert metrics["iter_s"] * metrics["images_per_s"] == pytest.approx(10)


def test_a_non_finite_loss_term_is_reported_by_name(tiny_inputs, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(distill, "make_objective", lambda *a: Quadratic(extra=float("nan")))
    caplog.set_level(logging.WARNING, logger="teddy.stages.distill")
    t0 = time.perf_counter()
    metrics = distill.run_shard(tiny(), tiny_inputs, tmp_path, "teddy", 1, 7, (0, 1), "cpu", Recorder())
    wall = time.perf_counter() - t0
    assert metrics["health"] == ["diverged: non-finite synthesis loss (extra)"]
    assert metrics["objective"] == "Quadratic" and metrics["final_loss_l2"] > 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    problem = "diverged: non-finite synthesis loss (extra)"
    assert warned == [f"distill teddy ipc1 seed7: {problem} (lower distill.lr or the loss weights)"]
    assert 0 < metrics["iter_s"] * tiny().distill.iterations <= wall


def test_no_steps_keep_the_initial_images_and_claim_no_loss(tiny_inputs, tmp_path):
    """distill.iterations 0 with init teacher is the selection-only baseline: no curve, no final
    loss, nothing logged per step."""
    tracker = Recorder()
    cfg = tiny("distill.iterations=0", "distill.init=teacher")
    metrics = distill.run_shard(cfg, tiny_inputs, tmp_path, "teddy", 1, 0, (0, 1), "cpu", tracker)
    assert tracker.steps == {} and not any(k.startswith("final_loss_") for k in metrics)
    assert metrics["batches"] == 1 and metrics["health"] == [] and sum(metrics["member_draws"]) == 0
    (curve,) = [b["curve"] for b in artifacts.load(tmp_path / distill.BATCHES).values()]
    assert curve.dim() == 2 and curve.shape[0] == 0 and curve.shape[1] >= 1  # a row per step, a column per term


def test_the_pool_and_teacher_are_the_configs(tiny_inputs, tmp_path, monkeypatch):
    """A members pool is narrowed to distill.pool_archs (a base-model method ignores it); init
    teacher uses relabel's teacher, checked against this config and data."""
    from teddy.pool import members

    asked, teachers = [], []

    def load_pool(path, kind, device, size, archs, **checks):
        asked.append((kind, archs, checks["built_for"].distill.pool_archs, checks["data_dir"]))
        return members.load_pool(path, kind, device, size, archs, **checks)

    class Teacher(members.Teacher):
        def __init__(self, *args):
            teachers.append(args)
            super().__init__(*args)

    monkeypatch.setattr(distill, "load_pool", load_pool)
    monkeypatch.setattr(distill, "Teacher", Teacher)
    cfg = tiny("distill.pool_archs=[convnet]", "distill.init=teacher", "distill.iterations=1")
    for method in ("teddy", "sre2l"):
        (tmp_path / method).mkdir()
        distill.run_shard(cfg, tiny_inputs, tmp_path / method, method, 1, 0, (0, 1), "cpu", Recorder())
    assert [a[:2] for a in asked] == [("prior", ("convnet",)), ("base", None)]
    assert all(a[2] == ("convnet",) and a[3] == tiny_inputs["data"] for a in asked)
    assert teachers == [(tiny_inputs["pool"], cfg.relabel.teacher, "cpu", cfg, tiny_inputs["data"])] * 2


def test_real_batch_draws_follow_the_batch_generator_so_a_rerun_is_identical(tiny_inputs, tmp_path):
    """A real-batch objective draws its real images with the batch's own generator: the same seed
    synthesizes the same images in the same process, whatever else drew random numbers."""
    cfg = tiny("distill.matching=taylor")
    sets = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        torch.rand(7)  # the global generator moves between the runs
        distill.run_shard(cfg, tiny_inputs, tmp_path / name, "teddy", 1, 0, (0, 1), "cpu", Recorder())
        sets.append(_batches(tmp_path / name)[0])
    assert torch.equal(sets[0], sets[1])


def test_a_long_curve_is_logged_at_about_a_hundred_steps(tiny_inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "make_objective", lambda *a: Quadratic())
    tracker = Recorder()
    cfg = tiny("distill.iterations=200", "distill.checkpoint_every=1000")
    distill.run_shard(cfg, tiny_inputs, tmp_path, "teddy", 1, 0, (0, 1), "cpu", tracker)
    assert sorted(tracker.steps) == list(range(0, 200, 2))
    assert set(tracker.steps[198]) == {"loss_l2", "loss_extra"}


def test_real_inits_follow_the_set_seed_and_split_a_class_among_its_slots(tiny_inputs, tmp_path):
    """The candidates come from the set's seed (another seed, other real images) and are split
    among the IPC's slots even when init_candidates asks for more than a class can give each slot."""
    sets = {}
    runs = (("s0", 0, "real"), ("s1", 1, "real"), ("many", 0, "teacher", "distill.init_candidates=100000"))
    for name, seed, how, *extra in runs:
        cfg = tiny(f"distill.init={how}", "distill.iterations=0", *extra)
        (tmp_path / name).mkdir()
        distill.run_shard(cfg, tiny_inputs, tmp_path / name, "teddy", 3, seed, (0, 1), "cpu", Recorder())
        sets[name] = torch.cat(list(_batches(tmp_path / name).values()))
    assert not torch.equal(sets["s0"], sets["s1"])
    flat = sets["many"].flatten(1)
    assert len(flat) == 30 and len(torch.unique(flat, dim=0)) == 30  # no image in two slots


def test_batches_of_takes_the_configs_classes_and_slots_per_batch():
    cfg = tiny("distill.classes_per_batch=3", "distill.slots_per_batch=2")
    batches = distill.batches_of(cfg, 10, 4)
    assert [b.classes for b in batches] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)] * 2
    assert [b.slots for b in batches] == [(0, 1)] * 4 + [(2, 3)] * 4


def _parts(tmp_path, *records):
    """Shard folders holding only the metrics a merge checks, named a, b, c, ..."""
    folders = []
    for name, record in zip("abcdef", records, strict=False):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(record))
        folders.append(str(tmp_path / name))
    return folders


def test_a_merge_checks_each_shards_set_split_and_key(tmp_path):
    """check_parts refuses, naming the folder: a shard of another method, IPC or seed; shards of
    different splits or one shard twice; a shard whose synthesis key differs from the first's."""

    def shard(i, n=2, key="k1", **set_):
        return {"method": "teddy", "ipc": 3, "seed": 7, "shard": f"{i}/{n}", "synthesis_key": key} | set_

    def refused(tmp, *records):
        with pytest.raises(distill.ArtifactError) as err:
            distill.check_parts(_parts(tmp, *records), "teddy", 3, 7)
        return str(err.value)

    for n, other in enumerate(({"seed": 8}, {"ipc": 4}, {"method": "sre2l"})):
        tmp = tmp_path / f"set{n}"
        tmp.mkdir()
        theirs = {"method": "teddy", "ipc": 3, "seed": 7} | other
        said = refused(tmp, shard(0), shard(1, **other))
        assert said == (
            f"{tmp / 'b'} is a shard of {theirs['method']} ipc{theirs['ipc']} seed{theirs['seed']}, not of "
            "teddy ipc3 seed7: merge only the shard folders of one set (--method, --ipc, --seed as theirs)"
        )
    (tmp_path / "twice").mkdir()
    said = refused(tmp_path / "twice", shard(0), shard(0), shard(1))
    assert said == (
        f"shards {_parts_names(tmp_path / 'twice', 3)} are ['0/2', '0/2', '1/2']: a merge takes each shard of "
        "one split (i/n, one n) once"
    )
    (tmp_path / "splits").mkdir()
    assert "(i/n, one n) once" in refused(tmp_path / "splits", shard(0), shard(1, n=3))
    (tmp_path / "key").mkdir()
    said = refused(tmp_path / "key", shard(0), shard(1, key="k2"))
    assert said == (
        f"{tmp_path / 'key' / 'b'} was synthesized with other distill settings or another pool than "
        f"{tmp_path / 'key' / 'a'}: its batches belong to another set; rerun the shards with one config and "
        "one pool"
    )
    (tmp_path / "fine").mkdir()
    assert distill.check_parts(_parts(tmp_path / "fine", shard(1), shard(0)), "teddy", 3, 7) is None


def _parts_names(tmp, n):
    return [str(tmp / name) for name in "abcdef"[:n]]


def test_the_synthesis_key_is_what_the_sets_batches_depend_on(tiny_inputs, tmp_path):
    """Equal for the same algorithm, IPC, seed, relevant settings and pool; different when any of
    them changes, including the pool's manifest; blind to the keys the algorithm does not read."""
    cfg, pool = tiny(), tiny_inputs["pool"]
    key = distill.synthesis_key(cfg, "teddy", 2, 0, pool)
    assert len(key) == 16 and key == distill.synthesis_key(tiny(), "teddy", 2, 0, pool)
    changed = [
        distill.synthesis_key(cfg, "sre2l", 2, 0, pool),
        distill.synthesis_key(cfg, "teddy", 3, 0, pool),
        distill.synthesis_key(cfg, "teddy", 2, 1, pool),
        distill.synthesis_key(tiny("distill.lr=0.05"), "teddy", 2, 0, pool),
        distill.synthesis_key(cfg, "teddy", 2, 0, tmp_path),  # a folder without a pool manifest
    ]
    copied = tmp_path / "pool"
    copied.mkdir()
    manifest = json.loads((Path(pool) / "manifest.json").read_text())
    (copied / "manifest.json").write_text(json.dumps({**manifest, "extra": 1}))
    changed.append(distill.synthesis_key(cfg, "teddy", 2, 0, copied))
    assert len({key, *changed}) == len(changed) + 1
    # random reads neither the synthesis lr nor the iterations: its sets do not depend on them
    assert distill.synthesis_key(cfg, "random", 2, 0, pool) == distill.synthesis_key(
        tiny("distill.lr=0.05", "distill.iterations=9"), "random", 2, 0, pool
    )


def test_a_merge_averages_rates_over_the_shards_that_synthesized(tmp_path):
    """A shard recorded before ``batches`` existed counts as busy; one with no batches does not."""
    base = {"pool_size": 1, "objective": "bn", "wall_s": 1.0}
    folders = _parts(
        tmp_path,
        base | {"iter_s": 1.0},
        base | {"batches": 2, "iter_s": 3.0},
        base | {"batches": 0, "iter_s": 0},
    )
    assert distill.merge_metrics(folders)["iter_s"] == pytest.approx(2.0)


class ThreeTerms(Quadratic):
    names = ["l2", "extra", "more"]

    def __call__(self, member, view, labels, gen):
        loss = (view - 0.5).pow(2).mean()
        return loss, torch.stack([loss.detach(), torch.tensor(float("nan")), torch.tensor(float("inf"))])


def test_every_non_finite_term_is_named(tiny_inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "make_objective", lambda *a: ThreeTerms())
    cfg = tiny("distill.iterations=1")
    metrics = distill.run_shard(cfg, tiny_inputs, tmp_path, "teddy", 1, 0, (0, 1), "cpu", Recorder())
    assert metrics["health"] == ["diverged: non-finite synthesis loss (extra, more)"]
    batches = distill.batches_of(cfg, 10, 1)  # one step per batch: the rates still agree
    per_iteration = sum(len(b.labels) for b in batches) / len(batches)
    assert metrics["iter_s"] * metrics["images_per_s"] == pytest.approx(per_iteration)
