"""Pool jobs: base, prior trajectories, post members (pruned, fine-tuned, BN-recalibrated); selection."""

import json
from pathlib import Path

import pytest
import torch

from teddy import cli, models
from teddy.data.source import open_source
from teddy.io.files import load_torch
from teddy.method.losses import BNStatsRecorder
from teddy.pool import members as pool
from teddy.pool import naming, prune
from teddy.stages import pretrain_pool
from teddy.tracking import NullTracker

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
    members, entries = pool.load_pool(pool_dir / "pool", "both", "cpu")
    assert [e["origin"] for e in entries] == ["prior", "post", "prior", "post"]
    post = [e for e in entries if e["origin"] == "post"]
    assert all(0.2 <= e["prune_ratio"] <= 0.6 for e in post)
    assert all(e["params"] < entries[0]["params"] for e in post)  # pruned: fewer parameters
    assert len(pool.load_pool(pool_dir / "pool", "both", "cpu", size=3)[0]) == 3


def test_pruned_member_loads_weights_only_and_runs(pool_dir):
    ckpt = load_torch(pool_dir / "pool" / "post_000" / "member.pt")
    model = models.from_checkpoint(ckpt).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    base = models.from_checkpoint(load_torch(pool_dir / "pool" / "base" / "base.pt"))
    assert models.count_params(model) < models.count_params(base)


def test_stored_post_members_hold_their_recalibration_images_statistics(pool_dir):
    """Every stored post member's BN layers cache exactly the statistics of the real images its
    checkpoint says it was recalibrated on (features in eval mode; BatchNorm stores the unbiased
    variance): checked on the files pretrain_pool wrote, not by recalibrating here."""
    source = open_source(pool_dir / "data")
    for member in sorted((pool_dir / "pool").glob("post_*/member.pt")):
        ckpt = load_torch(member)
        model = models.from_checkpoint(ckpt).eval()
        images = source.images("train", ckpt["recalib_idx"])
        assert len(images) == 200  # pretrain_pool.recalib_images
        rec = BNStatsRecorder(model)
        with torch.no_grad(), rec.record():
            model(images.float() / 255)
        n = [images.shape[0] * h * w for h, w in _spatial(model, images)]
        for layer, mean, var, count in zip(rec.layers, rec.means, rec.vars, n, strict=True):
            assert torch.allclose(layer.running_mean, mean, atol=1e-4)
            assert torch.allclose(layer.running_var, var * count / (count - 1), rtol=1e-3, atol=1e-5)


def _spatial(model, images):
    """(H, W) of every BN layer's input for these images."""
    sizes = []
    hooks = [
        bn.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-2:]))
        for bn in models.bn_layers(model)
    ]
    with torch.no_grad():
        model(images[:1].float() / 255)
    for h in hooks:
        h.remove()
    return sizes


def test_recalibrate_bn_sets_exact_statistics_across_batches(pool_dir):
    """recalibrate_bn itself, with several batches: the same exact statistics as one pass."""
    source = open_source(pool_dir / "data")
    model = models.from_checkpoint(load_torch(pool_dir / "pool" / "post_001" / "member.pt")).eval()
    images = source.images("train", torch.arange(300))
    prune.recalibrate_bn(model, images, batch=64, device="cpu")
    rec = BNStatsRecorder(model)
    with torch.no_grad(), rec.record():
        model(images.float() / 255)
    for layer, mean, var in zip(rec.layers, rec.means, rec.vars, strict=True):
        assert torch.allclose(layer.running_mean, mean, atol=1e-5)
        ratio = layer.running_var / var.clamp_min(1e-12)
        expected = ratio.new_full(ratio.shape, ratio.median().item())
        assert torch.allclose(ratio, expected, atol=1e-3) and 1 <= ratio.median() < 1.01


