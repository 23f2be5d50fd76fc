"""Report tables computed from evaluation rows (no training): the pool ablation pivot."""

import numpy as np
import pandas as pd
import pytest

from teddy import config, protocol
from teddy.data import datasets
from teddy.stages import report

from .conftest import BASE

VARIANTS = (
    "distill.variants={t_prior3: {method: teddy, pool: prior, pool_size: 3},"
    " t_post3: {method: teddy, pool: post, pool_size: 3}, t_post5: {method: teddy, pool: post, pool_size: 5},"
    " t_post5r: {method: teddy, pool: post, pool_size: 5, init: real}}"
)


def test_pool_ablation_pivots_variants_by_generation_and_size():
    methods = "distill.methods=[random, sre2l, t_prior3, t_post3, t_post5, t_post5r]"
    cfg = config.load([BASE], [VARIANTS, methods, "pretrain_pool.post_members=5"])
    rows = [
        ("random", 0, 0, 80.0),
        ("sre2l", 1, 0, 60.0),
        ("t_prior3", 3, 0, 62.0),
        ("t_prior3", 3, 1, 64.0),
        ("t_post3", 3, 0, 70.0),
        ("t_post5", 5, 0, 72.0),
        ("t_post5r", 5, 0, 90.0),  # differs in init too: its own row, not averaged into post M=5
    ]
    df = pd.DataFrame(
        [
            {"method": m, "pool_size": p, "seed": s, "top1": t, "ipc": 10, "arch": "convnet"}
            for m, p, s, t in rows
        ]
    )
    table = report.pool_ablation(df, cfg).set_index("pool")
    assert list(table.columns) == ["ipc", "arch", "M=1", "M=3", "M=5"]
    assert table.loc["base", "M=1"] == "60.00"
    assert table.loc["prior", "M=3"] == "63.00 ± 1.41"  # mean ± std over the two seeds
    assert table.loc["post", "M=5"] == "72.00" and table.loc["prior", "M=5"] == ""
    assert table.loc["post (init=real)", "M=5"] == "90.00"
    assert report.pool_ablation(df[df.method.isin(["random", "sre2l"])], cfg) is None


def test_a_variant_that_cannot_run_fails_at_load():
    import pytest

    with pytest.raises(config.ConfigError, match="distill.variants.p: .*set pretrain_pool.post_members"):
        config.load([BASE], ["distill.variants={p: {method: teddy, pool: post}}"])


