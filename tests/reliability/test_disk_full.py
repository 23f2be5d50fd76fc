"""Disk full during a stage's write (issue 36, 7): one line naming the file, the free space and what
it needed; the earlier version of the artifact stays byte-identical, and nothing half-written is
left where a later stage could take it for a result."""

import errno
from pathlib import Path

import pytest

from teddy import cli

from ..conftest import relabel_args, tiny_soft_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    return tmp, *tiny_soft_labels(tmp)


def stage_argv(tiny, stage):
    tmp, cfg, data, pool, syn, soft = tiny
    return {
        "prepare-data": (["prepare-data", *cfg, "--out", str(data)], data / "cache.pt"),
        "distill": (
            ["distill", *cfg, "--data", str(data), "--method", "random", "--ipc", "2", "--seed", "0"]
            + ["--out", str(syn)],
            syn / "synthetic.pt",
        ),
        "relabel": (["relabel", *cfg, *relabel_args(pool, syn), "--out", str(soft)], soft / "soft_labels.pt"),
    }[stage]


@pytest.mark.parametrize("stage", ["prepare-data", "distill", "relabel"])
def test_disk_full_is_one_line_and_the_earlier_artifact_stays(tiny, monkeypatch, capsys, stage):
    argv, artifact = stage_argv(tiny, stage)
    before = artifact.read_bytes()
    real_write = Path.write_bytes

    def full(self, data):
        if self.name.startswith(f".{artifact.name}."):  # the temporary file of the artifact's write
            real_write(self, bytes(data)[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    capsys.readouterr()
    code = cli.main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(artifact) in err and "MB free" in err and "MB needed" in err, err
    assert artifact.read_bytes() == before
    assert not [p for p in artifact.parent.iterdir() if p.name.endswith(".tmp")]
