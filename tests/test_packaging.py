"""A fresh machine has the package index and nothing else: every dependency is pinned as name==version.

Runs workflow/scripts/check_pins.py (what `make lock` and .ci/run run) on the real files and on
deliberately broken copies.
"""

import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "workflow" / "scripts" / "check_pins.py"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"


def check(*paths):
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True)
    return result.returncode, result.stderr


def test_the_real_constraints_and_pyproject_are_plain_pins():
    code, err = check(CONSTRAINTS, PYPROJECT)
    assert (code, err) == (0, "")


BAD_LINES = [
    "torch-pruning @ file:///tmp/tp/torch_pruning-1.6.1-py3-none-any.whl#sha256=5cb6",
    "timm @ https://example.org/timm-1.0.31-py3-none-any.whl",
    "-e git+https://example.org/teddy.git#egg=teddy",
    "./wheels/tabulate-0.10.0-py3-none-any.whl",
    "/tmp/wheels/tabulate-0.10.0-py3-none-any.whl",
    "--find-links /opt/wheels",
    "torch==2.13.0+cpu",
    "numpy>=2.0",
    "pandas",
]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_a_bad_constraints_line_fails_naming_the_line(tmp_path, bad):
    lines = CONSTRAINTS.read_text().splitlines()
    lines.insert(7, bad)  # becomes line 8
    broken = tmp_path / "constraints.txt"
    broken.write_text("\n".join(lines) + "\n")
    code, err = check(broken)
    assert code == 1
    assert err.count("\n") == 1, err  # exactly the one bad line is reported
    assert f"{broken}:8: {bad!r}" in err


def test_a_line_pinned_twice_fails(tmp_path):
    broken = tmp_path / "constraints.txt"
    broken.write_text("tabulate==0.10.0\nTabulate==0.9.0\n")
    code, err = check(broken)
    assert code == 1 and f"{broken}:2:" in err and "twice" in err


@pytest.mark.parametrize(
    "dependency, message",
    [
        ('"torch-pruning @ file:///tmp/tp/torch_pruning-1.6.1-py3-none-any.whl"', "direct reference"),
        ('"timm>=1.0"', "not of the form name==version"),
        ('"timm==0.9.0"', "constraints.txt pins 1.0.31"),
        ('"left-pad==1.0.0"', "constraints.txt does not pin it"),
    ],
)
def test_a_bad_pyproject_dependency_fails(tmp_path, dependency, message):
    text = PYPROJECT.read_text()
    assert '"timm==1.0.31",' in text
    broken = tmp_path / "pyproject.toml"
    broken.write_text(text.replace('"timm==1.0.31",', f"{dependency},"))
    code, err = check(CONSTRAINTS, broken)
    assert code == 1
    assert "[project.dependencies]" in err and message in err, err


def test_comments_and_blank_lines_are_fine(tmp_path):
    good = tmp_path / "constraints.txt"
    good.write_text("# a comment\n\ntabulate==0.10.0  # why this pin\nvl_convert_python==1.9.0.post1\n")
    assert check(good) == (0, "")