def test_samplers_draw_the_members_they_name():
    entries = [{"val_top1": 10.0}, {"val_top1": 30.0}, {"val_top1": 60.0}]
    gen = torch.Generator().manual_seed(0)
    robin = pool.pool_sampler("round_robin", entries)
    assert [robin(it, gen) for it in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    for mode, expected in (("uniform", [1 / 3] * 3), ("accuracy", [0.1, 0.3, 0.6])):
        draw = pool.pool_sampler(mode, entries)
        counts = torch.bincount(torch.tensor([draw(it, gen) for it in range(6000)]), minlength=3)
        assert torch.allclose(counts / 6000, torch.tensor(expected), atol=0.025), (mode, counts)
    for mode in ("uniform", "accuracy"):  # seeded by the generator alone, whatever the global RNG does
        again = pool.pool_sampler(mode, entries)

        def draws(seed, again=again):
            g = torch.Generator().manual_seed(seed)
            return [(torch.manual_seed(i), again(i, g))[1] for i in range(30)]

        assert draws(5) == draws(5) != draws(6), mode
    with pytest.raises(ValueError, match="distill.pool_sampling"):
        pool.pool_sampler("greedy", entries)


def test_spread_picks_evenly_from_early_to_late():
    entries = [{"epoch": e} for e in range(5)]
    assert pool.spread(entries, 3) == [entries[0], entries[2], entries[4]]
    assert pool.spread(entries, 1) == [entries[2]]  # one member: the middle one
    assert pool.spread(entries, 5) == entries and pool.spread(entries, 9) == entries
    assert pool.spread(entries, None) == entries and pool.spread(entries, 0) == []
    assert pool.spread(entries, 2) == [entries[0], entries[4]]


def test_distill_draws_from_prior_and_post_members(pool_dir):
    """pool: both with M = 3 draws from 2 prior + 1 post member, each serving some iterations."""
    out = pool_dir / "syn_both3"
    argv = ["distill", *CFG, "--set", "distill.pool=both", "--set", "distill.pool_size=3"]
    argv += ["--set", "distill.pool_sampling=round_robin", "--data", str(pool_dir / "data")]
    argv += [
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
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((pool_dir / "pool" / "manifest.json").read_text())
    origin = {m["file"]: m["origin"] for m in manifest["members"]}
    assert [origin[f] for f in metrics["pool_members"]] == ["prior", "post", "prior"]
    assert metrics["member_draws"] == [2, 1, 1]  # round robin over 4 iterations (tiny config)


def test_a_pool_built_for_another_pool_config_is_refused(pool_dir, tmp_path, capsys):
    """Members are drawn only from a pool assembled from the jobs pretrain_pool asks for: after
    post_members (or member_archs, prior_seeds) change, a pool assembled before (results restored
    without Snakemake's records, which then sees nothing to rebuild; a folder passed by hand) is
    refused, naming the jobs that differ and the fix, before anything is written."""
    from teddy.io.files import ArtifactError

    manifest = json.loads((pool_dir / "pool" / "manifest.json").read_text())
    assert manifest["jobs"] == ["base", "prior_s0", "post_000", "post_001"]
    out = tmp_path / "syn"
    argv = ["distill", *CFG, "--set", "pretrain_pool.post_members=3", "--set", "distill.pool=both"]
    argv += ["--data", str(pool_dir / "data"), "--pool", str(pool_dir / "pool"), "--method", "teddy"]
    argv += ["--ipc", "1", "--seed", "0", "--out", str(out)]
    assert cli.main(argv) == 1  # bad input: what and the fix
    err = capsys.readouterr().err
    assert "manifest.json: assembled from pool jobs" in err and "missing ['post_002']" in err
    assert "build the pool for this config" in err and "config.resolved.yaml" in err  # not the old command

    assert not list(out.rglob("*.pt"))
    fewer = config_of([*CFG, "--set", "pretrain_pool.post_members=1"])
    with pytest.raises(ArtifactError, match=r"not configured \['post_001'\]"):
        pool.Teacher(pool_dir / "pool", "ensemble", "cpu", fewer)  # the ensemble teacher draws them all
    assert len(pool.Teacher(pool_dir / "pool", "base", "cpu", fewer).models) == 1  # the base alone is fine
    older = {k: v for k, v in manifest.items() if k != "jobs"}  # before "jobs": read off the entries
    with pytest.raises(ArtifactError, match=r"not configured \['post_001'\]"):
        pool.check_jobs(older, pool_dir / "pool" / "manifest.json", fewer.pretrain_pool)

    pool.check_jobs(older, pool_dir / "pool" / "manifest.json", config_of(CFG).pretrain_pool)


def test_post_pool_without_post_members_fails_before_work(capsys):
    from teddy import config

    with pytest.raises(config.ConfigError, match="set pretrain_pool.post_members"):
        config.load([BASE], ["distill.pool=post"])


def test_manifest_records_origin_params_flops_and_weak_members(pool_dir):
    manifest = json.loads((pool_dir / "pool" / "manifest.json").read_text())
    base = manifest["base"]
    assert base["origin"] == "base" and base["flops"] == 2 * base["macs"] > 0
    for m in manifest["members"]:
        assert {"file", "origin", "val_top1", "params", "macs", "flops", "sha256", "job"} <= set(m)
        assert m["flops"] <= base["flops"] and m["params"] <= base["params"]
        assert (m["origin"] == "prior") == ("epoch" in m and "prune_ratio" not in m)
    priors = [m for m in manifest["members"] if m["origin"] == "prior"]
    assert [m["epoch"] for m in priors] == [1, 2] and all(m["seed"] == 0 for m in priors)


def test_member_jobs_rebuild_the_single_process_pool_exactly(pool_dir, tmp_path):
    """What Snakemake does (one job per member, then --assemble) equals the all-in-one build."""
    data, jobs = str(pool_dir / "data"), tmp_path / "pool"
    for member, extra in (("base", []), ("prior:0", []), ("post:1", ["--base", str(jobs / "base")])):
        out = jobs / {"base": "base", "prior:0": "prior_s0", "post:1": "post_001"}[member]
        assert (
            cli.main(["pretrain-pool", *CFG, "--data", data, *extra, "--member", member, "--out", str(out)])
            == 0
        )
    dirs = [str(jobs / d) for d in ("base", "prior_s0", "post_001")]
    assert cli.main(["pretrain-pool", *CFG, "--assemble", *dirs, "--out", str(jobs)]) == 0
    ours = json.loads((jobs / "manifest.json").read_text())
    full = json.loads((pool_dir / "pool" / "manifest.json").read_text())
    assert ours["base"]["file"] == "base/base.pt"
    same = {m["file"]: m["sha256"] for m in full["members"]} | {"base/base.pt": full["base"]["sha256"]}
    for entry in [ours["base"], *ours["members"]]:
        assert entry["sha256"] == same[entry["file"]], entry["file"]
    assert len(ours["members"]) == 3  # two prior epochs + post member 1
    walls = [json.loads((Path(d) / "metrics.json").read_text())["wall_s"] for d in dirs]
    pooled = json.loads((jobs / "metrics.json").read_text())
    assert pooled["shard_wall_s"] == pytest.approx(sum(walls))  # the stage's runtime counts every job


def config_of(argv):
    from teddy import config

    files = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    return config.load(files, [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])


def test_bad_member_names_fail_with_the_fix(pool_dir, tmp_path, capsys):
    data = str(pool_dir / "data")
    assert cli.main(["pretrain-pool", *CFG, "--data", data, "--member", "post:7", "--out", str(tmp_path)]) == 2
    assert "post:I with I < pretrain_pool.post_members (2)" in capsys.readouterr().err
    assert cli.main(["pretrain-pool", *CFG, "--data", data, "--member", "post:0", "--out", str(tmp_path)]) == 2
    assert "pass --base" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_prior_seeds_and_accuracy_targets(pool_dir, tmp_path):
    """Several prior trajectories; a target keeps the first epoch reaching that fraction of the base."""
    cfg = config_of(
        [*CFG, "--set", "pretrain_pool.prior_seeds=[0, 1]", "--set", "pretrain_pool.prior_targets=[0.3]"]
    )
    source = open_source(pool_dir / "data")
    spec = models.InputSpec.from_manifest(json.loads((pool_dir / "data" / "manifest.json").read_text()))
    base_top1 = json.loads((pool_dir / "pool" / "manifest.json").read_text())["base"]["val_top1"]
    seeds = {}
    for seed in (0, 1):
        out = tmp_path / f"prior_s{seed}"
        out.mkdir()
        seeds[seed] = pretrain_pool.build_prior(cfg, source, spec, seed, out, "cpu", NullTracker(), base_top1)
        hit = [m for m in seeds[seed] if m["targets"]]
        assert len(hit) == 1 and hit[0]["val_top1"] >= 0.3 * base_top1
        assert {1, 2} <= {m["epoch"] for m in seeds[seed]} and not (out / pretrain_pool.STATE).exists()
    assert seeds[0][0]["sha256"] != seeds[1][0]["sha256"]  # different trajectories


def test_base_loads_from_a_local_plain_state_dict(pool_dir, tmp_path):
    """pretrain_pool.checkpoint: e.g. torchvision-style weights on disk (the bare network's keys)."""
    trained = models.from_checkpoint(load_torch(pool_dir / "pool" / "base" / "base.pt"))
    path = tmp_path / "weights.pth"
    torch.save(trained[1].state_dict(), path)
    cfg = config_of([*CFG, "--set", f"pretrain_pool.checkpoint={path}"])
    source = open_source(pool_dir / "data")
    spec = models.InputSpec.from_manifest(json.loads((pool_dir / "data" / "manifest.json").read_text()))
    (entry,) = pretrain_pool.build_base(cfg, source, spec, tmp_path, "cpu", NullTracker())
    full = json.loads((pool_dir / "pool" / "manifest.json").read_text())["base"]
    assert entry["val_top1"] == full["val_top1"] and entry["source"] == str(path)
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="pretrain_pool.checkpoint: .* does not fit convnet"):
        pretrain_pool.build_base(cfg, source, spec, tmp_path, "cpu", NullTracker())


def test_missing_checkpoint_file_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="pretrain_pool.checkpoint: .*is not a file"):
        config_of(["--config", str(BASE), "--set", f"pretrain_pool.checkpoint={tmp_path / 'none.pt'}"])


