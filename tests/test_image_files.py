"""Image-file datasets: layouts, bad files, conversions, and the same data from every backend."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from teddy import config
from teddy.data import datasets, miniature
from teddy.data.decode import BadImage, decode
from teddy.data.source import FileSource, open_source
from teddy.io import artifacts
from teddy.io.files import ArtifactError
from teddy.stages import prepare_data
from teddy.tracking import NullTracker

from .conftest import BASE, TINY


def cfg_for(root: Path, layout: str, *extra: str):
    sets = [f"run.dataset={layout}", f"prepare_data.root={root}", "prepare_data.workers=0", *extra]
    return config.load([BASE, TINY], sets)


def prepare(tmp: Path, root: Path, layout: str, *extra: str) -> Path:
    out = tmp / f"data_{layout}_{abs(hash(extra))}"
    cfg = cfg_for(root, layout, "prepare_data.image_size=16", *extra)
    prepare_data.run(cfg, {}, {"out": out}, device="cpu", tracker=NullTracker())
    return out


@pytest.fixture(scope="module")
def minis(tmp_path_factory):
    base = tmp_path_factory.mktemp("minis")
    small = {"classes": 4, "train": 6, "val": 3, "size": 24}
    return {
        "imagefolder": miniature.make("imagefolder", base / "if", **small, bad=True),
        "tiny_imagenet": miniature.make("tiny_imagenet", base / "tiny", **small, bad=True),
        "imagenet": miniature.make("imagenet", base / "in", **small),
        "imagenet_folders": miniature.make("imagenet", base / "in_f", **small, val_style="folders"),
        "imagenet_devkit": miniature.make("imagenet", base / "in_d", **small, val_style="devkit"),
    }


def test_layouts_list_classes_names_and_splits(minis):
    tiny = datasets.get("tiny_imagenet").lister({"root": minis["tiny_imagenet"]})
    assert tiny.classes == miniature.NAMES[:4] and tiny.class_ids[0] == "n01440764"
    assert tiny.per_class("train") == [6 + 3, 6, 6, 6]  # + the 3 bad files (found later, by decoding)
    assert tiny.per_class("val") == [3] * 4 and not tiny.problems  # boxes .txt files are not images
    folder = datasets.get("imagefolder").lister({"root": minis["imagefolder"]})
    assert folder.class_ids == sorted(miniature.NAMES[:4]) and folder.classes == folder.class_ids
    assert folder.per_class("val") == [3] * 4


@pytest.mark.parametrize("style", ["imagenet", "imagenet_devkit"])
def test_imagenet_flat_val_labels_from_ground_truth(minis, style):
    listing = datasets.get("imagenet").lister({"root": minis[style]})
    assert len(listing.val) == 12 and not listing.problems
    for path, label in listing.val:  # the miniature names val image c*val + k + 1 after its class c
        assert label == (int(Path(path).stem.rsplit("_", 1)[1]) - 1) // 3
    assert listing.classes[0] == miniature.NAMES[0]  # LOC_synset_mapping.txt names kept exactly
    folders = datasets.get("imagenet").lister({"root": minis["imagenet_folders"]})
    assert folders.per_class("val") == listing.per_class("val")


def test_imagenet_flat_val_without_ground_truth_says_what_to_set(minis, tmp_path):
    root = miniature.make("imagenet", tmp_path / "in", classes=2, train=2, val=1, size=16, val_style="none")
    with pytest.raises(datasets.DatasetError, match="set config key prepare_data.val_labels"):
        datasets.get("imagenet").lister({"root": root})


def test_grey_rgba_cmyk_are_converted(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    for mode, fmt in [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("RGB", "BMP"), ("RGB", "TIFF")]:
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(rgb).convert(mode).save(path, fmt)
        got = decode(path, 3, None)
        want = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
        assert got.shape == (3, 20, 30) and np.abs(got.numpy().astype(int) - want).max() <= 1, mode
        assert decode(path, 1, 10).shape == (1, 10, 10)  # shorter side to 10, centre crop


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty file"), ("half a PNG", "truncated or corrupt"), (b"hello", "not an image")],
)
def test_unreadable_files_raise_with_the_reason(tmp_path, data, reason):
    if data == "half a PNG":
        png = miniature.encode(np.zeros((32, 32, 3), np.uint8) + 7, "PNG")
        data = png[: len(png) // 2]
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    with pytest.raises(BadImage, match=reason):
        decode(path, 3, 8)


def test_bad_files_fail_by_default_listing_every_one_and_leave_nothing(minis, tmp_path):
    with pytest.raises(datasets.DatasetError) as err:
        prepare(tmp_path, minis["tiny_imagenet"], "tiny_imagenet")
    text = str(err.value)
    for name, reason in [("empty", "empty file"), ("notes", "not an image"), ("truncated", "truncated")]:
        assert f"images/{name}.JPEG: {reason}" in text
    assert "prepare_data.bad_files: skip" in text
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial index, cache or manifest


def test_bad_files_skip_records_them(minis, tmp_path):
    out = prepare(tmp_path, minis["imagefolder"], "imagefolder", "prepare_data.bad_files=skip")
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(b["path"]).name for b in manifest["bad_files"]) == [
        "empty.png",
        "notes.png",
        "truncated.png",
    ]
    assert manifest["train_per_class"] == [6] * 4 and manifest["val_per_class"] == [3] * 4
    assert manifest["classes"] == sorted(miniature.NAMES[:4]) and manifest["storage"] == "cache"


def test_class_with_too_few_images_for_the_ipc(minis, tmp_path):
    """Listed files pass the config check; prepare_data finds class 0 left with 5 readable images."""
    import shutil

    root = shutil.copytree(minis["tiny_imagenet"], tmp_path / "tiny")
    sorted((root / "train" / "n01440764" / "images").glob("n*.JPEG"))[0].unlink()  # 5 good + 3 bad
    with pytest.raises(
        datasets.DatasetError, match=r"train/n01440764/images: class 'T-shirt, top' has 5 readable"
    ):
        prepare(tmp_path, root, "tiny_imagenet", "distill.ipcs=[1, 6]")
    out = prepare(tmp_path, root, "tiny_imagenet", "distill.ipcs=[1, 6]", "prepare_data.bad_files=skip")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_classes"] == ["T-shirt, top"] and manifest["num_classes"] == 3
    assert manifest["classes"] == miniature.NAMES[1:4] and len(manifest["bad_files"]) == 4
    source = open_source(out)
    assert source.labels("train").max() == 2 and source.count("val") == 9  # its val images left too
    cached = source.images("train", torch.arange(source.count("train")))
    assert torch.equal(
        cached,
        FileSource(out, manifest | {"storage": "files"}, json.loads((out / "index.json").read_text())).images(
            "train", torch.arange(source.count("train"))
        ),
    )


def test_config_check_counts_files_without_decoding(minis):
    spec = datasets.get("imagenet")
    prep = {"root": minis["imagenet"], "max_train_per_class": None, "val_fraction": 0.2}
    assert spec.min_train_per_class(prep) == 6
    with pytest.raises(config.ConfigError, match="IPC \\[7\\] exceeds the 6 training images"):
        cfg_for(minis["imagenet"], "imagenet", "distill.ipcs=[7]")


def test_stages_after_prepare_data_read_the_index_not_the_folder(minis, tmp_path):
    """Walking an image folder is prepare_data's (ImageNet: a minute per job): with a cache, the later
    stages run with the folder gone; an IPC above the prepared set's smallest class is still refused,
    from its manifest, naming --ipc."""
    import shutil

    from teddy import cli

    root = shutil.copytree(minis["imagefolder"], tmp_path / "if")
    args = ["--config", str(BASE), "--config", str(TINY), "--set", f"prepare_data.root={root}"]
    args += ["--set", "run.dataset=imagefolder", "--set", "prepare_data.bad_files=skip"]
    data = tmp_path / "data"
    assert cli.main(["prepare-data", *args, "--set", "prepare_data.storage=cache", "--out", str(data)]) == 0
    shutil.rmtree(root)
    datasets._LISTINGS.clear()  # the listing this process cached
    with pytest.raises(config.ConfigError, match=str(root)):  # what prepare-data itself checks
        config.load([BASE, TINY], [a for a in args if "=" in a])
    distill = ["distill", *args, "--data", str(data), "--method", "random", "--seed", "0"]
    assert cli.main([*distill, "--ipc", "2", "--out", str(tmp_path / "syn")]) == 0
    assert cli.main([*distill, "--ipc", "7", "--out", str(tmp_path / "too_many")]) == 2
    assert not (tmp_path / "too_many").exists()


def test_cache_and_files_backends_give_the_same_images(minis, tmp_path):
    cached = open_source(prepare(tmp_path, minis["imagenet"], "imagenet", "prepare_data.storage=cache"))
    files = open_source(prepare(tmp_path, minis["imagenet"], "imagenet", "prepare_data.storage=files"))
    assert isinstance(cached, FileSource) and cached.cached and not files.cached
    for split in ("train", "val"):
        idx = torch.randperm(cached.count(split))
        assert torch.equal(cached.images(split, idx), files.images(split, idx))
        assert torch.equal(cached.labels(split), files.labels(split))
        batches = list(cached.batches(split, idx, 5, workers=2))  # worker processes read the same
        assert torch.equal(torch.cat([x for x, _ in batches]), files.images(split, idx))
        assert torch.equal(torch.cat([y for _, y in batches]), files.labels(split)[idx])


def test_image_files_give_the_same_data_as_the_in_memory_arrays(tmp_path, tiny_cfg):
    """digits written as grey PNG folders (train/ and val/ as prepare_data split them) read back
    through the imagefolder layout equal the in-memory arrays, class by class."""
    from PIL import Image

    mem = tmp_path / "mem"
    prepare_data.run(tiny_cfg, {}, {"out": mem}, device="cpu", tracker=NullTracker())
    arrays = open_source(mem)
    root = tmp_path / "digits_png"
    for split in ("train", "val"):
        x, y = arrays.images(split, torch.arange(arrays.count(split))), arrays.labels(split)
        for i in range(len(y)):
            path = root / split / f"class {int(y[i])}" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy()).save(path)
    cfg = cfg_for(root, "imagefolder", "prepare_data.channels=1", "prepare_data.image_size=8")
    files_dir = tmp_path / "files"
    prepare_data.run(cfg, {}, {"out": files_dir}, device="cpu", tracker=NullTracker())
    files = open_source(files_dir)
    for split in ("train", "val"):
        for c, idx in arrays.by_class(split).items():
            a = arrays.images(split, idx).flatten(1)
            f = files.images(split, files.by_class(split)[c]).flatten(1)
            assert sorted(map(bytes, a.numpy())) == sorted(map(bytes, f.numpy()))
    m_mem, m_files = (json.loads((d / "manifest.json").read_text()) for d in (mem, files_dir))
    assert m_files["mean"] == pytest.approx(m_mem["mean"], abs=1e-6)
    assert m_files["std"] == pytest.approx(m_mem["std"], abs=1e-6)


def test_damaged_index_and_cache_are_detected(minis, tmp_path):
    out = prepare(tmp_path, minis["imagenet"], "imagenet")
    with open(out / "val_u8.npy", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="val_u8.npy: holds .* the index wants"):
        open_source(out)
    assert [p.name for p, _ in artifacts.verify_tree(out)[1]] == ["val_u8.npy"]
    index = json.loads((out / "index.json").read_text())
    index["train"]["labels"][0] = 3 - index["train"]["labels"][0]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match="index.json: its sha256 .* differs"):
        open_source(out)


def test_moved_dataset_is_named_with_the_fix(minis, tmp_path):
    import shutil

    root = shutil.copytree(minis["imagenet"], tmp_path / "copy")
    out = prepare(tmp_path, root, "imagenet", "prepare_data.storage=files")
    shutil.rmtree(root)
    with pytest.raises(ArtifactError, match="copy: the dataset's image folder .* is gone"):
        open_source(out)


def test_full_data_row_is_refused_where_the_training_set_cannot_be_held(minis, monkeypatch):
    cfg_for(
        minis["imagenet"], "imagenet", "evaluate.full_data=true", "prepare_data.image_size=16"
    )  # small: fine
    monkeypatch.setattr(config, "FULL_DATA_MAX_GB", 1e-6)
    with pytest.raises(config.ConfigError, match="evaluate.full_data: the full-data row .* float32"):
        cfg_for(minis["imagenet"], "imagenet", "evaluate.full_data=true", "prepare_data.image_size=16")
