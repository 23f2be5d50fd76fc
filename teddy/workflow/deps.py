"""A stage's code dependencies: the package files its command imports to run it, from the import graph."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # teddy/
CLI_STAGE_PATH = ("main",)  # the function of cli.py `teddy <stage>` runs (it hands the stage to teddy.runner)


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# A registry names classes by string ("teddy.method.objectives:BNMatching", registry.OBJECTIVES) and imports
# them when a stage asks (Method.make_objective). Only the stages here ask, so only their code files
# include what such strings name: editing the loss reruns distill and what follows, never data
# preparation or the pool. tests/test_workflow.py checks that no other stage's code calls the resolver.
RESOLVES_BY_NAME = {"distill": "make_objective"}


def _imports(file: Path, only_functions: tuple[str, ...] | None = None, by_name: bool = False) -> set[str]:
    """teddy modules ``file`` imports (anywhere; ``only_functions``: at module level and in those
    functions), and with ``by_name`` the ones it names by string (registry.OBJECTIVES'
    "teddy.method.objectives:Class")."""
    tree = ast.parse(file.read_text())
    nodes = list(ast.walk(tree))
    if only_functions is not None:
        nodes = [n for stmt in tree.body if not isinstance(stmt, ast.FunctionDef) for n in ast.walk(stmt)]
        nodes += [
            n
            for stmt in tree.body
            if isinstance(stmt, ast.FunctionDef) and stmt.name in only_functions
            for n in ast.walk(stmt)
        ]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif by_name and isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r"(teddy(?:\.\w+)+)(?::\w+)?", node.value)
            found |= {match[1]} if match else set()
    return {name for name in found if name.split(".")[0] == "teddy" and _module_file(name)}


def code_files(stage: str, absolute: bool = False) -> list[str]:
    """The package files ``teddy <stage>`` runs: cli's stage path, the stage module and everything
    they import, transitively; relative to the project root (DVC), or ``absolute`` (Snakemake, whose
    working directory need not hold the package). A change to any of them reruns the stage's jobs
    (Snakemake: input files; DVC: deps); a change elsewhere (report.py for distill) does not."""
    return [str(PACKAGE.parent / f) if absolute else f for f in _closure(stage)]


@functools.cache
def _closure(stage: str) -> tuple[str, ...]:
    todo = ["teddy.__main__", f"teddy.stages.{stage}"]
    seen: set[Path] = {_module_file("teddy")}
    cli = _module_file("teddy.cli")
    todo += sorted(_imports(cli, CLI_STAGE_PATH))
    seen.add(cli)
    while todo:
        name = todo.pop()
        file = _module_file(name)
        if file in seen:
            continue
        seen.add(file)
        todo += sorted(_imports(file, by_name=stage in RESOLVES_BY_NAME))
        todo += [name.rsplit(".", 1)[0]] if name.count(".") > 1 else []  # its package's __init__ runs first

    return tuple(sorted(str(f.relative_to(PACKAGE.parent)) for f in seen))
