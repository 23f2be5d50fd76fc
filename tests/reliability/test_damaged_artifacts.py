"""Damaged, truncated or misplaced artifacts are never used: the reading stage stops with one line
naming the file, what is wrong and how to rebuild it; `teddy verify` finds them all (issue 12, 2-3)."""

import errno
import shutil
from pathlib import Path

import pytest
import torch

from teddy import cli
from teddy.io import artifacts
from teddy.io.files import sha256

from ..conftest import tiny_soft_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damage")
    cfg, data, pool, syn, soft = tiny_soft_labels(tmp)
    return cfg, data, pool, syn, soft


def evaluate(tiny, tmp_path, capsys, *, data=None, syn=None, soft=None):
    cfg, d, _, s, so = tiny
    argv = [
        "evaluate",
        *cfg,
        "--data",
        str(data or d),
        "--synthetic",
        str(syn or s),
        "--soft-labels",
        str(soft or so),
    ]
    code = cli.main([*argv, "--arch", "convnet", "--seed", "0", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip()
    return code, err


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def one_error_line(code, err, path: Path, problem: str):
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and problem in err and "rebuild it with `python -m teddy" in err, err


def test_noise_in_soft_labels_is_caught(tiny, tmp_path, capsys):
    soft = copy(tiny[4], tmp_path / "soft")
    raw = bytearray((soft / "soft_labels.pt").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # noise in the middle: still a readable zip
    (soft / "soft_labels.pt").write_bytes(raw)
    code, err = evaluate(tiny, tmp_path, capsys, soft=soft)
    one_error_line(code, err, soft / "soft_labels.pt", "differs from the recorded")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_shifted_validation_labels_are_caught(tiny, tmp_path, capsys):
    data = copy(tiny[1], tmp_path / "data")
    cache = torch.load(data / "cache.pt", weights_only=True)
    cache["val_y"] = (cache["val_y"] + 1) % 10
    torch.save(cache, data / "cache.pt")
    code, err = evaluate(tiny, tmp_path, capsys, data=data)
    one_error_line(code, err, data / "cache.pt", "differs from the recorded")


def test_nan_images_are_caught_even_with_a_valid_checksum(tiny, tmp_path, capsys):
    """A writer bug (checksum recorded over NaN images) is still no valid set."""
    syn = copy(tiny[3], tmp_path / "syn")
    record = artifacts.load(syn / "synthetic.pt")
    record["images"][0, 0, 0, 0] = float("nan")
    artifacts.save(record, syn / "synthetic.pt")
    code, err = evaluate(tiny, tmp_path, capsys, syn=syn)
    one_error_line(code, err, syn / "synthetic.pt", "images holds 1 NaN/Inf value(s)")


def test_a_set_copied_into_another_methods_folder_is_caught(tiny, tmp_path, capsys):
    wrong = tmp_path / "distill" / "teddy" / "ipc2" / "seed0"
    copy(tiny[3], wrong)  # the random set, with its checksum record, where the teddy set belongs
    code, err = evaluate(tiny, tmp_path, capsys, syn=wrong)
    one_error_line(code, err, wrong / "synthetic.pt", "method 'random' where the folder says 'teddy'")


def test_soft_labels_of_another_set_are_caught(tiny, tmp_path, capsys):
    syn = copy(tiny[3], tmp_path / "syn")
    record = artifacts.load(syn / "synthetic.pt")
    record["images"] = record["images"].flip(-1)  # another (valid) set of the same size
    artifacts.save(record, syn / "synthetic.pt")
    code, err = evaluate(tiny, tmp_path, capsys, syn=syn)
    one_error_line(code, err, tiny[4] / "soft_labels.pt", "made for another synthetic set")


@pytest.mark.parametrize("name", ["synthetic.pt", "soft_labels.pt"])
def test_a_truncated_file_names_itself(tiny, tmp_path, capsys, name):
    folders = {"synthetic.pt": ("syn", 3), "soft_labels.pt": ("soft", 4)}
    key, index = folders[name]
    folder = copy(tiny[index], tmp_path / key)
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, err = evaluate(tiny, tmp_path, capsys, **{key: folder})
    one_error_line(code, err, path, "differs from the recorded")  # the checksum catches it first
    artifacts.checksum_path(path).write_text(f"{sha256(path)}  {name}\n")  # even if re-recorded:
    code, err = evaluate(tiny, tmp_path, capsys, **{key: folder})
    one_error_line(code, err, path, "cannot be read")
    assert "truncated or corrupt" in err


def test_a_missing_checksum_record_means_an_unfinished_writer(tiny, tmp_path, capsys):
    syn = copy(tiny[3], tmp_path / "syn")
    artifacts.checksum_path(syn / "synthetic.pt").unlink()
    code, err = evaluate(tiny, tmp_path, capsys, syn=syn)
    one_error_line(code, err, syn / "synthetic.pt", "no checksum record synthetic.pt.sha256")


def test_truncated_json_names_the_file(tiny, tmp_path, capsys):
    data = copy(tiny[1], tmp_path / "data")
    text = (data / "manifest.json").read_text()
    (data / "manifest.json").write_text(text[: len(text) // 2])
    code, err = evaluate(tiny, tmp_path, capsys, data=data)
    assert code == 1 and str(data / "manifest.json") in err and "not valid JSON" in err, err


def test_disk_full_leaves_no_file_a_later_stage_could_accept(tmp_path, monkeypatch):
    target = tmp_path / "synthetic.pt"
    real_write = Path.write_bytes

    def half_then_enospc(self, data):
        real_write(self, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_enospc)
    with pytest.raises(artifacts.ArtifactError, match="no space left on the device writing it"):
        artifacts.save({"images": torch.rand(4, 1, 8, 8)}, target)

    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no target, no checksum record, no temporary file
    with pytest.raises(artifacts.ArtifactError, match="does not exist"):
        artifacts.load(target)


def results_tree(tiny, root: Path) -> Path:
    _, data, pool, syn, soft = tiny
    ds = root / "digits"
    copy(data, ds / "data")
    copy(pool, ds / "pool")
    copy(syn, ds / "distill" / "random" / "ipc2" / "seed0")
    copy(soft, ds / "relabel" / "random" / "ipc2" / "seed0")
    return ds


def test_verify_finds_every_damaged_artifact_and_prints_the_rebuild(tiny, tmp_path, capsys):
    ds = results_tree(tiny, tmp_path / "results")
    assert cli.main(["verify", str(tmp_path / "results")]) == 0
    assert "artifacts under" in capsys.readouterr().out
    soft = ds / "relabel" / "random" / "ipc2" / "seed0" / "soft_labels.pt"
    soft.write_bytes(soft.read_bytes()[:-100])
    member = next((ds / "pool").rglob("e001.pt"))
    member.write_bytes(member.read_bytes()[::-1])
    assert cli.main(["verify", str(tmp_path / "results")]) == 1
    out = capsys.readouterr().out
    assert f"BAD {soft}:" in out and f"BAD {member}:" in out and out.count("BAD ") == 2, out
    # each with the command that made it (here: teddy commands run by hand, in the tiny fixture)
    assert "python -m teddy relabel" in out and "python -m teddy pretrain-pool" in out, out