def test_variant_names_label_results_and_apply_their_keys(pool_dir):
    """Ablation variants: distill.variants.<name> = a method + distill keys; results carry the name."""
    out = pool_dir / "syn_variant"
    variant = "distill.variants={teddy_post1: {method: teddy, pool: post, pool_size: 1}}"
    argv = ["distill", *CFG, "--set", variant, "--set", "distill.methods=[teddy_post1, random]"]
    argv += ["--data", str(pool_dir / "data"), "--pool", str(pool_dir / "pool")]
    assert cli.main([*argv, "--method", "teddy_post1", "--ipc", "1", "--seed", "0", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "teddy_post1" and metrics["algorithm"] == "teddy" and metrics["pool_size"] == 1
    assert load_torch(out / "synthetic.pt")["method"] == "teddy_post1"


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "distill.variants={t3: {method: teddy, pool_sise: 3}}",
            "distill.variants.t3.pool_sise.*did you mean 'pool_size'",
        ),
        ("distill.variants={teddy: {method: teddy}}", "cannot reuse a method name"),
        ("distill.methods=[teddy_x, random]", "'teddy_x' is neither a method"),
    ],
)
def test_bad_variants_fail_with_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        config_of(["--config", str(BASE), "--set", override])


@pytest.mark.parametrize("arch", ["convnet", "resnet18", "resnet50", "mobilenetv2"])
def test_every_pool_architecture_prunes_and_reloads_exactly(arch):
    """Post generation for the ConvNet and the small-input torchvision families: fewer parameters
    and FLOPs, same outputs after a weights_only round trip through the stored state dict."""
    spec = models.InputSpec(10, 1, 16, (0.3,), (0.3,))
    model = models.create_model(arch, spec, width=16)
    before = pretrain_pool.describe(model, spec)
    pruned = prune.prune(model, 0.5, spec).eval()
    after = pretrain_pool.describe(pruned, spec)
    assert after["params"] < before["params"] and after["flops"] < before["flops"]
    reloaded = models.from_checkpoint(models.checkpoint(pruned, arch, spec, 16, pruned=True)).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pruned(x), reloaded(x), atol=1e-5)


