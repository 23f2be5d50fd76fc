"""Checksums prove a file is the one written, not that it is right (issue 36, 3): data, teacher and
soft labels that stay internally consistent after a wrong edit (checksums redone) are still caught by
cheap semantic checks: per-class label counts against the manifest, a base model below chance on
val, stored soft labels against a re-run of the teacher on a sample of views, and a merge against
shards of another set."""

import json
import shutil

import pytest
import torch

from teddy import cli
from teddy.io import artifacts

from ..conftest import REPORT_ONE_RANDOM, evaluate_args, tiny_soft_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semantic")
    cfg, data, pool, syn, soft = tiny_soft_labels(tmp)
    return cfg, data, pool, syn, soft


def shift_val_labels(data, fix_counts: bool) -> None:
    """Every val label moved to the next class, the cache's checksum (and the manifest's) redone."""
    cache = torch.load(data / "cache.pt", weights_only=True)
    cache["val_y"] = (cache["val_y"] + 1) % 10
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["cache_sha256"] = artifacts.save(cache, data / "cache.pt")
    if fix_counts:
        manifest["val_per_class"] = torch.bincount(cache["val_y"], minlength=10).tolist()
    (data / "manifest.json").write_text(json.dumps(manifest))


def test_shifted_val_labels_are_caught_by_their_counts(tiny, tmp_path, capsys):
    data = shutil.copytree(tiny[1], tmp_path / "results" / "data")
    shift_val_labels(data, fix_counts=False)
    assert cli.main(["verify", str(tmp_path / "results")]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "cache.pt" in out and "per class" in out, out


def test_a_base_model_below_chance_stops_the_pool(tiny, tmp_path, capsys):
    cfg = tiny[0]
    data = shutil.copytree(tiny[1], tmp_path / "data")
    shift_val_labels(data, fix_counts=True)  # consistent in every recorded number
    code = cli.main(
        ["pretrain-pool", *cfg, "--data", str(data), "--member", "base", "--out", str(tmp_path / "base")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "below chance" in err and "val labels" in err, err
    assert not (tmp_path / "base" / "members.json").exists()


def test_random_logits_in_a_soft_label_file_are_caught(tiny, tmp_path, capsys):
    cfg, data, pool, syn, soft = tiny
    forged = shutil.copytree(soft, tmp_path / "soft")
    record = torch.load(forged / "soft_labels.pt", weights_only=True)
    record["logits"] = torch.randn_like(record["logits"].float()).half() * 5
    artifacts.save(record, forged / "soft_labels.pt")  # checksum redone
    argv = [
        "evaluate",
        *cfg,
        *evaluate_args(data, syn, forged),
        "--pool",
        str(pool),
        "--out",
        str(tmp_path / "e"),
    ]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "disagree with the teacher" in err, err
    honest = [
        "evaluate",
        *cfg,
        *evaluate_args(data, syn, soft),
        "--pool",
        str(pool),
        "--out",
        str(tmp_path / "ok"),
    ]
    assert cli.main(honest) == 0


def test_a_base_model_swapped_with_checksums_redone_is_caught(tiny, tmp_path, capsys):
    """Another model's weights under base.pt, every checksum and record redone: the teacher no
    longer scores the val top-1 recorded when it was built."""
    cfg, data, pool, syn, soft = tiny
    swapped = shutil.copytree(pool, tmp_path / "pool")
    base = swapped / "base" / "base.pt"
    shutil.copy(swapped / "prior_s0" / "e001.pt", base)  # an early checkpoint: far weaker
    digest = artifacts.hash_file(base)
    artifacts.record_checksum(base, digest)
    for record, key in ((swapped / "manifest.json", "base"), (swapped / "base" / "members.json", 0)):
        content = json.loads(record.read_text())
        content[key]["sha256"] = digest
        record.write_text(json.dumps(content))
    argv = ["evaluate", *cfg, *evaluate_args(data, syn, soft), "--pool", str(swapped)]
    code = cli.main([*argv, "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "recorded when it was built" in err, err


def test_a_merge_takes_only_the_shards_of_its_own_set(tiny, tmp_path, capsys):
    """Shards of another seed, another config or the same shard twice would merge into a set that
    no single run made (the batch indices still fit): each is refused by name, no set is written."""
    cfg, data, pool = tiny[:3]
    common = [*cfg, "--data", str(data), "--method", "teddy", "--ipc", "2"]

    def shard(name, i, seed, *extra):
        out = tmp_path / name
        argv = ["distill", *common, *extra, "--pool", str(pool), "--seed", str(seed)]
        assert cli.main([*argv, "--shard", f"{i}/2", "--out", str(out)]) == 0
        return str(out)

    def merge(*parts):
        capsys.readouterr()
        out = tmp_path / f"merged{len(list(tmp_path.iterdir()))}"
        code = cli.main(["distill", *common, "--seed", "0", "--merge", *parts, "--out", str(out)])
        return code, capsys.readouterr().err, out

    a0, a1 = shard("a0", 0, 0), shard("a1", 1, 0)
    b1 = shard("b1", 1, 1)  # seed 1's shard 1
    c1 = shard("c1", 1, 0, "--set", "distill.lr=0.05")  # seed 0's shard 1 under another lr
    code, err, out = merge(a0, b1)
    assert code == 1 and f"{b1} is a shard of teddy ipc2 seed1, not of teddy ipc2 seed0" in err
    assert not (out / "synthetic.pt").exists()
    code, err, out = merge(a0, c1)
    assert code == 1 and f"{c1} was synthesized with other distill settings or another pool than {a0}" in err
    code, err, out = merge(a0, a0, a1)
    assert code == 1 and "a merge takes each shard of one split (i/n, one n) once" in err
    code, err, out = merge(a0, a1)
    assert code == 0 and (out / "synthetic.pt").exists()


def test_a_report_refuses_runs_made_under_another_protocol(tiny, tmp_path, capsys):
    """An evaluation (or the relabel it read) made under other settings than the report's config
    (a stale folder of an earlier config, a run copied in from another study) has numbers the report
    would pair and print under a protocol they were not made with: refused, naming the key, its two
    values and a folder; nothing written."""
    cfg, data, pool, syn, soft = tiny
    grid = REPORT_ONE_RANDOM
    ev = tmp_path / "ev"
    argv = ["evaluate", *cfg, *evaluate_args(data, syn, soft), "--set", "evaluate.lr=0.05", "--out", str(ev)]
    assert cli.main(argv) == 0

    def report(*sets):
        capsys.readouterr()
        out = tmp_path / f"report{len(list(tmp_path.iterdir()))}"
        code = cli.main(["report", *cfg, *grid, *sets, "--evaluations", str(ev), "--out", str(out)])
        return code, capsys.readouterr().err.strip(), out

    code, err, out = report()  # the config's students train at lr 0.002; this one trained at 0.05
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"evaluate.lr = 0.05 where this config has 0.002, in 1 job folder(s), e.g. {ev}" in err, err
    assert not (out / "summary.csv").exists() and not (out / "metrics.json").exists()
    # its own lr, but soft labels cropped otherwise than this config says
    code, err, out = report("--set", "evaluate.lr=0.05", "--set", "relabel.crop_scale_min=0.5")
    assert (
        code == 1
        and f"relabel.crop_scale_min = 0.08 where this config has 0.5, in 1 job folder(s), e.g. {soft}" in err
    )
    assert not (out / "summary.csv").exists() and not (out / "metrics.json").exists()
    code, err, out = report("--set", "evaluate.lr=0.05")  # the protocol it ran under
    assert code == 0 and (out / "summary.csv").is_file(), err
