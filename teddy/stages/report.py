"""Stage report: one table of accuracy and stage runtimes per dataset/method/IPC/arch/seed
(CSV + Markdown), the improvement over random real images (IOR), and a plot."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from teddy import config
from teddy.config import STUDIES_DIR, to_dict
from teddy.io.checkpoints import code_digest
from teddy.io.files import ArtifactError, atomic_path, read_json, write_json
from teddy.method import registry
from teddy.protocol import full_data_ipc, full_data_row
from teddy.runtime.provenance import git_sha, provenance
from teddy.workflow.params import lookup, param_keys
from teddy.workflow.plan import evaluation_grid

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"  # the code, config and command that made the report
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT = "accuracy.png"
STAGES = ("prepare_data", "pretrain_pool", "distill", "relabel", "evaluate")
FULL_DATA = "full data"  # method label of the whole-training-set reference row


def provenance_of(cfg) -> dict:
    """The code (git commit and dirty flag, or why there is none; teddy's sources sha256), the
    resolved config's sha256 and the command this report comes from."""
    import hashlib
    import json

    config_json = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return provenance() | {"config_sha256": hashlib.sha256(config_json).hexdigest(), "study": study_record(cfg)}


def study_record(cfg) -> dict:
    """The study a report belongs to: its name, file (None: a config that is no committed study) and
    the commands that rebuild it."""

    name = cfg.study.name
    file = STUDIES_DIR / f"{name}.yaml"
    return {
        "name": name,
        "file": f"config/studies/{name}.yaml" if file.is_file() else None,
        "question": cfg.study.question,
        "rebuild": [f"snakemake --cores all --config study={name}", f"make repro STUDY={name}"]
        if file.is_file()
        else [],
    }


def provenance_line(prov: dict) -> str:
    if prov["git_sha"] == "unknown":
        code = f"no git commit ({prov['git_note']})"
    else:
        code = f"commit `{prov['git_sha'][:12]}`" + (" + uncommitted changes" if prov["git_dirty"] else "")
    study = prov.get("study") or {}
    rebuilt = f" Rebuild: `{study['rebuild'][0]}`." if study.get("rebuild") else ""
    return (
        f"Study `{study.get('name', '?')}`.{rebuilt} "
        f"Made by {code}; teddy sources sha256 `{prov['teddy_sources_sha256'][:12]}`, config sha256 "
        f"`{prov['config_sha256'][:12]}`; command: `{prov['command']}`. "
        "`teddy verify` on this folder says whether the current code still matches."
    )


def stale_report(folder: Path) -> str | None:
    """Why a report folder's numbers come from another version of the code than the one installed
    (None: same sources, or no provenance recorded)."""

    path = folder / PROVENANCE
    if not path.is_file():
        return None
    prov = read_json(path)
    if prov.get("teddy_sources_sha256") == code_digest():
        return None
    now = git_sha()
    return (
        f"{folder}: these numbers were made by other code (commit {prov.get('git_sha', 'unknown')[:12]}"
        f"{', uncommitted changes' if prov.get('git_dirty') else ''}; now {now[:12]}): rerun the pipeline "
        f"(`{prov.get('command', 'snakemake')}`) to refresh them"
    )


def recorded_input(recorded: str, eval_dir: Path) -> Path:
    """A stage folder an evaluation's metrics record as its input: absolute, or relative to the
    project root the job ran in, which is the working directory or, for a report run elsewhere,
    the folder above ``eval_dir`` that holds it."""
    path = Path(recorded)
    if path.is_absolute() or path.exists():
        return path
    for root in Path(eval_dir).resolve().parents:
        if (root / path).exists():
            return root / path
    raise ArtifactError(
        f"{eval_dir / 'metrics.json'} records the input {recorded}, found neither under the working "
        "directory nor under a folder above the evaluation: run the report in the project the pipeline "
        "ran in, or restore that stage's output"
    )


def collect_row(eval_dir: Path) -> dict:
    """Follow an evaluation's recorded inputs back through the stages that produced them."""
    ev = read_json(eval_dir / "metrics.json")
    syn = read_json(recorded_input(ev["inputs"]["synthetic"], eval_dir) / "metrics.json")
    data = read_json(recorded_input(ev["inputs"]["data"], eval_dir) / "metrics.json")
    if "soft_labels" in ev["inputs"]:
        soft = read_json(recorded_input(ev["inputs"]["soft_labels"], eval_dir) / "metrics.json")
        pool_dir = soft["inputs"]["pool"]
    else:  # evaluate.labels: hard: no relabel job; a pool only where the method synthesized from one
        # (a merge job of shards records the pool its shards read as pool_dir)
        soft, pool_dir = {"wall_s": 0.0}, syn.get("inputs", {}).get("pool") or syn.get("pool_dir")
    pool = read_json(recorded_input(pool_dir, eval_dir) / "metrics.json") if pool_dir else {"wall_s": 0.0}
    walls = {"prepare_data": data, "pretrain_pool": pool, "distill": syn, "relabel": soft, "evaluate": ev}
    row = {k: ev[k] for k in ("dataset", "method", "ipc", "arch", "seed", "top1", "top5")}
    row["hard_top1"] = ev.get("hard_top1", float("nan"))  # evaluate.hard_label_archs only
    row["epochs"] = ev["epochs"] if "epochs" in ev else ev["curve"][-1]["epoch"]  # older runs: the curve's end
    row["pool_size"] = syn.get("pool_size", 0)  # members distill drew from (0: real images)
    problems = [*data.get("health", []), *pool.get("health", []), *syn.get("health", []), *ev.get("health", [])]
    row["health"] = "; ".join(problems)  # why the number is not a result (teddy.health); "" when none
    row |= {
        f"{stage}_s": round(walls[stage]["wall_s"] + walls[stage].get("shard_wall_s", 0), 3) for stage in STAGES
    }
    return row


_ABSENT = "<absent>"  # a key the recorded config does not have (written before the key existed)


def _recorded(data: dict, key: str):
    try:
        return lookup(data, key)
    except (KeyError, TypeError):
        return _ABSENT


def protocol_mismatches(want: dict, eval_dir: Path, seen: dict) -> list[tuple[str, str, str, str]]:
    """How the jobs behind one evaluation ran under other settings than the report's config ``want``
    (a plain dict) states: per job (evaluate, the relabel it read, the distill that made its set),
    every key its result depends on (teddy.workflow.params.param_keys: the keys whose change makes
    Snakemake rerun it) whose value in the job's own config.resolved.yaml differs, as (folder, key,
    ran, here). ``seen`` keeps the jobs already compared (a set's relabel and distill serve every
    student)."""
    ev = read_json(eval_dir / "metrics.json")
    jobs = [("evaluate", eval_dir, None)]
    if "soft_labels" in ev["inputs"]:
        jobs.append(("relabel", recorded_input(ev["inputs"]["soft_labels"], eval_dir), None))
    jobs.append(("distill", recorded_input(ev["inputs"]["synthetic"], eval_dir), ev["method"]))
    problems = []
    for stage, folder, method in jobs:
        if (folder, method) not in seen:
            resolved = folder / config.RESOLVED
            if not resolved.is_file():
                found = [(str(folder), config.RESOLVED, "nothing", "written by every stage")]
            else:
                ran = config.read_yaml(resolved)
                keys = param_keys(want, stage, method)
                pairs = {key: (_recorded(ran, key), _recorded(want, key)) for key in keys}
                found = [(str(folder), k, repr(a), repr(b)) for k, (a, b) in pairs.items() if a != b]
            seen[folder, method] = found
        problems += seen[folder, method]
    return problems


def check_protocol(cfg, eval_dirs: list[Path]) -> None:
    """Refuse to pair numbers made under another protocol than the report states (a stale folder
    of an earlier config, results copied in from another study): an ArtifactError naming each
    differing key with its two values, how many job folders ran with it, and one of them."""
    seen: dict = {}
    want = to_dict(cfg)
    problems = [p for d in eval_dirs for p in protocol_mismatches(want, d, seen)]
    if not problems:
        return
    folders: dict[tuple[str, str, str], list[str]] = {}
    for folder, key, ran, here in problems:
        folders.setdefault((key, ran, here), []).append(folder)
    lines = [
        f"{key} = {ran} where this config has {here}, in {len(set(where))} job folder(s), e.g. {where[0]}"
        for (key, ran, here), where in folders.items()
    ]
    raise ArtifactError(
        "the runs this report pairs were not all made under the protocol it states: "
        + "; ".join(lines)
        + ". Rerun them under this config (Snakemake reruns every job whose settings changed; "
        "`make repro` for DVC), or report them with the config they ran under"
    )


def flag_below_baseline(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """A run at chance where the baseline (same dataset/IPC/arch) is clearly not: said in its
    ``health`` beside what the baseline reaches (the comparison is then with a failed run)."""
    df = df.copy()
    if "health" not in df:
        df["health"] = ""
    df["health"] = df["health"].fillna("")
    base = df[(df.method == baseline) & ~df.health.str.contains("at chance")]
    reached = base.groupby(["dataset", "ipc", "arch"]).top1.mean()
    for i, row in df.iterrows():
        key = (row.dataset, row.ipc, row.arch)
        if "at chance" in row.health and row.method != baseline and key in reached.index:
            df.at[i, "health"] += f"; {baseline} reaches {reached[key]:.1f} % here"
    return df


def flagged_section(df: pd.DataFrame) -> list[str]:
    flagged = df[df.health != ""]
    if not len(flagged):
        return []
    lines = [
        f"\n**Flagged runs ({len(flagged)}):** their numbers are in the tables above, but they are failures"
        " (teddy/health.py), not results: fix the setting and rerun them.\n",
    ]
    lines += [f"- {r.method} IPC {r.ipc} {r.arch} seed {r.seed}: {r.health}" for r in flagged.itertuples()]
    return lines


def find_evaluations(folders: list[str]) -> list[Path]:
    """Each folder is an evaluation (holds metrics.json) or a tree searched for evaluations."""
    found = []
    for folder in map(Path, folders):
        found += (
            [folder]
            if (folder / "metrics.json").is_file()
            else sorted(p.parent for p in folder.rglob("metrics.json"))
        )
    if not found:
        raise FileNotFoundError(f"no evaluation metrics.json under {folders}: run evaluate first")
    return found


def in_config_grid(df: pd.DataFrame, cfg) -> pd.DataFrame:
    """Keep rows of the configured grid (a searched tree may hold runs of older configs)."""

    full = full_data_ipc(cfg)
    in_grid = df.method.isin(cfg.distill.methods) & df.ipc.isin(cfg.distill.ipcs)
    if full is not None:
        in_grid |= df.method.eq(registry.BASELINE) & df.ipc.eq(full)
    keep = (
        in_grid
        & df.dataset.eq(cfg.run.dataset)
        & df.arch.isin(cfg.evaluate.archs)
        & df.seed.isin(cfg.run.seeds)
    )
    if not keep.any():
        raise ValueError("none of the evaluations found matches the configured methods/ipcs/archs/seeds")
    df = df[keep].copy()
    renamed = full_data_row(cfg, full)  # that run is full data, not the baseline's own row
    df.loc[df.method.eq(registry.BASELINE) & df.ipc.eq(renamed), "method"] = FULL_DATA
    return df


def add_ior(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    keys = ["dataset", "ipc", "arch", "seed"]
    base = df[df.method == baseline][keys + ["top1"]].rename(columns={"top1": "baseline_top1"})
    out = df.merge(base, on=keys, how="left")
    out["ior"] = out["top1"] - out.pop("baseline_top1")
    return out


def add_hlr(df: pd.DataFrame) -> pd.DataFrame:
    """HLR = full data's hard-label top-1 − the set's (same dataset/arch/seed); NaN where either
    hard-label student was not trained."""
    keys = ["dataset", "arch", "seed"]
    full = df[df.method == FULL_DATA][keys + ["hard_top1"]].rename(columns={"hard_top1": "full_hard_top1"})
    out = df.merge(full, on=keys, how="left")
    out["hlr"] = out.pop("full_hard_top1") - out["hard_top1"]
    out.loc[out.method == FULL_DATA, "hlr"] = float("nan")
    return out


def missing_baseline(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Runs with no ``baseline`` evaluation of the same dataset/IPC/arch/seed: no IOR for them."""
    lacking = df.ior.isna() & ~df.method.isin([baseline, FULL_DATA])
    return df.loc[lacking, ["dataset", "method", "ipc", "arch", "seed"]]


def missing_runs(df: pd.DataFrame, cfg) -> list[str]:
    """Runs of the configured grid with no evaluation (a partial run, or a dvc.yaml generated for
    another grid), as 'method ipcK arch sS'."""

    renamed = full_data_row(cfg)
    have = set(zip(df.method, df.ipc, df.arch, df.seed, strict=True))
    wanted = [
        (
            FULL_DATA if (g["method"], g["ipc"]) == (registry.BASELINE, renamed) else g["method"],
            g["ipc"],
            g["arch"],
            g["seed"],
        )
        for g in evaluation_grid(to_dict(cfg))
    ]
    return [f"{m} ipc{i} {a} s{s}" for m, i, a, s in wanted if (m, i, a, s) not in have]


def missing_baseline_note(missing: pd.DataFrame, baseline: str) -> str:
    runs = "; ".join(f"{r.method} ipc{r.ipc} {r.arch} s{r.seed}" for r in missing.itertuples())
    return (
        f"\n**Missing baseline:** {len(missing)} run(s) have no `{baseline}` evaluation with the same "
        f"dataset/IPC/arch/seed, so no IOR: {runs}. Add `{baseline}` to distill.methods (and the same "
        "seeds) and rerun.\n"
    )


def cells(stats: pd.DataFrame) -> list[str]:
    """``mean ± std`` per row of ``stats`` (columns mean, std, count; std is the sample std over
    seeds); a single seed has no spread to show, so its cell is the value alone."""
    return [
        f"{m:.2f}" + (f" ± {s:.2f}" if n > 1 else "")
        for m, s, n in zip(stats["mean"], stats["std"], stats["count"], strict=True)
    ]


def mean_std_table(df: pd.DataFrame, value: str) -> pd.DataFrame:
    df = df.dropna(subset=[value])  # e.g. no IOR for the full-data row
    stats = df.groupby(["dataset", "method", "ipc", "arch"])[value].agg(["mean", "std", "count"])
    return pd.Series(cells(stats), index=stats.index).unstack("arch").fillna("").reset_index()


def paired_interval(diffs: pd.Series, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of paired differences over seeds and its Student-t ``level`` interval → (mean, low,
    high, n); one seed has no interval (low = high = NaN)."""
    from scipy import stats

    values = diffs.dropna().to_numpy(dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / n**0.5)
    return mean, mean - half, mean + half, n


ACROSS = "mean over students"  # the paired IOR table's column over every fully paired student


def test_section(df: pd.DataFrame, cfg) -> list[str]:
    """The paired IOR table's comparisons as tests: p and Holm-adjusted p (ior_test_table)."""
    table = ior_test_table(df, cfg.report.baseline_method, list(cfg.run.seeds))
    if table.empty or not table["p"].astype(bool).any():
        return []
    return [
        f"\nPaired t-tests of the table above (two-sided, mean difference to `{cfg.report.baseline_method}` "
        f"= 0 over seeds): p, and p Holm-adjusted over all {len(table)} comparisons of this table (the "
        "family a reader scans; a study's own confirmatory claim should name its one comparison).\n",
        grouped(table, cfg).to_markdown(index=False, disable_numparse=True),
    ]


def grouped(table: pd.DataFrame, cfg) -> pd.DataFrame:
    """``table`` with a column "group" after "method" (report.row_groups; empty for a method in none,
    "full data" for the full-data row), or unchanged when no groups are configured."""
    groups = dict(cfg.report.row_groups)
    if not groups or "method" not in table:
        return table
    label = {m: name for name, methods in groups.items() for m in methods} | {FULL_DATA: "full data"}
    out = table.copy()
    out.insert(list(out.columns).index("method") + 1, "group", [label.get(m, "") for m in out.method])
    return out


def against_sections(df: pd.DataFrame, cfg) -> list[str]:
    """A paired table against each method of report.also_against (a study's second comparisons,
    e.g. a variant against the paper form), computed like the main one."""
    out = []
    for other in cfg.report.also_against:
        if other not in set(df.method):
            out.append(f"\nPaired difference to `{other}`: no evaluation of `{other}` here.\n")
            continue
        paired = add_ior(df.drop(columns=["ior"]), other)
        out += [
            f"\nPaired difference to `{other}` (report.also_against): mean over the seeds both ran, "
            "[95 % Student-t interval] (n = seeds), as the paired IOR table above.\n",
            ior_interval_table(paired, other, list(cfg.run.seeds)).to_markdown(
                index=False, disable_numparse=True
            ),
        ]
    return out


def paired_groups(df: pd.DataFrame, baseline: str, seeds: list[int] | None = None):
    """The paired comparisons of a table against ``baseline``: (key {dataset, method, ipc}, column,
    per-seed differences, students) per method/IPC/arch, and, with ``seeds`` (the configured ones),
    column ACROSS: per seed the mean difference over the students paired at every one of those seeds
    (a student still partly run stays out), where at least two students qualify."""
    for (dataset, method, ipc), g in df.dropna(subset=["ior"]).groupby(["dataset", "method", "ipc"]):
        if method in (baseline, FULL_DATA):
            continue
        key = {"dataset": dataset, "method": method, "ipc": ipc}
        complete = []  # students paired at every configured seed
        for arch, ga in g.groupby("arch"):
            yield key, arch, ga.ior, 0
            if seeds and set(seeds) <= set(ga.seed):
                complete.append(arch)
        if len(complete) > 1:
            per_seed = g[g.arch.isin(complete) & g.seed.isin(seeds)].groupby("seed").ior.mean()
            yield key, ACROSS, per_seed, len(complete)


def ior_interval_table(df: pd.DataFrame, baseline: str, seeds: list[int] | None = None) -> pd.DataFrame:
    """Paired IOR per method/IPC/arch: mean difference to ``baseline`` over the seeds both ran
    (same seed = same teacher, relabel views and student init) with its 95 % t-interval; column
    ACROSS over the students paired at every configured seed (paired_groups), its cell counting them."""
    rows = [
        {**key, "arch": arch, "cell": interval_cell(*paired_interval(diffs), students)}
        for key, arch, diffs, students in paired_groups(df, baseline, seeds)
    ]
    if not rows:
        return pd.DataFrame()
    wide = pd.DataFrame(rows).pivot(index=["dataset", "method", "ipc"], columns="arch", values="cell")
    order = sorted(c for c in wide.columns if c != ACROSS) + [c for c in wide.columns if c == ACROSS]
    return wide[order].fillna("").reset_index()


def paired_p(diffs: pd.Series) -> float:
    """Two-sided p-value of the paired t-test (mean difference 0) over seeds; NaN below two seeds or
    when every difference is the same (no spread to test against)."""
    from scipy import stats

    values = diffs.dropna().to_numpy(dtype=float)
    if len(values) < 2 or values.std() == 0:
        return float("nan")
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted): the
    k-th smallest of m is multiplied by m − k + 1, kept monotone, capped at 1."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def ior_test_table(df: pd.DataFrame, baseline: str, seeds: list[int] | None = None) -> pd.DataFrame:
    """Every comparison of the paired IOR table with its paired t-test p-value and the p-value
    Holm-adjusted over the whole table (the family: every method/IPC/student cell and every mean
    over students)."""
    rows = [
        {
            **key,
            "students": arch if not students else f"{ACROSS} ({students})",
            "IOR": f"{diffs.mean():+.2f}",
            "n": int(diffs.notna().sum()),
            "p": paired_p(diffs),
        }
        for key, arch, diffs, students in paired_groups(df, baseline, seeds)
    ]
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    out["p (Holm)"] = holm(list(out.p))
    for col in ("p", "p (Holm)"):
        out[col] = [f"{v:.2g}" if v == v else "" for v in out[col]]
    return out


def interval_cell(mean: float, low: float, high: float, n: int, students: int = 0) -> str:
    """'+m [low, high] (n=seeds[, k students])'; one seed has no interval."""
    span = f" [{low:+.2f}, {high:+.2f}]" if n > 1 else ""
    return f"{mean:+.2f}{span} (n={n}" + (f", {students} students" if students else "") + ")"


def protocol_line(cfg) -> str:
    """The evaluation protocol in one sentence (evaluate.labels, optimiser, schedule, epochs)."""
    e = cfg.evaluate
    kind = (
        "hard labels: cross-entropy to each image's own label on the images as they are (no relabel, no views)"
        if e.labels == "hard"
        else f"soft labels: KL at T = {e.temperature:g} to the teacher's logits on relabel's stored views"
    )
    return (
        f"Protocol: {kind}; {e.optimizer}, lr {e.lr:g}, {e.schedule} schedule, "
        f"weight decay {e.weight_decay:g}, batch {e.batch_size}, {e.epochs} epochs."
    )


def hard_label_sections(df: pd.DataFrame) -> list[str]:
    """Hard-label top-1 and HLR tables (DD-Ranking), when evaluate.hard_label_archs trained any."""
    if df.hard_top1.isna().all():
        return []
    parts = [
        "\nHard-label top-1 (%): the same students on the same views with cross-entropy to each image's "
        "own label (evaluate.hard_label_archs).\n",
        mean_std_table(df, "hard_top1").to_markdown(index=False, disable_numparse=True),
    ]
    if df.hlr.notna().any():
        full = sorted(df[df.method == FULL_DATA].epochs.unique())
        sets = sorted(df[df.method != FULL_DATA].epochs.unique())
        epochs = (
            f" Full data's students trained {'/'.join(map(str, full))} epochs over the whole set "
            f"(evaluate.full_data_epochs), the sets' {'/'.join(map(str, sets))}."
            if full != sets
            else ""
        )
        parts += [
            "\nHLR: full data's hard-label top-1 minus the set's (same arch/seed; lower = the set recovers "
            f"more of the full data's hard-label accuracy).{epochs}\n",
            mean_std_table(df, "hlr").to_markdown(index=False, disable_numparse=True),
        ]
    return parts


def stage_times(df: pd.DataFrame) -> pd.DataFrame:
    """Mean wall seconds per stage job of each method/IPC (distill and relabel per set, evaluate per
    student architecture), so an ablation shows what each variant costs."""
    sets = df.drop_duplicates(["dataset", "method", "ipc", "seed"])
    per_set = sets.groupby(["dataset", "method", "ipc"])[["distill_s", "relabel_s"]].mean()
    per_arch = df.groupby(["dataset", "method", "ipc", "arch"]).evaluate_s.mean().unstack("arch")
    per_arch.columns = [f"evaluate_{a}_s" for a in per_arch.columns]
    return per_set.join(per_arch).round(1).reset_index()


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted(df.arch.unique())
    fig, axes = plt.subplots(1, len(archs), figsize=(4.5 * len(archs), 3.6), squeeze=False)
    single_ipc = df[df.method != FULL_DATA].ipc.nunique() == 1
    if single_ipc:  # one IPC (e.g. an ablation): one bar per method reads better than points
        fig.set_size_inches(5.5 * len(archs), max(2.8, 0.35 * df.method.nunique() + 1.6))
    for ax, arch in zip(axes[0], archs, strict=True):
        sub = df[df.arch == arch].groupby(["method", "ipc"]).top1.agg(["mean", "std"]).reset_index()
        if single_ipc:
            sub = sub.sort_values("mean")
            colors = ["0.55" if m in (registry.BASELINE, FULL_DATA) else "tab:blue" for m in sub.method]
            ax.barh(sub.method, sub["mean"], xerr=sub["std"].fillna(0), color=colors)
            for y, (value, err) in enumerate(zip(sub["mean"], sub["std"].fillna(0), strict=True)):
                ax.text(value + err, y, f" {value:.1f}", va="center", fontsize=8)  # past the error bar
            low = sub["mean"].min()
            ax.set_xlim(max(0, low - 10), min(100, sub["mean"].max() + 6))
            ax.set(
                title=f"{df.dataset.iloc[0]} · student {arch} · IPC {sub.ipc.iloc[0]}", xlabel="val top-1 (%)"
            )
            ax.grid(alpha=0.3, axis="x")
            continue
        for method, m in sub.groupby("method"):
            if method == FULL_DATA:  # upper bound: a line across the IPC axis
                ax.axhline(
                    m["mean"].iloc[0], color="k", ls="--", lw=1, label=f"{FULL_DATA} ({m.ipc.iloc[0]}/class)"
                )
                continue
            ax.errorbar(m.ipc, m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3, label=method)
        ipcs = sorted(df[df.method != FULL_DATA].ipc.unique())
        ax.set_xscale("log")
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.set(
            title=f"{df.dataset.iloc[0]} · student {arch}", xlabel="images per class", ylabel="val top-1 (%)"
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def pool_ablation(df: pd.DataFrame, cfg) -> pd.DataFrame | None:
    """Top-1 (mean ± std over seeds) by pool generation (rows) and pool size M (columns), for the
    configured teddy variants plus sre2l as the M = 1 base-only pool; None without such rows."""

    rows = []
    for name in df.method.unique():
        if name == FULL_DATA:
            continue
        variant_cfg, algo = config.resolve_variant(cfg, name)
        spec = registry.get(algo)
        if spec.pool is None:  # picks real images: no pool to ablate
            continue
        pool = spec.pool_kind(variant_cfg)
        if spec.objective not in ("matching", "bn"):  # another objective (e.g. unrolled): its own row
            pool += f" [{algo}]"
        base_distill, own = config.to_dict(cfg.distill), config.to_dict(variant_cfg.distill)
        other = {
            k: v for k, v in own.items() if k not in ("pool", "pool_size", "variants") and v != base_distill[k]
        }
        if other:  # a variant that also changes e.g. init gets its own row
            pool += " (" + ", ".join(f"{k}={v}" for k, v in sorted(other.items())) + ")"
        for _, r in df[df.method == name].iterrows():
            rows.append({"ipc": r.ipc, "arch": r.arch, "pool": pool, "M": int(r.pool_size), "top1": r.top1})
    table = pd.DataFrame(rows)
    if table.empty or table[["pool", "M"]].drop_duplicates().shape[0] < 2:
        return None
    stats = table.groupby(["ipc", "arch", "pool", "M"]).top1.agg(["mean", "std", "count"]).reset_index()
    stats["cell"] = cells(stats)
    wide = stats.pivot(index=["ipc", "arch", "pool"], columns="M", values="cell").fillna("")
    wide.columns = [f"M={m}" for m in wide.columns]
    return wide.reset_index()


def run(cfg, inputs: dict, outputs: dict, *, device, tracker) -> dict:
    """inputs: ``evaluations`` (list of evaluate dirs); outputs: ``out`` dir."""
    evaluations = find_evaluations(inputs["evaluations"])
    rows = [collect_row(d) for d in evaluations]
    df = in_config_grid(pd.DataFrame(rows), cfg)  # keeps the rows' index: evaluations[i] is row i
    check_protocol(cfg, [evaluations[i] for i in df.index])
    df = add_hlr(add_ior(df, cfg.report.baseline_method))
    df = flag_below_baseline(df, cfg.report.baseline_method)
    df = df.sort_values(["dataset", "method", "ipc", "arch", "seed"]).reset_index(drop=True)
    missing = missing_baseline(df, cfg.report.baseline_method)
    if len(missing):
        log.warning("%d run(s) have no %s baseline: no IOR for them", len(missing), cfg.report.baseline_method)
    flagged = df[df.health != ""]
    for r in flagged.itertuples():
        log.warning("flagged run %s ipc%s %s seed%s: %s", r.method, r.ipc, r.arch, r.seed, r.health)
    absent = missing_runs(df, cfg)
    if absent:
        log.warning("%d configured run(s) have no evaluation: %s", len(absent), "; ".join(absent))
    out = Path(outputs["out"])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / SUMMARY_CSV) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    seeds = ", ".join(str(s) for s in sorted(df.seed.unique()))
    prov = provenance_of(cfg)
    prov["devices"] = sorted(  # where the students trained (results/INDEX.md's "ran on")
        {(m := read_json(d / "metrics.json")).get("device_name") or m.get("device", "?") for d in evaluations}
    )
    md = [
        f"# Study `{cfg.study.name}`: {', '.join(df.dataset.unique())}\n",
        *([f"Question: {cfg.study.question}\n"] if cfg.study.question else []),
        provenance_line(prov) + "\n",
        *flagged_section(df),
        f"Student val top-1 (%), mean ± sample std over seeds {seeds} (a cell without ± is one seed);"
        f" rows method/IPC, columns student arch. {protocol_line(cfg)}\n",
        grouped(mean_std_table(df, "top1"), cfg).to_markdown(index=False, disable_numparse=True),
        f"\nIOR: top-1 minus `{cfg.report.baseline_method}` (same dataset/IPC/arch/seed, same protocol).\n",
        grouped(mean_std_table(df, "ior"), cfg).to_markdown(index=False, disable_numparse=True),
        f"\nPaired IOR: mean difference to `{cfg.report.baseline_method}` over the seeds both ran, "
        "[95 % Student-t interval] (n = seeds); an interval above 0 is a win, one that holds 0 is not "
        f"a difference. `{ACROSS}` (where two or more students are paired at every configured seed): per "
        "seed the mean difference over those students, then its interval over seeds.\n",
        grouped(ior_interval_table(df, cfg.report.baseline_method, list(cfg.run.seeds)), cfg).to_markdown(
            index=False, disable_numparse=True
        ),
        *test_section(df, cfg),
        *against_sections(df, cfg),
        "\nMean wall seconds per job (distill, relabel: per synthetic set; evaluate: per student).\n",
        stage_times(df).to_markdown(index=False, floatfmt=".1f"),
        *([missing_baseline_note(missing, cfg.report.baseline_method)] if len(missing) else []),
        *(
            [
                f"\n**Not run:** {len(absent)} configured run(s) have no evaluation here: {'; '.join(absent)}. "
                "Run the pipeline for them (Snakemake schedules only what is missing; for DVC, "
                "`make repro` regenerates dvc.yaml for the config first).\n"
            ]
            if absent
            else []
        ),
        *hard_label_sections(df),
        "\nStudent val top-5 (%), mean ± sample std over seeds.\n",
        mean_std_table(df, "top5").to_markdown(index=False, disable_numparse=True),
        "\nAll runs (wall seconds per stage):\n",
        df.to_markdown(index=False, floatfmt=".2f"),
    ]
    ablation = pool_ablation(df, cfg)
    if ablation is not None:
        at = len(md) - 2  # before the closing 'All runs' table
        md[at:at] = [
            "\nPool ablation: student top-1 (%) by pool generation and size M (same distillation budget"
            " and evaluation; `base` = the fully trained model alone, i.e. sre2l).\n",
            ablation.to_markdown(index=False, disable_numparse=True),
        ]
        with atomic_path(out / "pool_ablation.csv") as tmp:
            ablation.to_csv(tmp, index=False)
        tracker.log_artifact(out / "pool_ablation.csv")
    with atomic_path(out / SUMMARY_MD) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    plot(df, out / PLOT)
    for name in (SUMMARY_CSV, SUMMARY_MD, PLOT):
        tracker.log_artifact(out / name)
    tracker.log_table(df, "summary_table.json")  # the UI's table view of every run
    means = df.groupby(["method", "ipc", "arch"]).top1.mean()
    summary: dict = {}
    for (method, ipc, arch), value in means.items():
        summary.setdefault(method, {}).setdefault(f"ipc{ipc}", {})[arch] = round(float(value), 3)
    write_json(summary, out / "accuracy.json")
    write_json(prov, out / PROVENANCE)
    flat = {f"top1.{m}.ipc{i}.{a}": float(v) for (m, i, a), v in means.items()}
    ior = df.dropna(subset=["ior"]).groupby(["method", "ipc", "arch"]).ior.mean()
    flat |= {f"ior.{m}.ipc{i}.{a}": float(v) for (m, i, a), v in ior.items()}  # the pipeline run shows them
    counts = {"rows": len(df), "missing_baseline_runs": len(missing), "missing_runs": len(absent)}
    return {**counts, "flagged_runs": len(flagged), **flat}
