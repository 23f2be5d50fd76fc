"""Every file a job writes is one of the outputs the stage table declares for it (issue 36, 2).

DVC versions, pushes and pulls exactly the declared outputs; a file a job writes beside them (a
checksum record, the resolved config) is lost on a `dvc push` → delete → `dvc pull` round trip,
and the readers then refuse the pulled artifacts. So: run every job of a tiny plan the way both
tools run it (the plan's own command line) and compare what each one wrote with its outs."""

import os
from pathlib import Path

import pytest
import yaml

from teddy import cli, config
from teddy.workflow import plan

from ..conftest import BASE, TINY

GRID = {
    "distill": {"ipcs": [1], "methods": ["teddy", "random"]},
    "evaluate": {"archs": ["convnet"]},
    "pretrain_pool": {"post_members": 1, "prior_epochs": [1]},
}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def covered(file: Path, outs: tuple[str, ...], root: Path) -> bool:
    rel = file.relative_to(root)
    return any(rel == Path(o) or Path(o) in rel.parents for o in outs)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{job name: (outs, files the job wrote)} for every job of the tiny plan, run in order."""
    root = tmp_path_factory.mktemp("declared")
    delta = root / "grid.yaml"
    delta.write_text(yaml.safe_dump(GRID))
    data = config.to_dict(config.load([BASE, TINY, delta]))
    args = ["--config", str(BASE), "--config", str(TINY), "--config", str(delta)]
    seen: set[Path] = set()
    found = {}
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for job in plan.plan(data):
            argv = [job.command[0], *args, *job.command[1:]]
            assert cli.main(argv) == 0, job.name
            now = files_under(root / "results")
            found[job.name] = (job.outs, now - seen)
            seen = now
    finally:
        os.chdir(cwd)
    return root, found


def test_every_written_file_is_a_declared_output(written):
    root, found = written
    missing = {
        name: sorted(str(f.relative_to(root)) for f in new if not covered(f, outs, root))
        for name, (outs, new) in found.items()
    }
    missing = {name: files for name, files in missing.items() if files}
    assert not missing, f"files written outside the declared outs (lost by a DVC round trip): {missing}"


def test_every_checksummed_artifact_carries_its_record(written):
    """An artifact and its .sha256 record are declared together (a folder out holds both)."""
    root, found = written
    for name, (outs, new) in found.items():
        for file in new:
            if file.name.endswith(".sha256"):
                artifact = file.with_name(file.name.removesuffix(".sha256"))
                assert covered(artifact, outs, root) and covered(file, outs, root), (name, file)
