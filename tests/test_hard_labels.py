"""The hard-label protocol (evaluate.labels: hard, config/protocols/dc_hard_label.yaml): no relabel
job and no pool unless a method synthesizes from one; the student learns each image's own label on
the images as they are, with DC's optimiser and step schedule; the CLI and the config name the keys."""

import pytest
import torch

from teddy import cli, config
from teddy.io.files import read_json
from teddy.stages import evaluate
from teddy.train import student_schedule
from teddy.workflow import plan

from .conftest import BASE, ROOT, TINY, tiny_synthetic_set
from .test_workflow import normalise, snakemake

HARD = ROOT / "config" / "protocols" / "dc_hard_label.yaml"


def planned(tmp_path, text: str):
    delta = tmp_path / "delta.yaml"
    delta.write_text(text)
    return delta, plan.plan(config.to_dict(config.load([BASE, delta])))


def test_random_only_under_hard_labels_trains_no_pool_and_no_relabel(tmp_path):
    delta, jobs = planned(
        tmp_path, "distill: {methods: [random], ipcs: [1, 2]}\nevaluate: {labels: hard, archs: [convnet_in]}\n"
    )
    stages = {j.stage for j in jobs}
    assert stages == {"prepare_data", "distill", "evaluate", "report"}
    for job in jobs:
        if job.stage == "evaluate":
            assert "--soft-labels" not in job.command and "--pool" not in job.command
            assert not any("/relabel/" in d or "/pool/" in d for d in job.deps)
    # Snakemake schedules exactly these jobs (its evaluate rule asks for no soft labels or pool)
    result = snakemake(
        "-n", "-p", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = sorted(normalise(c.strip()) for c in result.stdout.splitlines() if " -m teddy " in c)
    assert commands == sorted(j.command for j in jobs)


def test_a_synthesizing_method_under_hard_labels_keeps_its_pool_but_no_relabel(tmp_path):
    _, jobs = planned(tmp_path, "distill: {methods: [teddy, random]}\nevaluate: {labels: hard}\n")
    stages = {j.stage for j in jobs}
    assert "relabel" not in stages and "pretrain_pool" in stages and "distill_shard" in stages
    _, soft = planned(tmp_path, "distill: {methods: [random]}\n")
    assert {"relabel", "pretrain_pool"} <= {j.stage for j in soft}


def test_step_schedule_drops_the_lr_tenfold_at_half_the_epochs():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = student_schedule(opt, "step", epochs=4, steps_per_epoch=3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01] * 6 + [0.001] * 6)
    with pytest.raises(ValueError, match="schedule"):
        student_schedule(opt, "linear", 4, 3)


def test_hard_label_student_learns_the_images_own_labels_without_views():
    """Two classes told apart by brightness: the student fits them with CE on the images as they are,
    and a wrong label moves it (the labels, not views or a teacher, are what it learns)."""
    cfg = config.load(
        [BASE, TINY], overrides=["evaluate.labels=hard", "evaluate.epochs=30", "evaluate.lr=0.05"]
    )
    torch.manual_seed(0)
    images = torch.cat([torch.full((4, 1, 8, 8), 0.1), torch.full((4, 1, 8, 8), 0.9)])
    labels = torch.tensor([0] * 4 + [1] * 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    losses = []
    evaluate.train_student(
        cfg,
        model,
        images,
        None,
        0,
        torch.device("cpu"),
        lambda e, loss, extra: losses.append(loss),
        hard_labels=labels,
    )
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
    assert (model(images).argmax(1) == labels).all()
    with pytest.raises(ValueError, match="hard labels"):
        evaluate.train_student(cfg, model, images, None, 0, torch.device("cpu"), lambda *a: None)


def test_hard_label_stages_run_from_the_cli_without_relabel(tmp_path):
    cfg, d, p, s = tiny_synthetic_set(
        tmp_path, "--set", "evaluate.labels=hard", "--set", "evaluate.archs=[convnet_in]"
    )
    out = tmp_path / "eval"
    args = ["--data", str(d), "--synthetic", str(s), "--arch", "convnet_in", "--seed", "0"]
    assert cli.main(["evaluate", *cfg, *args, "--out", str(out)]) == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["labels"] == "hard" and metrics["hard_top1"] == metrics["top1"]
    assert "train_loss" in metrics["curve"][-1]
    report = tmp_path / "report"
    assert cli.main(["report", *cfg, "--evaluations", str(out), "--out", str(report)]) == 0
    assert "Protocol: hard labels" in (report / "summary.md").read_text()


def test_cli_names_the_soft_labels_flag_the_protocol_wants(tmp_path, capsys):
    cfg, d, p, s = tiny_synthetic_set(tmp_path)
    args = [
        "--data",
        str(d),
        "--synthetic",
        str(s),
        "--arch",
        "convnet",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "e"),
    ]
    assert cli.main(["evaluate", *cfg, *args]) == 2
    assert "pass --soft-labels" in capsys.readouterr().err
    hard = ["--set", "evaluate.labels=hard"]
    assert cli.main(["evaluate", *cfg, *hard, *args, "--soft-labels", str(s)]) == 2
    assert "leave out --soft-labels" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_config_refuses_hard_label_archs_under_hard_labels():
    with pytest.raises(config.ConfigError, match="evaluate.hard_label_archs"):
        config.load([BASE, TINY], overrides=["evaluate.labels=hard", "evaluate.hard_label_archs=[convnet]"])


