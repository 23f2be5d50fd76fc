"""docs/extending.md states how many files each extension touches; this test makes exactly those
edits in a copy of the project and runs the result through the real stages: a toy objective (its
class in a new file + one entry in teddy/method/registry.py) and a toy image-file layout (one
decorated function in teddy/data/layouts.py). The schema's enums and the CLI's help come from the
registries, so nothing else is edited."""

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from .conftest import ROOT, copy_project

TOY_OBJECTIVE = '''"""A toy objective: cross-entropy of the synthetic view only (no statistics matching)."""

import torch
import torch.nn.functional as F


class ToyCE:
    def __init__(self, cfg, data=None, device="cpu"):
        self.names = ("ce",)

    def __call__(self, model, view, labels, gen):
        ce = F.cross_entropy(model(view).float(), labels)
        return ce, torch.stack([ce])
'''

TOY_LAYOUT = '''

@layout("flat_csv")
def list_flat_csv(prep: Mapping) -> Listing:
    """root/images/* with root/labels.csv (file,class); no official val split."""
    root = root_of(prep, "flat_csv")
    rows = [line.split(",") for line in (root / "labels.csv").read_text().split()]
    ids = sorted({c for _, c in rows})
    return Listing(root, ids, ids, [(f"images/{f}", ids.index(c)) for f, c in rows], None)
'''

# what docs/extending.md says each extension touches (file count), checked against the edits below
EXTENDING_ROWS = {"an objective": 2, "an image-file layout": 1}


def teddy(project, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "teddy", *args], cwd=project, capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("extended"))
    (project / "teddy" / "method" / "toy.py").write_text(TOY_OBJECTIVE)
    registry = project / "teddy" / "method" / "registry.py"
    text = registry.read_text()
    anchor = '    "unrolled": Objective('
    assert anchor in text
    registry.write_text(text.replace(anchor, '    "toy": Objective("teddy.method.toy:ToyCE"),\n' + anchor, 1))
    layouts = project / "teddy" / "data" / "layouts.py"
    layouts.write_text(layouts.read_text() + TOY_LAYOUT)
    return project


@pytest.mark.parametrize("page", ["docs/extending.md", "README.md"])
def test_the_pages_state_these_counts(page):
    text = (ROOT / page).read_text()
    for what, files in EXTENDING_ROWS.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| {what} |")), None)
        assert row is not None, f"{page} has no row for {what}"
        assert re.search(rf"\| {what} \| {files} \|", row), row


def test_a_toy_objective_is_one_class_and_one_registry_entry(extended, tmp_path):
    cfg = ["--config", "config/config.yaml", "--set", "distill.matching=toy"]
    d, p, s = tmp_path / "data", tmp_path / "pool", tmp_path / "syn"
    teddy(extended, "prepare-data", *cfg, "--out", str(d))
    teddy(extended, "pretrain-pool", *cfg, "--data", str(d), "--out", str(p))
    run = [*cfg, "--data", str(d), "--pool", str(p), "--method", "teddy", "--ipc", "1", "--seed", "0"]
    teddy(extended, "distill", *run, "--out", str(s))
    metrics = json.loads((s / "metrics.json").read_text())
    assert metrics["objective"] == "ToyCE"  # the class the registry named, built by distill
    # the schema's enum is the registry's: an unknown objective is refused by name, with the new one offered
    refused = teddy(
        extended, "prepare-data", "--set", "distill.matching=toys", "--out", str(tmp_path / "x"), check=False
    )
    assert refused.returncode == 2 and "distill.matching" in refused.stderr and "toy" in refused.stderr


def test_a_toy_layout_is_one_decorated_function(extended, tmp_path):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    rows = []
    for k in range(24):
        name, label = f"img{k:02d}.png", ("cat", "dog", "fox")[k % 3]
        Image.new("RGB", (10, 10), (40 * (k % 3), 90, 200 - 7 * k)).save(root / "images" / name)
        rows.append(f"{name},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "data"
    over = ["--set", "run.dataset=flat_csv", "--set", f"prepare_data.root={root}", "--set", "distill.ipcs=[1]"]
    teddy(extended, "prepare-data", "--config", "config/config.yaml", *over, "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog", "fox"]
    unknown = teddy(
        extended, "prepare-data", "--set", "run.dataset=flat", "--out", str(tmp_path / "y"), check=False
    )
    assert unknown.returncode == 2 and "flat_csv" in unknown.stderr  # the enum lists the new layout
