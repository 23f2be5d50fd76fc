"""Snakemake and DVC run the same pipeline: both read teddy/workflow/plan.py's stage table, dvc.yaml is
generated from it (and committed as generated), and Snakemake schedules exactly its jobs with the
same commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from teddy import protocol
from teddy.cli import STAGES

from .conftest import BASE, ROOT

BIN = Path(sys.executable).parent
STAGE_NAMES = {s.replace("-", "_") for s in STAGES}


def snakemake(*args, cwd=ROOT):
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True)


KINDS = sorted(STAGE_NAMES | {"distill_shard"}, key=len, reverse=True)


def test_one_name_per_stage_everywhere():
    rules = {p.stem for p in (ROOT / "workflow" / "rules").glob("*.smk")} - {"common"}
    dvc_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    kinds = {next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in dvc_stages}
    sections = set(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())) - {
        "study",
        "run",
        "tracking",
        "resources",
    }
    assert rules == kinds - {"distill_shard"} == sections == STAGE_NAMES


def test_committed_dvc_yaml_is_the_generated_one():
    """dvc.yaml is generated (`make dvc-yaml`); a hand edit or a stage-table change without
    regenerating fails here, and `teddy workflow dvc --check` says how to fix it."""
    from teddy.workflow import dvc

    assert (ROOT / "dvc.yaml").read_text() == dvc.dvc_yaml([["config/studies/quickstart.yaml"]])


def test_workflow_check_names_the_fix(tmp_path, monkeypatch):
    from teddy import cli

    monkeypatch.chdir(ROOT)
    stale = tmp_path / "dvc.yaml"
    stale.write_text((ROOT / "dvc.yaml").read_text().replace("--ipc 10", "--ipc 11"))
    assert cli.main(["workflow", "dvc", "--out", str(stale), "--check"]) == 1
    assert cli.main(["workflow", "dvc", "--out", str(stale)]) == 0
    assert cli.main(["workflow", "dvc", "--out", str(stale), "--check"]) == 0


RICH = (  # every kind of job: shards, post members, another architecture's priors, a variant, full data
    "pretrain_pool:\n  post_members: 2\n  member_archs: [mobilenetv2]\n"
    "distill:\n  shards: 2\n  methods: [teddy, sre2l, random, sel]\n"
    "  variants: {sel: {method: teddy, init: teacher, iterations: 0}}\n"
    "evaluate:\n  full_data: true\n"
)


def normalise(command: str) -> tuple[str, ...]:
    """A Snakemake job's printed shell command as teddy arguments: $(dirname X) evaluated, the
    resolved-config and thread options and the log redirection dropped."""
    command = re.sub(
        r"\$\(dirname ([^)]+)\)", lambda m: " ".join(Path(p).parent.as_posix() for p in m[1].split()), command
    )
    tokens = command.split(" > ")[0].split()
    tokens = tokens[tokens.index("teddy") + 1 :]
    out = []
    skip = 0
    for i, token in enumerate(tokens):
        if skip:
            skip -= 1
        elif token == "--config" or (token == "--set" and tokens[i + 1].startswith("run.threads=")):
            skip = 1
        else:
            out.append(token)
    return tuple(out)


def test_snakemake_schedules_exactly_the_stage_tables_jobs_with_the_same_commands(tmp_path):
    from teddy import config
    from teddy.workflow import plan

    delta = tmp_path / "rich.yaml"
    delta.write_text(RICH)
    result = snakemake(
        "-n", "-p", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line.strip() for line in result.stdout.splitlines() if " -m teddy " in line]
    by_snakemake = sorted(normalise(c) for c in commands)
    jobs = plan.plan(config.to_dict(config.load([BASE, delta])))
    assert sorted(j.command for j in jobs) == by_snakemake
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert {k: int(v) for k, v in counts.items() if k not in ("all", "total")} == {
        stage: sum(j.stage == stage for j in jobs) for stage in {j.stage for j in jobs}
    }
    assert int(counts["pretrain_pool_post"]) == 2 and int(counts["distill_shard"]) == 2 * 3 * 2


def test_snakemake_dry_run_schedules_every_stage():
    result = snakemake("-n", "--forceall", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert STAGE_NAMES <= set(counts)
    assert int(counts["evaluate"]) == 2 * 2 * 2  # methods × ipcs × archs of config/config.yaml


@pytest.mark.parametrize(
    "delta,message",
    [
        ("distill:\n  iteratons: 3\n", "did you mean 'iterations'"),
        ("distill:\n  ipcs: [1, 1000]\n", "IPC [1000] exceeds"),
        ("run:\n  dataset: mnist\n", "run.dataset: 'mnist' is not one of"),
    ],
)
def test_snakemake_rejects_bad_config_before_any_job(tmp_path, delta, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(delta)
    result = snakemake("-n", "--configfile", str(bad), "--cores", "1")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_multi_architecture_pool_jobs_are_scheduled_and_named_by_architecture(tmp_path):
    delta = tmp_path / "multi.yaml"
    delta.write_text(
        "pretrain_pool:\n  member_archs: [shufflenetv2, 'torchvision:resnet18']\n  prior_seeds: [0, 1]\n"
    )
    result = snakemake("-n", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert int(counts["pretrain_pool_prior_arch"]) == 4 and int(counts["pretrain_pool_prior"]) == 2
    # shufflenetv2's folder must not be taken for prior_s<seed> (prior_s + 'hufflenetv2_s0')
    assert "prior_shufflenetv2_s1/members.json" in result.stdout
    assert (
        "--member prior:torchvision:resnet18:1"
        in snakemake(
            "-n", "-p", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta)
        ).stdout
    )


def test_relabel_jobs_depend_on_the_full_data_epochs_only_when_that_row_is_on():
    """The stored views per image are the student epochs (the full-data row's its own): relabel's
    params carry evaluate.epochs, and evaluate.full_data_epochs while evaluate.full_data is on."""
    from teddy import config
    from teddy.workflow import params

    def keys(*over):
        return params.param_keys(config.to_dict(config.load([BASE], list(over))), "relabel")

    assert "evaluate.epochs" in keys() and "evaluate.full_data_epochs" not in keys()
    assert "evaluate.full_data_epochs" in keys("evaluate.full_data=true")
    assert "evaluate.full_data_epochs" in params.param_keys(config.to_dict(config.load([BASE])), "evaluate")


def test_the_full_data_row_runs_on_full_data_archs_only():
    """evaluate.full_data_archs: the full-data row's students (HLR needs only the hard-label ones);
    the sets keep every student, and a random row at a configured IPC is a set, not the full row."""
    from teddy import config
    from teddy.workflow import plan

    over = ["evaluate.full_data=true", "evaluate.archs=[convnet, resnet18]", "run.seeds=[0, 1]"]
    cfg = config.load([BASE], [*over, "evaluate.full_data_archs=[convnet]"])
    full = protocol.full_data_ipc(cfg)
    grid = plan.evaluation_grid(config.to_dict(cfg))
    rows = {(g["method"], g["ipc"], g["arch"]) for g in grid}
    assert {a for m, i, a in rows if i == full} == {"convnet"} and len(grid) == 2 * (2 * 2 * 2 + 1)
    assert {a for m, i, a in rows if m == "teddy"} == {"convnet", "resnet18"}
    everyone = plan.evaluation_grid(config.to_dict(config.load([BASE], over)))
    assert {g["arch"] for g in everyone if g["ipc"] == full} == {"convnet", "resnet18"}
    own = config.load([BASE], [*over, "evaluate.full_data_archs=[convnet]", f"distill.ipcs=[1, {full}]"])
    at_full = [g for g in plan.evaluation_grid(config.to_dict(own)) if g["ipc"] == full]
    assert {g["arch"] for g in at_full if g["method"] == "random"} == {"convnet", "resnet18"}
    with pytest.raises(config.ConfigError, match=r"evaluate.full_data_archs: \['vgg'\] not in evaluate.archs"):
        config.load([BASE], [*over, "evaluate.full_data_archs=[vgg]"])


def test_only_the_stages_that_resolve_registry_strings_depend_on_what_they_name():
    """A stage outside deps.RESOLVES_BY_NAME must not call the resolver (else a change to an
    objective would not rerun it); and the loss is distill's and evaluate's code, not data prep's."""
    import ast

    from teddy.workflow import deps

    for stage in ("prepare_data", "pretrain_pool", "distill", "relabel", "evaluate", "report"):
        files = deps.code_files(stage, absolute=True)
        if stage in deps.RESOLVES_BY_NAME:
            assert any(f.endswith("teddy/method/objectives.py") for f in files)
            continue
        resolver = set(deps.RESOLVES_BY_NAME.values())
        for file in files:
            if file.endswith("teddy/method/registry.py"):
                continue  # where the resolver is defined
            calls = [
                n
                for n in ast.walk(ast.parse(Path(file).read_text()))
                if isinstance(n, ast.Call)
                and (getattr(n.func, "attr", None) in resolver or getattr(n.func, "id", None) in resolver)
            ]
            assert not calls, f"{stage}: {file} calls {resolver} but does not depend on what it resolves"
    for stage in ("prepare_data", "pretrain_pool"):
        assert not any(f.endswith(("losses.py", "objectives.py")) for f in deps.code_files(stage))


def test_dvc_runs_each_job_with_the_threads_snakemake_gives_it():
    """Snakemake passes --set run.threads={threads} (resources.<stage>.cpus); a DVC stage without
    it ran with torch's default threads and gave other numbers for the same config."""
    from teddy import config
    from teddy.workflow import dvc, plan

    stages = yaml.safe_load(dvc.dvc_yaml([["config/config.yaml"]]))["stages"]
    cpus = config.to_dict(config.load([BASE]))["resources"]
    for job in plan.plan(config.to_dict(config.load([BASE]))):
        assert f"--set run.threads={cpus[job.code]['cpus']} " in stages[job.name]["cmd"], job.name


def test_every_job_is_found_by_the_folder_it_writes():
    """Snakemake's rules take their commands from the plan by output folder: each job's folder is
    its own, and a folder no job writes is an error naming it, not a wrong command."""
    from teddy import config
    from teddy.workflow import plan

    data = config.to_dict(config.load([BASE]))
    jobs = plan.plan(data)
    commands = plan.commands_by_folder([data])
    assert len(commands) == len(jobs)
    for job in jobs:
        folder = job.command[job.command.index("--out") + 1]
        assert plan.command_in(commands, folder).split() == list(job.command)
    with pytest.raises(ValueError, match="results/nowhere: no job of the plan writes this folder"):
        plan.command_in(commands, "results/nowhere")
