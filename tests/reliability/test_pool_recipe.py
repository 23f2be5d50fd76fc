"""A pool is used only by a config that would build the same pool (issue 36, 1 and 3): every pool
job records its recipe (the config keys its result depends on, and the data it trained on) beside
its members; every reader checks the members it loads against its own config and data, and the
manifest against each job's own member records."""

import json
import shutil

import pytest

from teddy import cli

from ..conftest import BASE, TINY, relabel_args

CFG = ["--config", str(BASE), "--config", str(TINY)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    assert cli.main(["prepare-data", *CFG, "--out", str(tmp / "data")]) == 0
    assert cli.main(["pretrain-pool", *CFG, "--data", str(tmp / "data"), "--out", str(tmp / "pool")]) == 0
    sets = ["--method", "random", "--ipc", "1", "--seed", "0"]
    assert cli.main(["distill", *CFG, "--data", str(tmp / "data"), *sets, "--out", str(tmp / "random")]) == 0
    return tmp


def distill(tmp, out, *extra, pool=None, data=None):
    argv = ["distill", *CFG, *extra, "--data", str(data or tmp / "data"), "--pool", str(pool or tmp / "pool")]
    return cli.main([*argv, "--method", "teddy", "--ipc", "1", "--seed", "0", "--out", str(out)])


def refused(capsys, code, out, *said):
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in said:
        assert text in err, err
    assert not list(out.rglob("*.pt")), "nothing written"
    return err


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("pretrain_pool.width=16", "pretrain_pool.width: 8 in the pool, 16 in this config"),
        ("pretrain_pool.epochs=5", "pretrain_pool.epochs: 3 in the pool, 5 in this config"),
        ("pretrain_pool.lr=0.07", "pretrain_pool.lr"),
    ],
)
def test_distill_refuses_a_pool_of_another_recipe(built, tmp_path, capsys, change, said):
    out = tmp_path / "syn"
    refused(capsys, distill(built, out, "--set", change), out, "another recipe", said, "pretrain-pool")


def test_the_same_recipe_is_used(built, tmp_path):
    assert distill(built, tmp_path / "syn", "--set", "distill.lr=0.2") == 0  # a distill knob: same pool


def test_a_pool_trained_on_other_data_is_refused(built, tmp_path, capsys):
    other = tmp_path / "data"
    assert cli.main(["prepare-data", *CFG, "--set", "prepare_data.split_seed=1", "--out", str(other)]) == 0
    capsys.readouterr()
    out = tmp_path / "syn"
    code = distill(built, out, "--set", "prepare_data.split_seed=1", data=other)
    refused(capsys, code, out, "trained on other data", str(other))


def test_the_relabel_teacher_is_checked_too(built, tmp_path, capsys):
    out = tmp_path / "soft"
    code = cli.main(
        [
            "relabel",
            *CFG,
            "--set",
            "pretrain_pool.epochs=5",
            *relabel_args(built / "pool", built / "random"),
            "--out",
            str(out),
        ]
    )
    refused(capsys, code, out, "another recipe", "pretrain_pool.epochs")


def test_a_manifest_missing_a_member_of_its_job_is_refused(built, tmp_path, capsys):
    pool = shutil.copytree(built / "pool", tmp_path / "pool")
    manifest = json.loads((pool / "manifest.json").read_text())
    dropped = manifest["members"].pop()
    (pool / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "syn"
    refused(capsys, distill(built, out, pool=pool), out, "manifest.json", dropped["file"], "members.json")
