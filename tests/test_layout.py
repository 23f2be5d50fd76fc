"""DESIGN.md §3b: stage modules import only what is below them, never each other."""

import ast

import pytest

from .conftest import ROOT

STAGES = ("prepare_data", "pretrain_pool", "distill", "relabel", "evaluate", "report")


def imported_modules(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_module_imports_another(stage):
    others = {f"teddy.stages.{s}" for s in STAGES if s != stage}
    assert not imported_modules(ROOT / "teddy" / "stages" / f"{stage}.py") & others


# What an edit of a package file reruns: the stages whose code files (teddy.workflow.deps) hold it.
# Editing a stage module reruns that stage (and, through its outputs, what reads them) only; the
# method's math never reruns data preparation or the pool; the workflow's own generators, the SLURM
# resources and the estimator rerun nothing.
POOL_USERS = {"distill", "relabel", "evaluate"}
TRAINERS = {"pretrain_pool", "distill", "relabel", "evaluate"}
RERUNS = {
    **{f"teddy/stages/{s}.py": {s} for s in STAGES},
    "teddy/method/objectives.py": {"distill"},
    "teddy/method/meta.py": {"distill"},
    "teddy/method/init.py": {"distill"},
    "teddy/method/losses.py": {"distill", "evaluate"},
    "teddy/pool/prune.py": {"pretrain_pool"},
    "teddy/pool/members.py": POOL_USERS,
    "teddy/augment.py": TRAINERS,
    "teddy/train.py": TRAINERS,
    "teddy/health.py": {"pretrain_pool", "evaluate"},
    "teddy/workflow/dvc.py": set(),
    "teddy/workflow/deps.py": set(),
    "teddy/workflow/resources.py": set(),
    "teddy/estimate.py": set(),
    "teddy/studies.py": set(),
    "teddy/data/miniature.py": set(),
}


@pytest.mark.parametrize("file", sorted(RERUNS))
def test_an_edit_reruns_only_the_stages_that_run_the_file(file):
    from teddy.workflow import deps

    assert (ROOT / file).is_file(), f"{file} moved: update RERUNS"
    assert {s for s in STAGES if file in deps.code_files(s)} == RERUNS[file]


def test_every_package_folder_says_what_it_holds():
    """The layout is the architecture: each subpackage's __init__ states its part (README: Layout)."""
    folders = [p.parent for p in (ROOT / "teddy").glob("*/__init__.py")]
    assert {f.name for f in folders} >= {"stages", "method", "pool", "data", "io", "runtime", "workflow"}
    for folder in folders:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and len(doc) > 30, f"teddy/{folder.name}/__init__.py: no docstring"
    readme = (ROOT / "README.md").read_text()
    for folder in folders:
        assert f"{folder.name}/" in readme, f"README's Layout section does not name teddy/{folder.name}/"


def test_the_config_loader_plan_and_registries_load_no_torch():
    """The config loader, the plan and the registries are what a config check, `teddy workflow`
    and the Snakefile's DAG need; they stay torch-free (teddy.method.registry says so) so that
    checking a config or building the DAG costs no torch start-up (architecture names are read
    from models.py's source). Function-local imports of torch-heavy helpers in them carry a
    comment saying so (the SLURM runtime estimate of a runtime-0 config loads torch, only then)."""
    import subprocess
    import sys

    probe = (
        "import sys, teddy.config, teddy.workflow.plan, teddy.workflow.params, teddy.workflow.deps, "
        "teddy.pool.naming, teddy.method.registry, teddy.data.datasets, teddy.data.layouts, "
        "teddy.workflow.resources; teddy.config.load([teddy.config.study_path('quickstart')]); "
        "print(sorted(m for m in ('torch', 'torchvision', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
