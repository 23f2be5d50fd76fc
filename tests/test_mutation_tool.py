"""benchmarks/mutation.py's own guards (mutmut itself runs only under `make mutation`)."""

import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import mutation  # noqa: E402


def test_rerunning_survivors_refuses_a_module_that_changed_since_the_run(tmp_path):
    """An earlier run's mutants are of the code as it was: after the module changed, new tests would
    fail on the code and count as kills."""
    root, work = tmp_path / "repo", tmp_path / "work"
    for folder, text in ((root, "x = 1\n"), (work, "x = 1\n")):
        (folder / "teddy" / "stages").mkdir(parents=True)
        (folder / "teddy" / "stages" / "distill.py").write_text(text)
    mutation.require_same_source(work, ["stages/distill"], root)  # unchanged: fine
    (root / "teddy" / "stages" / "distill.py").write_text("x = 2\n")
    with pytest.raises(
        SystemExit, match=r"teddy/stages/distill\.py changed since the run in .*run stages/distill again"
    ):
        mutation.require_same_source(work, ["stages/distill"], root)
    with pytest.raises(SystemExit, match=r"teddy/stages/relabel\.py changed since"):  # never copied there
        mutation.require_same_source(work, ["stages/relabel"], root)