def test_extends_list_layers_files_in_order_each_once(tmp_path):
    """A study extending a dataset protocol and the hard-label protocol: both apply, the later wins
    where they overlap, and config/config.yaml (which both extend) does not come back between them,
    in either order."""
    (tmp_path / "config" / "studies").mkdir(parents=True)
    (tmp_path / "config" / "protocols").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(BASE.read_text())
    (tmp_path / "config" / "protocols" / "a.yaml").write_text(
        "extends: config/config.yaml\nevaluate: {epochs: 7, lr: 0.5}\n"
    )
    (tmp_path / "config" / "protocols" / "hard.yaml").write_text(HARD.read_text())
    study = tmp_path / "config" / "studies" / "s.yaml"
    study.write_text("question: q\nextends: [config/protocols/a.yaml, config/protocols/hard.yaml]\n")
    data = config.merged([study])
    assert data["evaluate"]["labels"] == "hard" and data["evaluate"]["lr"] == 0.01  # hard.yaml wins
    assert data["evaluate"]["epochs"] == 300
    study.write_text("question: q\nextends: [config/protocols/hard.yaml, config/protocols/a.yaml]\n")
    data = config.merged([study])
    assert data["evaluate"]["epochs"] == 7 and data["evaluate"]["labels"] == "hard"
    study.write_text("question: q\nextends: []\n")
    with pytest.raises(config.ConfigError, match="empty list"):
        config.merged([study])


def test_the_anchor_study_is_the_published_protocol():
    """What fm_anchor runs, against DC's code (VICO-UoE/DatasetCondensation utils.evaluate_synset,
    get_daparam, networks.ConvNet): the numbers a reader would check."""
    e = config.load([ROOT / "config" / "studies" / "fm_anchor.yaml"], check_data=False).evaluate
    assert (e.labels, e.archs, e.width, e.epochs, e.batch_size) == ("hard", ("convnet_in",), 128, 300, 256)
    assert (e.optimizer, e.lr, e.weight_decay, e.schedule) == ("sgd_plain", 0.01, 0.0005, "step")


def test_a_student_too_large_for_memory_names_evaluate_width(tmp_path, capsys):
    """evaluate.width=100000 asks for a ~360 GB ConvNet: the stage says which key, not an allocator
    traceback (a property test drew such a width once), and leaves no metrics behind."""
    cfg, d, p, s = tiny_synthetic_set(tmp_path, "--set", "evaluate.labels=hard")
    out = tmp_path / "eval"
    args = ["--data", str(d), "--synthetic", str(s), "--arch", "convnet", "--seed", "0", "--out", str(out)]
    assert cli.main(["evaluate", *cfg, "--set", "evaluate.width=100000", *args]) == 1
    assert "evaluate.width=100000" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
