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
