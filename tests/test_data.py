import json
from pathlib import Path

import numpy as np
import pytest
import torch

from teddy import config
from teddy.data import datasets
from teddy.io import artifacts
from teddy.stages import prepare_data
from teddy.tracking import NullTracker

from .conftest import BASE

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_stratified_split_is_seeded_and_disjoint():
    x = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    y = np.repeat(np.arange(4), 25)
    a = datasets.stratified_split(x, y, 0.2, seed=3)
    b = datasets.stratified_split(x, y, 0.2, seed=3)
    assert np.array_equal(a.val_x, b.val_x)
    assert np.bincount(a.val_y).tolist() == [5, 5, 5, 5]
    assert not set(a.train_x.ravel()) & set(a.val_x.ravel())


def test_subsample_caps_each_class():
    x = np.zeros((30, 1, 2, 2), np.uint8)
    y = np.repeat(np.arange(3), 10)
    split = datasets.subsample(datasets.Split(x, y, x, y), 4, seed=0)
    assert np.bincount(split.train_y).tolist() == [4, 4, 4]


def test_prepare_digits_resizes_and_checksums(tmp_path, tiny_cfg):
    prepare_data.run(tiny_cfg, {}, {"out": tmp_path}, device="cpu", tracker=NullTracker())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    data = artifacts.load_cache(tmp_path)
    assert data["train_x"].dtype == torch.uint8
    assert data["train_x"].shape[1:] == (1, 8, 8)
    assert manifest["train_count"] + manifest["val_count"] == 1797
    assert sum(manifest["train_per_class"]) == manifest["train_count"]


def test_corrupt_cache_is_detected(tmp_path, tiny_cfg):
    prepare_data.run(tiny_cfg, {}, {"out": tmp_path}, device="cpu", tracker=NullTracker())
    with open(tmp_path / "cache.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(artifacts.ArtifactError, match="cache.pt: its sha256 .* differs from the recorded"):
        artifacts.load_cache(tmp_path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_prepare_fashion_mnist_from_debian_package(tmp_path):
    cfg = config.load(
        [BASE], ["run.dataset=fashion_mnist", "prepare_data.image_size=null", "tracking.enabled=false"]
    )
    prepare_data.run(cfg, {}, {"out": tmp_path}, device="cpu", tracker=NullTracker())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["train_per_class"] == [6000] * 10 and manifest["val_per_class"] == [1000] * 10
    assert manifest["image_size"] == 28
    assert manifest["mean"][0] == pytest.approx(0.2860, abs=1e-3)
    assert manifest["std"][0] == pytest.approx(0.3530, abs=1e-3)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.05])
def test_digits_smallest_class_is_known_without_reading_it(fraction):
    """The config check answers from the recorded class sizes; they must equal the real split's."""
    prep = {"val_fraction": fraction, "split_seed": 3, "max_train_per_class": None}
    spec = datasets.get("digits")
    assert spec.min_train_per_class(prep) == int(np.bincount(spec.read(prep).train_y).min())
