"""Check that every dependency is pinned by name and version only, so a fresh machine can install it.

    python workflow/scripts/check_pins.py [constraints.txt] [pyproject.toml]

A fresh machine has the package index and nothing else: no wheel left in a temporary folder, no
checkout next to the repository. So ``constraints.txt`` and the dependency lists of
``pyproject.toml`` may hold ``name==version`` lines only (comments and blank lines aside): no URL,
no ``name @ file:///...`` direct reference, no path, no ``-e``/``-r``/``--find-links`` option, no
local version label (``+cpu``: never on the index). Every pyproject dependency must be pinned in
constraints.txt at the same version. Exits 1 listing each offending ``file:line``; ``make lock``
runs it on the freshly frozen file before replacing constraints.txt. Standard library only.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"  # project name
    r"(?:\[[A-Za-z0-9._,-]+\])?"  # optional [extras]
    r"==(?P<version>[A-Za-z0-9.!_-]+)$"  # exact version, no local label (+...)
)
FIX = "pin it from the package index as name==version (`pip index versions NAME` lists what exists)"


def normalize(name: str) -> str:
    """PEP 503 project name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def why_not_pinned(requirement: str) -> str | None:
    """None for a plain ``name==version``; otherwise what is wrong with ``requirement``."""
    if PIN.match(requirement):
        return None
    if requirement.startswith("-"):
        return "pip option line (-e/-r/--find-links/--index-url): installs from somewhere other than the index"
    if "://" in requirement or "@" in requirement:
        return "URL or direct reference (name @ ...): exists only where that URL/file does"
    if "/" in requirement or requirement.startswith("."):
        return "local path: exists only on the machine that wrote it"
    if "+" in requirement:
        return "local version label (+...): such builds are never on the package index"
    return "not of the form name==version (ranges, markers and extras-only lines are not pins)"


def check_constraints(path: Path) -> tuple[dict[str, str], list[str]]:
    """The pins of a constraints file (normalised name → version) and one message per bad line."""
    pins: dict[str, str] = {}
    problems = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        reason = why_not_pinned(line)
        if reason:
            problems.append(f"{path}:{number}: {raw.strip()!r}: {reason}; {FIX}")
            continue
        match = PIN.match(line)
        name = normalize(match["name"])
        if name in pins:
            problems.append(f"{path}:{number}: {match['name']} is pinned twice; keep one line")
        pins[name] = match["version"]
    return pins, problems


def pyproject_requirements(path: Path) -> list[tuple[str, str]]:
    """(where, requirement) for project.dependencies and every optional-dependencies list."""
    project = tomllib.loads(path.read_text()).get("project", {})
    found = [(f"{path} [project.dependencies]", r) for r in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        found += [(f"{path} [project.optional-dependencies.{extra}]", r) for r in reqs]
    return found


def check_pyproject(path: Path, pins: dict[str, str]) -> list[str]:
    problems = []
    for where, requirement in pyproject_requirements(path):
        requirement = requirement.strip()
        reason = why_not_pinned(requirement)
        if reason:
            problems.append(f"{where}: {requirement!r}: {reason}; {FIX}")
            continue
        match = PIN.match(requirement)
        pinned = pins.get(normalize(match["name"]))
        if pinned != match["version"]:
            got = f"pins {pinned}" if pinned else "does not pin it"
            problems.append(f"{where}: {requirement!r} but constraints.txt {got}; run `make lock`")
    return problems


def main(argv: list[str]) -> int:
    constraints = Path(argv[0] if argv else "constraints.txt")
    pyproject = Path(argv[1]) if len(argv) > 1 else None
    for path in filter(None, (constraints, pyproject)):
        if not path.is_file():
            print(f"check_pins: {path} does not exist", file=sys.stderr)
            return 2
    pins, problems = check_constraints(constraints)
    if pyproject:
        problems += check_pyproject(pyproject, pins)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
