"""Studies: one file each (config/studies/), loaded with its extends chain, no machine keys in it,
its own results folder, data and pool shared by recipe; the committed tree is consistent with them
(every report names its study and commit, no temporary or absolute path; results/INDEX.md current)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from teddy import cli, config
from teddy.workflow import params, plan

from .conftest import ROOT

BIN = Path(sys.executable).parent


def project(tmp_path: Path, studies: dict[str, str], base: str = "") -> Path:
    """A folder with config/config.yaml (the package's, + ``base``) and config/studies/<name>.yaml."""
    (tmp_path / "config" / "studies").mkdir(parents=True)
    defaults = config.read_yaml(config.DEFAULT_CONFIG)
    merged = config.deep_merge(defaults, yaml.safe_load(base) or {})
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(merged))
    for name, text in studies.items():
        (tmp_path / "config" / "studies" / f"{name}.yaml").write_text(text)
    return tmp_path


def load(path: Path, check_data: bool = False) -> dict:
    return config.to_dict(config.load([path], check_data=check_data))


def test_a_study_extends_its_projects_config_and_another_study(tmp_path):
    p = project(
        tmp_path,
        {
            "a": "question: Q a?\ndistill: {iterations: 7}\n",
            "b": "question: Q b?\nextends: a\nevaluate: {epochs: 3}\nheadline: {method: teddy, ipc: 1}\n",
        },
        base="distill: {lr: 0.5}\n",
    )
    b = load(p / "config" / "studies" / "b.yaml")
    assert (b["distill"]["iterations"], b["evaluate"]["epochs"], b["distill"]["lr"]) == (7, 3, 0.5)
    assert b["study"] == {"name": "b", "question": "Q b?", "headline": {"method": "teddy", "ipc": 1}}
    assert load(p / "config" / "studies" / "a.yaml")["study"]["headline"] is None  # not inherited from b


@pytest.mark.parametrize(
    "text,message",
    [
        ("distill: {iterations: 7}\nquestion: ''\n", "question: say in one sentence"),
        ("question: Q?\nrun: {device: cuda}\n", r"run.device: a machine choice.*--set run.device="),
        ("question: Q?\ndistill: {shards: 4}\n", "distill.shards: a machine choice"),
        ("question: Q?\ntracking: {enabled: false}\n", "tracking.enabled: a machine choice"),
        ("question: Q?\nextends: nowhere\n", "extends 'nowhere', but there is no study"),
        ("question: Q?\nextends: s\n", "extends forms a cycle"),
        ("question: Q?\nheadline: {method: sre2l, ipc: 1}\n", "study.headline.method: 'sre2l' is not in"),
    ],
)
def test_a_bad_study_file_names_the_key_and_the_fix(tmp_path, text, message):
    p = project(tmp_path, {"s": text})
    with pytest.raises(config.ConfigError, match=message):
        load(p / "config" / "studies" / "s.yaml", check_data=True)


def keys(tmp_path: Path, base: str, delta: str) -> tuple[dict, dict]:
    p = project(tmp_path, {"one": "question: one?\n", "two": "question: two?\n" + delta}, base=base)
    one, two = (params.recipe_keys(load(p / "config" / "studies" / f"{n}.yaml")) for n in ("one", "two"))
    return one, two


@pytest.mark.parametrize(
    "delta,shares_data,shares_pool",
    [
        ("distill: {iterations: 9}\nevaluate: {epochs: 5}\n", True, True),  # only the study's own jobs differ
        ("pretrain_pool: {width: 16}\n", True, False),  # another pool recipe: never shared
        ("pretrain_pool: {post_members: 2}\n", True, False),  # another set of members: another manifest
        ("prepare_data: {image_size: 8}\n", False, False),  # other data, hence another pool too
    ],
)
def test_data_and_pool_folders_are_shared_exactly_when_their_recipe_is(
    tmp_path, delta, shares_data, shares_pool
):
    one, two = keys(tmp_path, "", delta)
    assert (one["data_key"] == two["data_key"], one["pool_key"] == two["pool_key"]) == (
        shares_data,
        shares_pool,
    )
    assert one["study"] != two["study"]
    a, b = (plan.path("distill", **k, method="teddy", ipc=1, seed=0) for k in (one, two))
    assert a != b  # a study's own jobs never share a folder


