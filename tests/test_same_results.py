"""benchmarks/same_results.py: two results trees compared on what they found, not on how long it took."""

import json
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"))
import same_results  # noqa: E402


def tree(root, top1, wall_s, tensor):
    (root / "evaluate").mkdir(parents=True)
    (root / "evaluate" / "metrics.json").write_text(
        json.dumps({"top1": top1, "wall_s": wall_s, "arch": "convnet"})
    )
    torch.save(tensor, root / "evaluate" / "x.pt")


def test_equal_results_taken_at_other_speeds_are_the_same(tmp_path):
    tree(tmp_path / "a", 51.25, 3.0, torch.ones(3))
    tree(tmp_path / "b", 51.25, 9.0, torch.ones(3))
    assert same_results.compare(tmp_path / "a", tmp_path / "b") == (1, 1, [])


def test_a_changed_value_or_tensor_is_named(tmp_path):
    tree(tmp_path / "a", 51.25, 3.0, torch.ones(3))
    tree(tmp_path / "b", 51.5, 3.0, torch.zeros(3))
    _, _, differences = same_results.compare(tmp_path / "a", tmp_path / "b")
    assert differences == ["evaluate/metrics.json: top1 51.25 vs 51.5", "evaluate/x.pt: bytes differ"]
