"""Every CLI stage on a tiny digits config, in a temp dir, with MLflow tracking on."""

import json
import subprocess
import sys

import pytest

from teddy.cli import STAGES, main

from .conftest import BASE, TINY


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "teddy", "--help"], capture_output=True, text=True, check=True)
    for stage in STAGES:
        assert stage in out.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = [
        "--config",
        str(BASE),
        "--config",
        str(TINY),
        "--set",
        "tracking.enabled=true",
        "--set",
        f"tracking.uri={uri}",
        "--set",
        "evaluate.hard_label_archs=[convnet]",
    ]

    def teddy(*args):
        assert main([args[0], *cfg, *args[1:]]) == 0, args

    d, p = tmp / "data", tmp / "pool"
    teddy("prepare-data", "--out", str(d))
    teddy("pretrain-pool", "--data", str(d), "--out", str(p))
    evals = []
    for method in ("teddy", "sre2l", "random"):
        s, r = tmp / f"syn_{method}", tmp / f"soft_{method}"
        teddy(
            "distill",
            "--data",
            str(d),
            "--pool",
            str(p),
            "--method",
            method,
            "--ipc",
            "2",
            "--seed",
            "0",
            "--out",
            str(s),
        )
        teddy("relabel", "--synthetic", str(s), "--pool", str(p), "--seed", "0", "--out", str(r))
        for arch in ("convnet", "resnet18"):
            e = tmp / f"eval_{method}_{arch}"
            teddy(
                "evaluate",
                "--data",
                str(d),
                "--synthetic",
                str(s),
                "--soft-labels",
                str(r),
                "--arch",
                arch,
                "--seed",
                "0",
                "--out",
                str(e),
            )
            evals.append(str(e))
    teddy(
        "report",
        "--evaluations",
        *evals,
        "--out",
        str(tmp / "report"),
        "--set",
        "distill.methods=[teddy, sre2l, random]",
        "--set",
        "distill.ipcs=[2]",
    )
    return tmp, uri


def test_stage_outputs(pipeline):
    tmp, _ = pipeline
    manifest = json.loads((tmp / "data" / "manifest.json").read_text())
    assert manifest["num_classes"] == 10 and len(manifest["cache_sha256"]) == 64
    pool = json.loads((tmp / "pool" / "manifest.json").read_text())
    assert [m["epoch"] for m in pool["members"]] == [1, 2]
    assert all((tmp / "pool" / m["file"]).is_file() for m in pool["members"])
    assert (tmp / "syn_teddy" / "grid.png").stat().st_size > 0
    ev = json.loads((tmp / "eval_teddy_convnet" / "metrics.json").read_text())
    assert ev["wall_s"] > 0 and ev["peak_rss_mb"] > 0
    final = ev["curve"][-1]
    assert (final["epoch"], final["top1"], final["top5"]) == (2, ev["top1"], ev["top5"])
    assert final["val_images"] == manifest["val_count"]  # the final point scores the whole val split
    # the hard-label student ran beside the soft one (evaluate.hard_label_archs), on the same epochs
    assert [p["epoch"] for p in ev["hard_curve"]] == [p["epoch"] for p in ev["curve"]]
    assert ev["hard_top1"] == ev["hard_curve"][-1]["top1"]
    assert "hard_top1" not in json.loads((tmp / "eval_teddy_resnet18" / "metrics.json").read_text())
    assert (tmp / "eval_teddy_convnet" / "config.resolved.yaml").is_file()


def test_report_table(pipeline):
    import pandas as pd

    tmp, _ = pipeline
    df = pd.read_csv(tmp / "report" / "summary.csv")
    assert len(df) == 6
    need = {"dataset", "method", "ipc", "arch", "seed", "top1", "ior"}
    need |= {f"{s}_s" for s in ("prepare_data", "pretrain_pool", "distill", "relabel", "evaluate")}
    assert need <= set(df.columns)
    # every number is the evaluate metric it summarises, and IOR pairs by arch and seed
    for row in df.itertuples():
        ev = json.loads((tmp / f"eval_{row.method}_{row.arch}" / "metrics.json").read_text())
        assert row.top1 == pytest.approx(ev["top1"], abs=1e-4) and row.top5 == pytest.approx(
            ev["top5"], abs=1e-4
        )
        rnd = json.loads((tmp / f"eval_random_{row.arch}" / "metrics.json").read_text())
        assert row.ior == pytest.approx(ev["top1"] - rnd["top1"], abs=1e-4)
        assert (row.arch == "convnet") == (row.hard_top1 == row.hard_top1)  # NaN without a hard student
    assert (tmp / "report" / "accuracy.png").stat().st_size > 0
    text = (tmp / "report" / "summary.md").read_text()
    teddy = df[(df.method == "teddy") & (df.arch == "convnet")].iloc[0]
    assert f"| {teddy.top1:.2f} " in text and f"{teddy.ior:+.2f} (n=1)" in text
    assert "Hard-label top-1" in text