def test_where_the_data_lives_is_not_part_of_the_recipe(tmp_path):
    """A study run on another machine (data elsewhere, more loader processes) finds the same folders."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = params.recipe_keys(load(project(tmp_path / "a", {"s": "question: q?\n"}) / "config/studies/s.yaml"))
    moved = "prepare_data: {root: /elsewhere, workers: 3, fashion_mnist_dir: /x}\n"
    two = params.recipe_keys(
        load(project(tmp_path / "b", {"s": "question: q?\n"}, moved) / "config/studies/s.yaml")
    )
    assert one == two


def test_snakemake_config_may_add_machine_keys_but_not_science_to_a_study(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    raw = config.read_yaml(config.DEFAULT_CONFIG)
    raw["run"]["threads"] = 3  # --config run='{threads: 3}': a machine key, laid over the study
    studies = config.workflow_studies({**raw, "study": "quickstart"}, tmp_path)
    (data, path) = studies["quickstart"]
    assert data["run"]["threads"] == 3 and data["study"]["name"] == "quickstart" and path.is_file()
    raw["distill"]["iterations"] = 1  # science: belongs in the study file
    with pytest.raises(config.ConfigError, match=r"distill.iterations set on the command line.*config/studies"):
        config.workflow_studies({**raw, "study": "quickstart"}, tmp_path)
    with pytest.raises(config.ConfigError, match="study 'nope'.*committed studies: .*quickstart"):
        config.workflow_studies({**config.read_yaml(config.DEFAULT_CONFIG), "study": "nope"}, tmp_path)


# -- the committed tree ------------------------------------------------------------------------------

ABSOLUTE = re.compile(r"(^|[\s'\"=])/(tmp|work|home|root|Users|var|scratch)/")


def report_folders() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout
    return sorted({(ROOT / f).parent for f in tracked.split() if f.endswith("/summary.md")})


def test_every_committed_report_names_its_study_and_commit_and_no_temporary_path():
    folders = report_folders()
    assert folders
    studies = set(config.study_names())
    for folder in folders:
        prov = json.loads((folder / "provenance.json").read_text())
        where = folder.relative_to(ROOT)
        assert prov["study"]["name"] in studies, where
        assert (ROOT / prov["study"]["file"]).is_file(), where
        assert re.fullmatch(r"[0-9a-f]{40}", prov["git_sha"]), where
        assert folder.parent.name == prov["study"]["name"] or folder.parent.parent.name == prov["study"]["name"]
        text = json.dumps(prov)
        assert not ABSOLUTE.search(text) and "/tmp/" not in text, (where, ABSOLUTE.search(text))


def test_results_index_is_current():
    """results/INDEX.md is what `python -m teddy index` writes from the committed studies and reports."""
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli.main(["index", "--check"]) == 0, "regenerate it: python -m teddy index"
    finally:
        os.chdir(cwd)


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def snakemake_jobs(dry_run: str) -> list[tuple[str, str]]:
    """(rule, folder it writes) of every job a ``snakemake -n`` output lists (``all`` left out)."""
    jobs = re.findall(r"^rule (\w+):\n(?:    (?!output).*\n)*    output: ([^,\n]+)", dry_run, re.M)
    return [(rule, os.path.dirname(first)) for rule, first in jobs if rule != "all"]


@pytest.mark.slow
def test_each_committed_study_schedules_exactly_its_own_jobs_in_both_tools(tmp_path):
    """One `snakemake -n` over every committed study lists exactly the jobs of their plans, each job
    once by the folder it writes (a study's own under results/<dataset>/<study>/, the data and pool
    of a recipe once for every study sharing it); the DVC stages generated for each study are
    exactly its plan's jobs."""
    names = config.study_names()
    expected = set()
    for name in names:
        data = config.to_dict(config.load([config.study_path(name)], check_data=False))
        jobs = plan.plan(data)
        expected |= {(j.stage, j.command[j.command.index("--out") + 1]) for j in jobs}
        out = tmp_path / f"{name}.yaml"
        assert cli.main(["workflow", "dvc", "--study", name, "--out", str(out)]) == 0
        assert sorted(yaml.safe_load(out.read_text())["stages"]) == sorted(j.name for j in jobs), name
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--forceall", "--cores", "1", "--config", f"study={','.join(names)}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    scheduled = snakemake_jobs(result.stdout)
    assert len(scheduled) == len(set(scheduled))  # no job twice
    for name in names:  # each study's own jobs, named so a failure says which study
        mine = {j for j in expected if f"/{name}/" in j[1]}
        assert {j for j in scheduled if f"/{name}/" in j[1]} == mine, name
    assert set(scheduled) == expected


def test_readme_headline_rows_are_the_index_rows():
    """The README's results table is copied from results/INDEX.md, cell for cell, never typed."""
    index = {}
    for line in (ROOT / "results" / "INDEX.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 7 and (m := re.match(r"\[?`(\w+)`", cells[0])):
            index[m[1]] = cells[2:5]
    rows = 0
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4 and (m := re.match(r"\[`(\w+)`\]\(docs/results/", cells[0])):
            assert cells[1:] == index[m[1]], m[1]
            rows += 1
    assert rows >= 3


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "results" / "INDEX.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, broken


def test_dvc_stages_of_a_study_take_machine_keys_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "dvc.yaml"
    assert (
        cli.main(["workflow", "dvc", "--study", "quickstart", "--set", "run.device=cuda", "--out", str(out)])
        == 0
    )
    commands = [s["cmd"] for s in yaml.safe_load(out.read_text())["stages"].values()]
    assert all(" --set run.device=cuda " in c for c in commands)
    assert (
        cli.main(
            ["workflow", "dvc", "--study", "quickstart", "--set", "distill.iterations=3", "--out", str(out)]
        )
        == 2
    )
    assert "only machine keys" in capsys.readouterr().err


def test_a_family_of_headlines_is_holm_adjusted_counting_studies_not_run_as_p_1():
    from teddy.studies import family_tests

    rows = [
        {"name": "a", "family": "f", "p": 0.01},
        {"name": "b", "family": "f", "p": 0.04},
        {"name": "c", "family": "f"},  # not run yet
        {"name": "d", "family": None, "p": 0.001},
    ]
    tests = family_tests(rows)
    assert set(tests) == {"a", "b"}
    assert "m = 3: 0.03)" in tests["a"] and "m = 3: 0.08)" in tests["b"]
