"""Inputs that used to end in a raw traceback or a silent substitution (issue 36, 8): each is now one
line naming the key, flag or file and the fix (or, for transient state, a warning and a fresh start)."""

import math

import pytest
import torch

from teddy import cli, config

from ..conftest import BASE, TINY, evaluate_args, tiny_soft_labels, tiny_synthetic_set


def one_line(capsys, code, *names):
    err = capsys.readouterr().err.strip()
    assert code not in (0, None) and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, err
    return err


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", ".inf", "-.inf", "1e400"])
def test_non_finite_numbers_are_refused_by_key(value):
    with pytest.raises(config.ConfigError, match=r"evaluate\.lr.*finite"):
        config.load([BASE, TINY], [f"evaluate.lr={value}"])


@pytest.mark.parametrize("value", ["5.0", "5.5", "1e2"])
def test_a_float_where_a_whole_number_is_meant_is_refused_by_key(value):
    with pytest.raises(config.ConfigError, match=r"distill\.iterations: .*(whole number|type 'integer')"):
        config.load([BASE, TINY], [f"distill.iterations={value}"])


def test_a_float_iterations_is_one_line_not_a_traceback(tmp_path, capsys):
    cfg, data, pool, _ = tiny_synthetic_set(tmp_path)
    capsys.readouterr()
    argv = ["distill", *cfg, "--set", "distill.iterations=5.0", "--data", str(data), "--pool", str(pool)]
    argv += ["--method", "teddy", "--ipc", "1", "--seed", "0", "--out", str(tmp_path / "t")]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and "Traceback" not in err
        and "distill.iterations: 5.0 is not a whole number (write 5)" in err
    )
    assert not (tmp_path / "t").exists()


def test_evaluate_epochs_beyond_the_stored_views(tmp_path, capsys):
    cfg, data, pool, syn, soft = tiny_soft_labels(tmp_path)
    capsys.readouterr()
    argv = [
        "evaluate",
        *cfg,
        "--set",
        "evaluate.epochs=5",
        *evaluate_args(data, syn, soft),
        "--out",
        str(tmp_path / "e"),
    ]
    one_line(capsys, cli.main(argv), "evaluate.epochs", str(soft), "relabel")


def test_a_truncated_student_state_is_a_fresh_start(tmp_path, caplog):
    cfg, data, pool, syn, soft = tiny_soft_labels(tmp_path)
    out = tmp_path / "e"
    out.mkdir()
    torch.save({"epoch": 1, "model": {}}, out / "train_state.pt")
    (out / "train_state.pt").write_bytes((out / "train_state.pt").read_bytes()[:40])
    assert cli.main(["evaluate", *cfg, *evaluate_args(data, syn, soft), "--out", str(out)]) == 0
    assert "train_state.pt" in caplog.text and "cannot be read" in caplog.text


@pytest.mark.parametrize("flag", ["--classes", "--train", "--val", "--size"])
def test_make_miniature_needs_positive_counts(tmp_path, capsys, flag):
    argv = ["make-miniature", "--layout", "imagefolder", "--out", str(tmp_path / "m"), flag, "0"]
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    one_line_usage = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and flag in one_line_usage and "1 or more" in one_line_usage
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_estimate_refuses_a_tflops_that_is_not_a_speed(capsys, value):
    with pytest.raises(SystemExit) as stop:
        cli.main(["estimate", "--config", str(BASE), "--tflops", value])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and "--tflops" in last and "positive" in last


def test_estimate_help_names_the_default_it_uses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["estimate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "resources.gpu_tflops" in text and "default 15" not in text
    assert math.isfinite(config.load([BASE]).resources.gpu_tflops)


def test_online_soft_labels_without_a_pool_is_one_line(tmp_path, capsys):
    cfg, data, pool, syn = tiny_synthetic_set(tmp_path)
    soft = tmp_path / "online"
    online = [*cfg, "--set", "relabel.mode=online"]
    assert (
        cli.main(
            [
                "relabel",
                *online,
                "--synthetic",
                str(syn),
                "--pool",
                str(pool),
                "--seed",
                "0",
                "--out",
                str(soft),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = cli.main(["evaluate", *online, *evaluate_args(data, syn, soft), "--out", str(tmp_path / "e")])
    one_line(capsys, code, "pass --pool")
