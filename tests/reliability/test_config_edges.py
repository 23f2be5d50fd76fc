"""Config values are coerced by the schema's types wherever they come from, and every CLI parse
error is one clear line (issue 12, fault 4)."""

import subprocess
import sys

import pytest

from teddy import cli, config

from ..conftest import BASE, ROOT, TINY


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    """PyYAML reads 1e-3 as the string '1e-3'; the schema says number, so it is one."""
    delta = tmp_path / "delta.yaml"
    delta.write_text("evaluate:\n  lr: 1e-3\n")
    cfg = config.load([BASE, delta])
    assert cfg.evaluate.lr == 0.001 and isinstance(cfg.evaluate.lr, float)
    with pytest.raises(config.ConfigError, match="distill.iterations"):  # 1e2 is no integer literal
        config.load([BASE, delta], ["distill.iterations=1e2"])


def test_snakemake_style_string_values_are_coerced():
    """snakemake --config 'distill={"iterations": 2}' deep-merges {'iterations': '2'} (a string)."""
    raw = config.deep_merge(config.read_yaml(BASE), config.read_yaml(TINY))
    raw = config.deep_merge(raw, {"distill": {"iterations": "2", "ipcs": "[1, 3]", "flip": "false"}})
    raw = config.deep_merge(raw, {"evaluate": {"lr": "1e-3"}})
    data = config.validate(raw)
    assert data["distill"]["iterations"] == 2 and data["distill"]["ipcs"] == [1, 3]
    assert data["distill"]["flip"] is False and data["evaluate"]["lr"] == 0.001


def test_a_string_that_is_no_number_still_fails_naming_the_key():
    raw = config.deep_merge(config.read_yaml(BASE), {"distill": {"iterations": "many"}})
    with pytest.raises(config.ConfigError, match=r"distill\.iterations: 'many' is not of type 'integer'"):
        config.validate(raw)


def test_snakemake_config_with_nested_numbers_is_accepted():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", 'distill={"iterations": 2}'],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "distill.ipcs=[1,2"], "override 'distill.ipcs=[1,2': the value is not valid YAML"),
        (["--set", "distill.ipcs"], "must look like section.key=value"),
    ],
)
def test_a_malformed_override_is_one_line(tmp_path, capsys, argv, message):
    code = cli.main(
        ["prepare-data", "--config", str(BASE), "--config", str(TINY), *argv, "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--ipc", "-3"), ("--seed", "one")])
def test_a_bad_selection_is_an_argparse_error(tmp_path, capsys, flag, value):
    argv = ["distill", "--data", str(tmp_path), "--method", "random", "--ipc", "1", "--seed", "0"]
    argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{flag} " in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_slurm_gpu_job_without_cuda_fails_at_once(monkeypatch):
    """run.device auto in a SLURM job granted a GPU, with CUDA unusable, must not crawl on the CPU."""
    import torch

    from teddy.runtime.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    with pytest.raises(RuntimeError, match="granted GPU.*set run.device: cpu"):
        resolve_device("auto")
    assert resolve_device("cpu").type == "cpu"  # asked for the CPU on purpose: fine
    monkeypatch.delenv("SLURM_JOB_GPUS")
    assert resolve_device("auto").type == "cpu"  # a CPU-only job


def test_a_bare_cuda_device_gets_this_process_index(monkeypatch):
    """`run.device: cuda` → cuda:LOCAL_RANK (0 outside torchrun): torch.cuda.set_device and DDP's
    device_ids refuse an index-less device, which broke torchrun at world size 1 on a real GPU."""
    import torch

    from teddy.runtime.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("cuda:3") == torch.device("cuda:3")  # an explicit index is kept