def test_full_data_row_is_named_kept_out_of_ior_and_drawn(tmp_path):
    cfg = config.load([BASE], ["evaluate.full_data=true", "evaluate.archs=[convnet]"])
    full = protocol.full_data_ipc(cfg)
    train_y = datasets.get("digits").reader(config.to_dict(cfg.prepare_data)).train_y
    assert full == int(np.bincount(train_y).min())  # every class's images, at the smallest class's size
    rows = [
        ("random", 1, 70.0),
        ("teddy", 1, 60.0),
        ("random", 10, 90.0),
        ("random", full, 97.0),
        ("sre2l", 1, 1.0),
    ]
    df = pd.DataFrame(
        [
            {"dataset": "digits", "method": m, "ipc": i, "arch": "convnet", "seed": 0, "top1": t}
            for m, i, t in rows
        ]
    )
    kept = report.in_config_grid(df, cfg)  # sre2l is not configured; the full row is
    assert sorted(kept.method) == ["full data", "random", "random", "teddy"]
    with_ior = report.add_ior(kept, "random")
    assert with_ior.set_index("method").ior.isna()["full data"]
    assert "full data" not in set(report.mean_std_table(with_ior, "ior").method)
    report.plot(with_ior, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 0


def test_mean_std_cells_use_the_sample_std_and_show_one_seed_as_the_value():
    rows = [("random", "convnet", 0, 70.0), ("random", "convnet", 1, 72.0), ("teddy", "convnet", 0, 65.0)]
    rows += [("random", "resnet18", 0, 60.0)]
    df = pd.DataFrame(
        [
            {"dataset": "d", "method": m, "ipc": 10, "arch": a, "seed": s, "top1": t, "top5": t + 20}
            for m, a, s, t in rows
        ]
    )
    table = report.mean_std_table(df, "top1").set_index("method")
    assert table.loc["random", "convnet"] == "71.00 ± 1.41"  # sample std (n − 1) of 70, 72
    assert table.loc["teddy", "convnet"] == "65.00"  # one seed: no spread to show
    assert table.loc["teddy", "resnet18"] == ""  # not run
    assert report.mean_std_table(df, "top5").set_index("method").loc["random", "resnet18"] == "80.00"


def test_stage_runtimes_follow_the_inputs_and_count_every_pool_job(tmp_path):
    from teddy.io.files import write_json

    d, p, s, r, e = (tmp_path / n for n in ("data", "pool", "syn", "soft", "eval"))
    write_json({"wall_s": 1.0}, d / "metrics.json")
    write_json({"wall_s": 0.5, "shard_wall_s": 123.0}, p / "metrics.json")  # assembly + member jobs
    write_json({"wall_s": 0.1, "shard_wall_s": 40.0, "pool_size": 4}, s / "metrics.json")
    write_json({"wall_s": 2.0, "inputs": {"pool": str(p)}}, r / "metrics.json")
    ev = {"dataset": "d", "method": "teddy", "ipc": 1, "arch": "convnet", "seed": 0, "top1": 50.0, "top5": 90.0}
    ev["epochs"] = 3
    inputs = {"synthetic": str(s), "soft_labels": str(r), "data": str(d)}
    write_json(ev | {"wall_s": 7.0, "inputs": inputs}, e / "metrics.json")
    row = report.collect_row(e)
    assert row["pretrain_pool_s"] == 123.5 and row["distill_s"] == 40.1 and row["evaluate_s"] == 7.0
    assert row["prepare_data_s"] == 1.0 and row["relabel_s"] == 2.0 and row["pool_size"] == 4


def test_a_run_without_its_baseline_is_flagged_not_dropped():
    rows = [
        {"dataset": "digits", "method": m, "ipc": i, "arch": "convnet", "seed": s, "top1": t}
        for m, i, s, t in [
            ("random", 1, 0, 70.0),
            ("teddy", 1, 0, 60.0),
            ("teddy", 1, 1, 62.0),
            ("teddy", 10, 0, 90.0),
        ]
    ]
    df = report.add_ior(pd.DataFrame(rows), "random")
    missing = report.missing_baseline(df, "random")
    assert [(r.ipc, r.seed) for r in missing.itertuples()] == [(1, 1), (10, 0)]
    note = report.missing_baseline_note(missing, "random")
    assert "2 run(s) have no `random` evaluation" in note and "teddy ipc10 convnet s0" in note


def test_paired_ior_interval_uses_only_paired_seeds_and_the_t_quantile():
    """teddy − random per seed = 1, 2, 3 on seeds 0–2 (seed 3 has no random run): mean 2, sample
    std 1, t(0.975, 2) = 4.3027 → half-width 4.3027 / √3 = 2.484."""
    rows = [("random", s, 70.0 + s) for s in range(3)] + [("teddy", s, 71.0 + 2 * s) for s in range(3)]
    rows += [("teddy", 3, 99.0)]
    df = pd.DataFrame(
        [{"dataset": "d", "method": m, "ipc": 10, "arch": "convnet", "seed": s, "top1": t} for m, s, t in rows]
    )
    df = report.add_ior(df, "random")
    table = report.ior_interval_table(df, "random").set_index("method")
    assert table.loc["teddy", "convnet"] == "+2.00 [-0.48, +4.48] (n=3)"
    assert "random" not in table.index  # the baseline against itself is no comparison
    mean, low, high, n = report.paired_interval(pd.Series([5.0]))
    assert (mean, n) == (5.0, 1) and np.isnan(low) and np.isnan(high)  # one seed: no interval


def test_hlr_is_full_data_hard_top1_minus_the_sets_same_arch_and_seed():
    rows = [
        (report.FULL_DATA, "convnet", 0, 90.0),
        (report.FULL_DATA, "convnet", 1, 92.0),
        ("teddy", "convnet", 0, 60.0),
        ("teddy", "convnet", 1, 70.0),
        ("teddy", "resnet18", 0, float("nan")),  # no hard-label student for this arch
    ]
    df = pd.DataFrame(
        [{"dataset": "d", "method": m, "ipc": 10, "arch": a, "seed": s, "hard_top1": h} for m, a, s, h in rows]
    )
    out = report.add_hlr(df).set_index(["method", "arch", "seed"]).hlr
    assert out[("teddy", "convnet", 0)] == 30.0 and out[("teddy", "convnet", 1)] == 22.0
    assert np.isnan(out[("teddy", "resnet18", 0)]) and np.isnan(out[(report.FULL_DATA, "convnet", 0)])
    # the HLR section says when the full-data row trained other epochs than the sets
    df["top1"], df["epochs"] = 50.0, [10, 10, 200, 200, 200]
    text = "\n".join(report.hard_label_sections(report.add_hlr(df)))
    assert (
        "Full data's students trained 10 epochs over the whole set (evaluate.full_data_epochs), the sets' 200."
        in text
    )
    df["epochs"] = 200
    assert "Full data's students trained" not in "\n".join(report.hard_label_sections(report.add_hlr(df)))


def test_configured_runs_without_an_evaluation_are_listed():
    """A partial run, or a dvc.yaml generated for another grid, must not shrink the report silently."""
    cfg = config.load([BASE], ["evaluate.full_data=true", "evaluate.archs=[convnet]", "run.seeds=[0, 1]"])
    full = protocol.full_data_ipc(cfg)
    present = [("random", 1, 0), ("teddy", 1, 0), ("random", 10, 0), ("teddy", 10, 0), ("full data", full, 0)]
    df = pd.DataFrame(
        [{"method": m, "ipc": i, "arch": "convnet", "seed": s, "top1": 50.0} for m, i, s in present]
        + [{"method": m, "ipc": i, "arch": "convnet", "seed": 1, "top1": 50.0} for m, i, _ in present[:3]]
    )
    assert report.missing_runs(df, cfg) == ["teddy ipc10 convnet s1", f"full data ipc{full} convnet s1"]


def test_a_run_rewriting_its_committed_outputs_is_not_uncommitted_code(tmp_path):
    """A committed report and dvc.lock are rewritten by the run that refreshes them: the report must
    still name its commit as clean; an edited code or config file is 'uncommitted changes'."""
    import shutil
    import subprocess
    import sys

    from .conftest import ROOT

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "teddy", repo / "teddy", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "results" / "digits" / "report").mkdir(parents=True)
    (repo / "results" / "digits" / "report" / "summary.md").write_text("old\n")
    (repo / "dvc.lock").write_text("old\n")
    (repo / "config.yaml").write_text("a: 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)

    def dirty():
        probe = "from teddy.runtime.provenance import git_state; print(git_state()['git_dirty'])"
        return subprocess.run(
            [sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True
        ).stdout.strip()

    (repo / "results" / "digits" / "report" / "summary.md").write_text("new\n")
    (repo / "dvc.lock").write_text("new\n")
    assert dirty() == "False"
    (repo / "config.yaml").write_text("a: 2\n")
    assert dirty() == "True"


def _rows(rows, **fixed):
    return pd.DataFrame([fixed | r for r in rows])


def test_collect_row_reads_hard_top1_pool_size_and_stage_seconds(tmp_path):
    """collect_row follows an evaluation's inputs: hard_top1 when a hard-label student ran (NaN
    otherwise), the pool size distill recorded (0 for a real-image set, which records none), each
    stage's wall seconds to the millisecond."""
    from teddy.io.files import write_json

    d, p, r = tmp_path / "data", tmp_path / "pool", tmp_path / "soft"
    write_json({"wall_s": 1.23456}, d / "metrics.json")
    write_json({"wall_s": 2.0}, p / "metrics.json")
    write_json({"wall_s": 3.0, "inputs": {"pool": str(p)}}, r / "metrics.json")
    ev = {"dataset": "d", "method": "m", "ipc": 1, "arch": "convnet", "seed": 0, "top1": 50.0, "top5": 90.0}
    rows = {}
    for name, syn_metrics, extra in (
        ("hard", {"wall_s": 0.5, "pool_size": 3}, {"hard_top1": 41.5, "epochs": 7}),
        ("soft_only", {"wall_s": 0.5}, {"curve": [{"epoch": 2}, {"epoch": 5}]}),  # before metrics had epochs
    ):
        s, e = tmp_path / f"syn_{name}", tmp_path / f"eval_{name}"
        write_json(syn_metrics, s / "metrics.json")
        inputs = {"synthetic": str(s), "soft_labels": str(r), "data": str(d)}
        write_json(ev | extra | {"wall_s": 7.0, "inputs": inputs}, e / "metrics.json")
        rows[name] = report.collect_row(e)
    assert rows["hard"]["hard_top1"] == 41.5 and rows["hard"]["pool_size"] == 3
    assert np.isnan(rows["soft_only"]["hard_top1"]) and rows["soft_only"]["pool_size"] == 0
    assert rows["hard"]["prepare_data_s"] == 1.235
    assert rows["hard"]["epochs"] == 7 and rows["soft_only"]["epochs"] == 5  # student epochs


def test_full_data_keeps_random_s_name_when_its_ipc_is_configured():
    """With full data's IPC among distill.ipcs, that random run is random's own row (not renamed);
    random runs at IPCs outside the grid stay out whatever evaluate.full_data says."""
    cfg = config.load([BASE], ["evaluate.full_data=true", "evaluate.archs=[convnet]"])
    full = protocol.full_data_ipc(cfg)
    same = config.load(
        [BASE], ["evaluate.full_data=true", "evaluate.archs=[convnet]", f"distill.ipcs=[1, {full}]"]
    )
    off = config.load([BASE], ["evaluate.archs=[convnet]"])
    assert protocol.full_data_row(cfg) == full and protocol.full_data_row(same) is None
    assert protocol.full_data_row(off) is None
    rows = [{"method": "random", "ipc": i, "top1": 50.0} for i in (1, 7, full)] + [
        {"method": "teddy", "ipc": full, "top1": 40.0}
    ]
    df = _rows(rows, dataset="digits", arch="convnet", seed=0)
    kept = report.in_config_grid(df, same)
    assert sorted(zip(kept.method, kept.ipc, strict=True)) == [
        ("random", 1),
        ("random", full),
        ("teddy", full),
    ]
    kept = report.in_config_grid(df, cfg)  # IPC 7 is in neither grid; teddy at the full IPC neither
    assert sorted(zip(kept.method, kept.ipc, strict=True)) == [("full data", full), ("random", 1)]
    with pytest.raises(ValueError, match="none of the evaluations found matches"):
        report.in_config_grid(df.assign(dataset="other"), cfg)


def test_tables_keep_rows_whose_other_columns_are_empty():
    """A row with no hard-label student (hard_top1 NaN) still has its top-1 and IOR cells; a method
    without a student shows an empty cell."""
    rows = [
        {"method": "random", "arch": "convnet", "seed": 0, "top1": 70.0, "hard_top1": 60.0},
        {"method": "random", "arch": "resnet18", "seed": 0, "top1": 72.0, "hard_top1": float("nan")},
        {"method": "teddy", "arch": "convnet", "seed": 0, "top1": 71.0, "hard_top1": 61.0},
        {"method": "teddy", "arch": "resnet18", "seed": 0, "top1": 69.0, "hard_top1": float("nan")},
        {"method": "sre2l", "arch": "convnet", "seed": 0, "top1": 65.0, "hard_top1": float("nan")},
    ]
    df = report.add_ior(_rows(rows, dataset="d", ipc=10), "random")
    top1 = report.mean_std_table(df, "top1").set_index("method")
    assert top1.loc["random", "resnet18"] == "72.00" and top1.loc["sre2l", "resnet18"] == ""
    ior = report.ior_interval_table(df, "random").set_index("method")
    assert ior.loc["teddy", "resnet18"] == "-3.00 (n=1)"  # one seed: the value, no interval
    assert ior.loc["sre2l", "convnet"] == "-5.00 (n=1)" and ior.loc["sre2l", "resnet18"] == ""


def test_paired_interval_scales_with_the_spread_and_starts_at_two_seeds():
    """diffs 2, 6: mean 4, sample std 2√2, t(0.975, 1) = 12.706 → half-width 12.706 · 2√2 / √2 = 25.41;
    no seeds: NaN mean, no interval."""
    mean, low, high, n = report.paired_interval(pd.Series([2.0, 6.0]))
    assert (mean, n) == (4.0, 2) and high - mean == pytest.approx(25.412, abs=1e-3) and low == 2 * mean - high
    empty = report.paired_interval(pd.Series([], dtype=float))
    assert empty[3] == 0 and all(np.isnan(v) for v in empty[:3])
    df = _rows(
        [{"method": m, "seed": s, "top1": t} for m, s, t in [("random", 0, 70.0), ("random", 1, 70.0)]]
        + [{"method": "teddy", "seed": 0, "top1": 72.0}, {"method": "teddy", "seed": 1, "top1": 76.0}],
        dataset="d",
        ipc=10,
        arch="convnet",
    )
    cell = (
        report.ior_interval_table(report.add_ior(df, "random"), "random")
        .set_index("method")
        .loc["teddy", "convnet"]
    )
    assert cell == "+4.00 [-21.41, +29.41] (n=2)"


def test_stage_times_per_set_and_per_student():
    """distill/relabel seconds once per set (seed), averaged over seeds however many students each
    set has; evaluate per student; to a tenth of a second."""
    rows = [
        {"seed": 0, "arch": "convnet", "distill_s": 10.0, "relabel_s": 2.0, "evaluate_s": 5.0},
        {"seed": 0, "arch": "resnet18", "distill_s": 10.0, "relabel_s": 2.0, "evaluate_s": 50.0},
        {"seed": 1, "arch": "convnet", "distill_s": 20.0, "relabel_s": 4.0, "evaluate_s": 5.25},
    ]
    table = report.stage_times(_rows(rows, dataset="d", method="teddy", ipc=10)).iloc[0]
    assert (table.distill_s, table.relabel_s) == (15.0, 3.0)  # not 13.3 / 2.7: seed 0 counts once
    assert (table.evaluate_convnet_s, table.evaluate_resnet18_s) == (5.1, 50.0)  # 5.125 → 5.1


def test_pool_ablation_rows_for_other_objectives_changed_keys_and_full_data():
    """An unrolled variant gets its own row ('… [unrolled]'); a variant changing two keys lists both;
    the full-data row is skipped wherever it comes; two (pool, M) cells already make a table."""
    variants = (
        "distill.variants={t_post3: {method: teddy, pool: post, pool_size: 3},"
        " u_post3: {method: unrolled, pool: post, pool_size: 3},"
        " t_two: {method: teddy, pool: post, pool_size: 3, init: real, iterations: 7}}"
    )
    methods = "distill.methods=[random, sre2l, t_post3, u_post3, t_two]"
    cfg = config.load([BASE], [variants, methods, "pretrain_pool.post_members=3"])
    rows = [("full data", 0, 99.0), ("sre2l", 1, 60.0), ("t_post3", 3, 70.0), ("u_post3", 3, 66.0)]
    rows += [("t_two", 3, 75.0)]
    df = _rows([{"method": m, "pool_size": p, "top1": t} for m, p, t in rows], seed=0, ipc=10, arch="convnet")
    table = report.pool_ablation(df, cfg).set_index("pool")
    assert table.loc["post", "M=3"] == "70.00" and table.loc["post [unrolled]", "M=3"] == "66.00"
    assert table.loc["post (init=real, iterations=7)", "M=3"] == "75.00"
    assert table.loc["base", "M=1"] == "60.00"
    two = report.pool_ablation(df[df.method.isin(["sre2l", "t_post3"])], cfg)
    assert two is not None and len(two) == 2


def test_a_report_run_outside_the_project_finds_the_inputs_its_evaluations_record(tmp_path, monkeypatch):
    """Stages record their inputs relative to the project root they ran in; a report run from another
    folder finds them under the evaluation's ancestors, and a missing one is named with the fix."""
    from teddy.io.files import ArtifactError, write_json

    project = tmp_path / "project"
    rel = {n: f"results/d/{n}" for n in ("data", "pool", "syn", "soft")}
    write_json({"wall_s": 1.0}, project / rel["data"] / "metrics.json")
    write_json({"wall_s": 2.0}, project / rel["pool"] / "metrics.json")
    write_json({"wall_s": 3.0}, project / rel["syn"] / "metrics.json")
    write_json({"wall_s": 4.0, "inputs": {"pool": rel["pool"]}}, project / rel["soft"] / "metrics.json")
    ev = {"dataset": "d", "method": "m", "ipc": 1, "arch": "convnet", "seed": 0, "top1": 5.0, "top5": 9.0}
    inputs = {"synthetic": rel["syn"], "soft_labels": rel["soft"], "data": rel["data"]}
    e = project / "results" / "d" / "evaluate" / "m" / "ipc1" / "convnet" / "seed0"
    write_json(ev | {"wall_s": 5.0, "epochs": 3, "inputs": inputs}, e / "metrics.json")
    monkeypatch.chdir(tmp_path)  # not the project root
    row = report.collect_row(e)
    assert (row["prepare_data_s"], row["pretrain_pool_s"], row["distill_s"], row["relabel_s"]) == (1, 2, 3, 4)
    (project / rel["pool"] / "metrics.json").unlink()
    (project / rel["pool"]).rmdir()
    with pytest.raises(ArtifactError, match="records the input results/d/pool, found neither under"):
        report.collect_row(e)


def test_paired_ior_over_students_averages_per_seed_over_fully_paired_students_only():
    """Students a, b paired at seeds 0–2 (teddy − random = 1, 2, 3 on a; 3, 4, 5 on b): per-seed
    means 2, 3, 4 → mean 3, half-width t(0.975, 2) · 1 / √3 = 2.484. Student c lacks seed 2 (its +100
    would move the mean) and stays out; sre2l, fully paired on one student only, gets no cell."""
    diffs = {"a": [1.0, 2.0, 3.0], "b": [3.0, 4.0, 5.0], "c": [100.0, 100.0]}
    rows = [
        {"method": "random", "arch": a, "seed": s, "top1": 50.0}
        for a, d in diffs.items()
        for s in range(len(d))
    ]
    rows += [
        {"method": "teddy", "arch": a, "seed": s, "top1": 50.0 + v}
        for a, d in diffs.items()
        for s, v in enumerate(d)
    ]
    rows += [{"method": "sre2l", "arch": "a", "seed": s, "top1": 40.0} for s in range(3)]
    rows += [{"method": "sre2l", "arch": "b", "seed": 0, "top1": 40.0}]
    df = report.add_ior(_rows(rows, dataset="d", ipc=10), "random")
    table = report.ior_interval_table(df, "random", [0, 1, 2]).set_index("method")
    assert table.loc["teddy", report.ACROSS] == "+3.00 [+0.52, +5.48] (n=3, 2 students)"
    assert (
        table.loc["sre2l", report.ACROSS] == ""
        and table.loc["teddy", "c"] == "+100.00 [+100.00, +100.00] (n=2)"
    )
    assert list(table.columns)[-1] == report.ACROSS  # after the students
    assert report.ACROSS not in report.ior_interval_table(df, "random").columns  # no configured seeds given


def test_holm_adjustment_matches_the_textbook_example():
    """Holm (1979): p = 0.01, 0.04, 0.03, 0.005 (m = 4) → 0.03, 0.06, 0.06, 0.02; NaN is not counted."""
    from teddy.stages.report import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, float("nan"), 0.04])
    assert (
        adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04) and adjusted[1] != adjusted[1]
    )
    assert holm([0.6, 0.9]) == [1.0, 1.0]


