"""benchmarks/fidelity.py measures the pipeline's own objectives against the exact meta-gradient."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fidelity_benchmark_quick_run(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--quick", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    result = json.loads((tmp_path / "fidelity.json").read_text())
    assert set(result["fidelity"]) == {"taylor", "cosine", "bn"}
    assert (tmp_path / "fidelity.png").stat().st_size > 0
    # At K = 1 and a small η the first-order term is the exact objective up to O(η²): its image
    # gradient must point the exact one's way (a sign or scale error in the surrogate fails here).
    assert result["fidelity_eta_0.01"]["taylor"]["1"] > 0.99