def test_mlflow_has_one_run_per_stage_execution(pipeline):
    import mlflow

    _, uri = pipeline
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["teddy"])
    counts = runs["tags.stage"].value_counts().to_dict()
    assert counts == {
        "prepare-data": 1,
        "pretrain-pool": 1,
        "distill": 3,
        "relabel": 3,
        "evaluate": 6,
        "report": 1,
    }
    ev = runs[runs["tags.stage"] == "evaluate"]
    assert set(ev["tags.mlflow.runName"]) == {"evaluate convnet s0", "evaluate resnet18 s0"}  # CLI folders
    assert set(runs[runs["tags.stage"] == "distill"]["tags.mlflow.runName"]) == {
        f"distill {m} ipc2 s0" for m in ("teddy", "sre2l", "random")
    }
    assert ev["metrics.top1"].notna().all() and ev["metrics.wall_s"].notna().all()
    assert ev["metrics.peak_rss_mb"].notna().all()
    assert set(ev["tags.method"]) == {"teddy", "sre2l", "random"}
    assert ev["params.distill.iterations"].eq("4").all()
    client = mlflow.MlflowClient()
    curve = client.get_metric_history(ev.run_id.iloc[0], "train_kl")
    assert len(curve) == 2  # one point per student epoch


def test_bad_selection_fails_before_work(tmp_path, capsys):
    argv = [
        "distill",
        "--config",
        str(BASE),
        "--config",
        str(TINY),
        "--data",
        str(tmp_path),
        "--method",
        "random",
        "--ipc",
        "1000",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    assert "--ipc 1000" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_input_folder_is_named(tmp_path, capsys):
    argv = [
        "pretrain-pool",
        "--config",
        str(BASE),
        "--data",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "nope is not a folder" in capsys.readouterr().err


def test_report_says_which_code_and_config_made_it(pipeline, capsys):
    tmp, _ = pipeline
    prov = json.loads((tmp / "report" / "provenance.json").read_text())
    assert len(prov["git_sha"]) == 40 and isinstance(prov["git_dirty"], bool)  # this is a git checkout
    assert len(prov["config_sha256"]) == 64 and prov["command"].startswith("python -m teddy report")
    text = (tmp / "report" / "summary.md").read_text()
    assert f"commit `{prov['git_sha'][:12]}`" in text and prov["config_sha256"][:12] in text
    assert main(["verify", str(tmp / "report")]) == 0
    assert "matches the installed code" in capsys.readouterr().out
    prov["teddy_sources_sha256"] = "0" * 64  # as if another version of the code had made it
    (tmp / "report" / "provenance.json").write_text(json.dumps(prov))
    main(["verify", str(tmp / "report")])
    assert "these numbers were made by other code" in capsys.readouterr().out


def test_a_gpu_runs_report_is_rebuilt_without_a_gpu(pipeline, monkeypatch, capsys):
    """The report and prepare_data put nothing on a device: run.device: cuda (a GPU run's config)
    does not stop them where no CUDA device is visible; the training stages still refuse."""
    import torch

    tmp, _ = pipeline
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda = ["--config", str(BASE), "--config", str(TINY), "--set", "run.device=cuda"]
    evals = [str(p) for p in sorted(tmp.glob("eval_*"))]
    sets = ["--set", "distill.methods=[teddy, sre2l, random]", "--set", "distill.ipcs=[2]"]
    sets += ["--set", "evaluate.hard_label_archs=[convnet]"]  # the runs' own protocol (checked by report)
    assert main(["report", *cuda, *sets, "--evaluations", *evals, "--out", str(tmp / "report_cuda")]) == 0
    assert json.loads((tmp / "report_cuda" / "metrics.json").read_text())["device"] == "cpu"
    assert main(["prepare-data", *cuda, "--out", str(tmp / "data_cuda")]) == 0
    # a training stage asked for CUDA without one: fails at once, naming the key
    assert main(["pretrain-pool", *cuda, "--data", str(tmp / "data"), "--out", str(tmp / "pool_cuda")]) != 0
    assert "run.device" in capsys.readouterr().err
    assert not (tmp / "pool_cuda" / "manifest.json").exists()