def test_ensemble_teacher_averages_every_member_prior_and_post(pool_dir):
    """relabel.teacher: ensemble = the mean logits of all pool members (the docs say 'the pool'),
    each loaded here from its own file, not through load_pool."""
    from teddy.io import artifacts

    manifest = json.loads((pool_dir / "pool" / "manifest.json").read_text())
    teacher = pool.Teacher(pool_dir / "pool", "ensemble", "cpu")
    assert sorted(e["file"] for e in teacher.entries) == sorted(m["file"] for m in manifest["members"])
    assert {e["origin"] for e in teacher.entries} == {"prior", "post"}
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        logits = [
            models.from_checkpoint(artifacts.load_member(pool_dir / "pool" / m["file"], m["sha256"]))
            .eval()(x)
            .float()
            for m in manifest["members"]
        ]
        assert torch.allclose(teacher(x), torch.stack(logits).mean(0), atol=1e-5)


def test_multi_architecture_pool_members_and_selection(tmp_path):
    """pretrain_pool.member_archs adds each architecture's own prior trajectory; distill.pool_archs
    draws from the chosen architectures only (e.g. a student's architecture held out)."""
    cfg = ["--config", str(BASE), "--config", str(TINY), "--set", "pretrain_pool.member_archs=[mobilenetv2]"]
    assert cli.main(["prepare-data", *cfg, "--out", str(tmp_path / "data")]) == 0
    assert (
        cli.main(["pretrain-pool", *cfg, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pool")])
        == 0
    )
    manifest = json.loads((tmp_path / "pool" / "manifest.json").read_text())
    got = [(m["job"], m["arch"], m["epoch"]) for m in manifest["members"]]
    assert got == [("prior_s0", "convnet", 1), ("prior_s0", "convnet", 2)] + [
        ("prior_mobilenetv2_s0", "mobilenetv2", 1),
        ("prior_mobilenetv2_s0", "mobilenetv2", 2),
    ]
    members, entries = pool.load_pool(tmp_path / "pool", "prior", "cpu", archs=["mobilenetv2"])
    assert [e["arch"] for e in entries] == ["mobilenetv2"] * 2
    assert all(type(m[1]).__name__ == "MobileNetV2" for m in members)  # rebuilt as what was trained
    assert [e["arch"] for e in pool.load_pool(tmp_path / "pool", "prior", "cpu", archs=["convnet"])[1]] == [
        "convnet"
    ] * 2
    with pytest.raises(RuntimeError, match="no post members of architectures"):
        pool.load_pool(tmp_path / "pool", "post", "cpu", archs=["mobilenetv2"])
    # a variant holding an architecture out of the pool (a list-valued key: it failed validation
    # once the frozen config's tuple reached the schema)
    held = "distill.variants={convnet_only: {method: teddy, pool_archs: [convnet]}}"
    out = tmp_path / "syn_held_out"
    argv = ["distill", *cfg, "--set", held, "--set", "distill.methods=[convnet_only, random]"]
    argv += ["--data", str(tmp_path / "data"), "--pool", str(tmp_path / "pool"), "--method", "convnet_only"]
    assert cli.main([*argv, "--ipc", "1", "--seed", "0", "--out", str(out)]) == 0
    drawn = json.loads((out / "metrics.json").read_text())["pool_members"]
    assert drawn == [m["file"] for m in manifest["members"] if m["arch"] == "convnet"]
    assert naming.parse_member(load_cfg(cfg).pretrain_pool, "prior_mobilenetv2_s0") == (
        "prior",
        0,
        "mobilenetv2",
    )


def test_pool_archs_must_be_in_the_pool():
    from teddy import config

    with pytest.raises(config.ConfigError, match=r"distill.pool_archs: 'resnet18' has no members in the pool"):
        config.load([BASE, TINY], ["distill.pool_archs=[resnet18]"])


def load_cfg(args: list[str]):
    from teddy import config

    paths = [a for a, flag in zip(args[1:], args, strict=False) if flag == "--config"]
    sets = [a for a, flag in zip(args[1:], args, strict=False) if flag == "--set"]
    return config.load(paths, sets)
