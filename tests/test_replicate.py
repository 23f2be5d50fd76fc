"""pretrain_pool.replicate: every run seed trains its own pool (replicate seed = pool seed), so the
intervals over seeds include teacher-to-teacher variation. The plan, Snakemake and the stages agree
on which pool a seed's jobs read, and a seed's jobs refuse another seed's pool."""

import pytest

from teddy import cli, config, protocol
from teddy.io.files import read_json
from teddy.workflow import plan

from .conftest import BASE, TINY
from .test_workflow import normalise, snakemake

REPLICATE = """
run: {seeds: [0, 3]}
pretrain_pool: {replicate: true, prior_seeds: [0, 1], post_members: 1}
distill: {methods: [random, teddy], ipcs: [1]}
"""


def test_replicate_config_offsets_every_pool_seed_by_the_run_seed():
    data = config.to_dict(
        config.load([BASE], overrides=["pretrain_pool.replicate=true", "pretrain_pool.seed=2"])
    )
    seen = protocol.replicate_config(data, 5)["pretrain_pool"]
    assert (seen["seed"], seen["prior_seeds"]) == (7, [5])
    off = config.to_dict(config.load([BASE]))
    assert protocol.replicate_config(off, 5) == off


def test_each_seed_reads_its_own_pool_and_snakemake_schedules_the_same(tmp_path):
    delta = tmp_path / "replicate.yaml"
    delta.write_text(REPLICATE)
    jobs = plan.plan(config.to_dict(config.load([BASE, delta])))
    manifests = [j for j in jobs if j.stage == "pretrain_pool"]
    assert len(manifests) == 2 and manifests[0].outs != manifests[1].outs
    pools = {
        j.command[-1]: dict(zip(j.command, j.command[1:], strict=False)).get("--replicate", "0")
        for j in manifests
    }
    assert sorted(pools.values()) == ["0", "3"]  # seed 0's pool is the recipe's own: no --replicate 0
    assert sum("--replicate" in j.command for j in jobs if j.stage.startswith("pretrain_pool")) == 5
    # seed 3's prior trajectories are seeds 3 and 4; every pool job says whose pool it builds
    members = [j.command for j in jobs if j.stage == "pretrain_pool_prior"]
    assert sorted(c[c.index("--member") + 1] for c in members) == ["prior:0", "prior:1", "prior:3", "prior:4"]
    for job in jobs:
        if job.stage in ("distill_shard", "relabel", "evaluate"):
            seed = job.command[job.command.index("--seed") + 1]
            pool = job.command[job.command.index("--pool") + 1]
            assert pools[pool] == seed, job.name
    result = snakemake(
        "-n", "-p", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = sorted(normalise(c.strip()) for c in result.stdout.splitlines() if " -m teddy " in c)
    assert commands == sorted(j.command for j in jobs)


def test_a_seed_refuses_another_seeds_pool(tmp_path, capsys):
    cfg = ["--config", str(BASE), "--config", str(TINY), "--set", "pretrain_pool.replicate=true"]
    d, p = tmp_path / "data", tmp_path / "pool1"
    assert cli.main(["prepare-data", *cfg, "--out", str(d)]) == 0
    assert cli.main(["pretrain-pool", *cfg, "--data", str(d), "--replicate", "1", "--out", str(p)]) == 0
    manifest = read_json(p / "manifest.json")
    assert manifest["base"]["seed"] == 1 and {m["seed"] for m in manifest["members"]} == {1}
    distill = ["distill", *cfg, "--data", str(d), "--pool", str(p), "--method", "sre2l", "--ipc", "1"]
    assert cli.main([*distill, "--seed", "1", "--out", str(tmp_path / "s1")]) == 0
    assert cli.main([*distill, "--seed", "0", "--out", str(tmp_path / "s0")]) == 1
    err = capsys.readouterr().err
    assert "another recipe" in err and "pretrain_pool.seed: 1 in the pool, 0 in this config" in err
    plain = ["--config", str(BASE), "--config", str(TINY)]
    assert cli.main(["pretrain-pool", *plain, "--data", str(d), "--replicate", "1", "--out", str(p)]) == 2
    assert "needs pretrain_pool.replicate" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_without_replicate_every_seed_shares_one_pool(seeds, tmp_path):
    data = config.to_dict(config.load([BASE], overrides=[f"run.seeds={seeds}"]))
    assert sum(j.stage == "pretrain_pool" for j in plan.plan(data)) == 1


def test_the_replicate_flag_itself_is_not_part_of_a_pools_fingerprint():
    """Only the seeds a replicate's pool is trained from tell pools apart: seed 0's pool under
    replicate is the one pool of the same recipe without it (built once), and turning the flag on
    did not move every existing pool to a new folder."""
    from teddy.workflow import params

    off = config.to_dict(config.load([BASE], overrides=["run.seeds=[0, 1]"]))
    on = config.to_dict(config.load([BASE], overrides=["run.seeds=[0, 1]", "pretrain_pool.replicate=true"]))
    keys = params.replica_keys(on)
    assert keys[0]["pool_key"] == params.recipe_keys(off)["pool_key"] != keys[1]["pool_key"]