def test_paired_tests_give_each_comparison_its_p_and_holm_p():
    """Two methods against random over 4 seeds on one student: a clear gain is significant after the
    adjustment, a noisy zero is not; the p-values are scipy's paired t-test."""
    from scipy import stats

    from teddy.stages.report import add_ior, ior_test_table

    rows = []
    for seed, (gain, noise) in enumerate([(5.1, 0.3), (4.8, -0.4), (5.3, 0.2), (4.9, -0.1)]):
        for method, top1 in (("random", 50.0), ("good", 50.0 + gain), ("same", 50.0 + noise)):
            rows.append(
                {"dataset": "d", "method": method, "ipc": 1, "arch": "convnet", "seed": seed, "top1": top1}
            )
    table = ior_test_table(add_ior(pd.DataFrame(rows), "random"), "random", [0, 1, 2, 3]).set_index("method")
    p_good = stats.ttest_1samp([5.1, 4.8, 5.3, 4.9], 0).pvalue
    p_same = stats.ttest_1samp([0.3, -0.4, 0.2, -0.1], 0).pvalue
    assert float(table.loc["good", "p"]) == pytest.approx(p_good, rel=0.05)
    assert float(table.loc["good", "p (Holm)"]) == pytest.approx(2 * p_good, rel=0.05)
    assert float(table.loc["same", "p (Holm)"]) == pytest.approx(min(1, p_same), rel=0.05)
    assert float(table.loc["good", "p (Holm)"]) < 0.05 < float(table.loc["same", "p (Holm)"])


def test_row_groups_label_every_table_row_and_unknown_names_are_refused():
    from teddy.stages.report import FULL_DATA, grouped, mean_std_table

    cfg = config.load(
        [BASE], overrides=["report.row_groups={as published: [sre2l], package additions: [teddy]}"]
    )
    rows = [
        {"dataset": "d", "method": m, "ipc": 1, "arch": "convnet", "seed": 0, "top1": 50.0}
        for m in ("random", "sre2l", "teddy", FULL_DATA)
    ]
    table = grouped(mean_std_table(pd.DataFrame(rows), "top1"), cfg).set_index("method")
    assert list(table.columns[:3]) == ["dataset", "group", "ipc"]
    assert table.group.to_dict() == {
        FULL_DATA: "full data",
        "random": "",
        "sre2l": "as published",
        "teddy": "package additions",
    }
    with pytest.raises(config.ConfigError, match="report.row_groups.as published: 'teddy_x'"):
        config.load([BASE], overrides=["report.row_groups={as published: [teddy_x]}"])
