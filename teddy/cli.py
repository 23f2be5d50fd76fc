"""``teddy <stage>``: one subcommand per stage; Snakemake and DVC call exactly these.

Every subcommand takes the layered config (``--config`` files, first = base, then ``--set
section.key=value``) and explicit input/output folders. It writes ``metrics.json`` (the stage's
figures + wall seconds + peak memory) and ``config.resolved.yaml`` into its output folder, and
mirrors both to one MLflow run named after the stage.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
from pathlib import Path

from teddy import config as config_mod
from teddy import protocol
from teddy.method import registry

log = logging.getLogger("teddy")

# stage → (help, input folders, selection options)
STAGES = {
    "prepare-data": ("Read, split, resize and cache the dataset.", [], []),
    "pretrain-pool": ("Train the base model and build the pool of weak models.", ["data?", "base?"], []),
    "distill": (
        f"Synthesize the distilled set ({' / '.join(registry.METHODS)}).",
        ["data", "pool?"],
        ["method", "ipc", "seed"],
    ),
    "relabel": ("Precompute the teacher's soft labels on stored crops.", ["synthetic", "pool"], ["seed"]),
    "evaluate": (
        "Train a student on the synthetic set; top-1 on real val.",
        ["data", "synthetic", "soft_labels?", "pool?"],
        ["arch", "seed"],
    ),
    "report": ("Tables and plot from evaluation folders.", ["evaluations"], []),
}


def non_negative(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: give a whole number, e.g. {flag} 0") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag} {value}: must be 0 or more") from None
        return value

    return parse


def positive(flag: str, kind: type = int):
    """A count (``int``) of 1 or more, or a finite ``float`` above 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: give a number, e.g. {flag} 10") from None
        if kind is int and value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {value}: must be 1 or more") from None
        if kind is float and not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{flag} {value}: must be a positive, finite number") from None
        return value

    return parse


SELECTION_TYPES = {"method": str, "ipc": non_negative("--ipc"), "seed": non_negative("--seed"), "arch": str}


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: use I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 ≤ I < N")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    from teddy.data import miniature  # its layout names only (not a stage's code: workflow.deps)

    parser = argparse.ArgumentParser(
        prog="teddy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (help_text, ins, sel) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            action="append",
            default=[],
            metavar="YAML",
            help="config file; repeat to layer deltas (default: config/config.yaml)",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="overrides",
            help="override one key, e.g. distill.iterations=50; repeatable",
        )
        for folder in ins:  # "name?" = only some selections need it
            optional = folder.endswith("?")
            folder = folder.rstrip("?")
            p.add_argument(
                f"--{folder.replace('_', '-')}",
                required=not optional,
                nargs="+" if folder == "evaluations" else None,
                metavar="DIR",
                help=f"input folder: {folder}" + (" (only for methods that need it)" if optional else ""),
            )
        for option in sel:
            hint = {"method": f"{', '.join(registry.METHODS)}, or a distill.variants name"}.get(option)
            p.add_argument(f"--{option}", required=True, type=SELECTION_TYPES[option], help=hint)
        if name == "pretrain-pool":
            p.add_argument(
                "--member",
                metavar="JOB",
                help="build one job only: base, prior:S (seed S's trajectory) or post:I; --out is its "
                "folder (post and prior targets need --base). Without it every job runs, then the manifest",
            )
            p.add_argument(
                "--assemble",
                nargs="+",
                metavar="DIR",
                dest="assemble_from",
                help="write --out/manifest.json from these job folders instead",
            )
            p.add_argument(
                "--replicate",
                type=non_negative("--replicate"),
                default=None,
                metavar="S",
                help="with pretrain_pool.replicate: build run seed S's own pool (its seeds offset by S)",
            )
        if name == "distill":
            p.add_argument(
                "--shard",
                type=parse_shard,
                default=None,
                metavar="I/N",
                help="synthesize only shard I of N (whole batches b ≡ I mod N) for a later --merge; "
                "without it the job synthesizes everything and writes the set",
            )
            p.add_argument(
                "--merge",
                nargs="+",
                metavar="DIR",
                dest="merge_from",
                help="assemble the synthetic set from these shard folders instead",
            )
        p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    check = sub.add_parser(
        "verify",
        help="Check every artifact under a results folder; print the command that rebuilds the bad ones.",
    )
    check.add_argument("results", metavar="RESULTS_DIR", help="e.g. results/ or results/fashion_mnist")
    sync = sub.add_parser(
        "sync-tracking",
        help="Log to MLflow what stages kept in tracking_pending.json while the store was unreachable.",
    )
    sync.add_argument("results", metavar="RESULTS_DIR")
    est = sub.add_parser(
        "estimate",
        help="GPU-hours, GPU memory and disk per stage for a config, before submitting anything.",
    )
    est.add_argument("--config", action="append", default=[], metavar="YAML", help="config files, base first")
    est.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    est.add_argument(
        "--tflops",
        type=positive("--tflops", float),
        default=None,
        help="effective TFLOP/s of one GPU (default: the config's resources.gpu_tflops)",
    )
    est.add_argument("--measure", action="store_true", help="time each architecture on --device instead")
    est.add_argument("--device", default="cpu", help="the device --measure times (cuda, cpu)")
    flow = sub.add_parser(
        "workflow",
        help="Write dvc.yaml from the stage table (teddy/workflow/plan.py): the jobs Snakemake runs.",
    )
    flow.add_argument("tool", choices=["dvc"])
    flow.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config files, base first (default: config/config.yaml)",
    )
    flow.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a study (config/studies/NAME.yaml); repeat for several, 'all' for every committed study "
        f"(default: {config_mod.DEFAULT_STUDY})",
    )
    flow.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="a machine key every command gets (run.device=cuda); repeatable",
    )
    flow.add_argument("--out", default="dvc.yaml", metavar="FILE", help="where to write it (default: dvc.yaml)")
    flow.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if --out is not what it would be"
    )
    index = sub.add_parser(
        "index", help="Write results/INDEX.md: one row per study of config/studies/ from its committed report."
    )
    index.add_argument("--out", default="results/INDEX.md", metavar="FILE")
    index.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out is not current")
    serve = sub.add_parser(
        "job-server",
        help="Import torch and MLflow once and run this machine's stage jobs in forks of it "
        "(TEDDY_JOB_SERVER names its socket; with `-- COMMAND`, for that command's jobs).",
    )
    serve.add_argument("--socket", metavar="PATH", help="where to listen (default: a new private folder)")
    serve.add_argument(
        "--idle-timeout",
        type=positive("--idle-timeout", float),
        metavar="S",
        help="stop after S s without a job",
    )
    serve.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...: serve while it runs")
    mini = sub.add_parser(
        "make-miniature",
        help="Write a small copy of an image-file layout (from Fashion-MNIST or digits) to try a layout on.",
    )
    mini.add_argument("--layout", required=True, choices=miniature.LAYOUTS)
    mini.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    mini.add_argument("--classes", type=positive("--classes"), default=10)
    mini.add_argument("--train", type=positive("--train"), default=40, help="training images per class")
    mini.add_argument("--val", type=positive("--val"), default=10, help="val images per class")
    mini.add_argument("--size", type=positive("--size"), default=64, help="side length in pixels")
    mini.add_argument("--val-style", choices=["folders", "csv", "devkit"], default="csv", help="imagenet's val")
    mini.add_argument("--bad", action="store_true", help="add files no decoder can read")
    return parser


def make_miniature(args) -> int:
    from teddy.data import miniature

    try:
        out = miniature.make(
            args.layout, args.out, args.classes, args.train, args.val, args.size, args.bad, args.val_style
        )
    except FileExistsError as err:
        print(f"teddy make-miniature: {err}", file=sys.stderr)
        return 2
    print(f"teddy make-miniature: {args.layout} miniature in {out}")
    return 0


def write_workflow(args) -> int:
    """``teddy workflow dvc``: dvc.yaml generated from the stage table, or --check that it is current."""
    from teddy.io.files import atomic_path
    from teddy.workflow import dvc

    studies = config_mod.study_names() if "all" in args.study else args.study
    if not args.config and not studies:
        studies = [config_mod.DEFAULT_STUDY]
    sets = ([args.config] if args.config else []) + [[f"config/studies/{name}.yaml"] for name in studies]
    try:
        for name in studies:
            config_mod.study_path(name)
        text = dvc.dvc_yaml(sets, args.overrides)
    except (config_mod.ConfigError, OSError) as err:
        print(f"teddy workflow: {err}", file=sys.stderr)
        return 2
    given = " ".join(
        [*("--config " + f for f in args.config), *("--study " + n for n in studies)]
        + [f"--set {shlex.quote(o)}" for o in args.overrides]
    )
    out = Path(args.out)
    if args.check:
        if out.is_file() and out.read_text() == text:
            print(f"teddy workflow: {out} is current for {given}")
            return 0
        print(
            f"teddy workflow: {out} does not match the stage table and {given}: regenerate it with "
            f"`python -m teddy workflow dvc {given}` (or `make dvc-yaml STUDY=...`)",
            file=sys.stderr,
        )
        return 1
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"teddy workflow: wrote {out} ({text.count('cmd:')} stages) for {given}")
    return 0


def write_index(args) -> int:
    from teddy import studies

    try:
        return studies.write(Path(args.out), args.check)
    except (config_mod.ConfigError, OSError, KeyError, ValueError) as err:
        print(f"teddy index: {err}", file=sys.stderr)
        return 2


def sync_tracking(results: str) -> int:
    from teddy import tracking
    from teddy.io.files import first_line

    pending = sorted(Path(results).rglob(tracking.PENDING))
    for path in pending:
        try:
            run_id = tracking.sync_pending(path)
        except Exception as err:  # noqa: BLE001 - the store is still down: say so, keep the file
            print(
                f"teddy sync-tracking: {path}: {first_line(err)}; kept for a later try",
                file=sys.stderr,
            )
            return 1
        print(f"logged {path} as MLflow run {run_id}")
    print(f"teddy sync-tracking: {len(pending)} pending run(s) logged")
    return 0


def verify(results: str) -> int:
    """``teddy verify RESULTS_DIR``: checksums, readability, NaN/Inf, consistency of every artifact."""
    from teddy.io import artifacts

    if not Path(results).is_dir():
        print(f"teddy verify: {results} is not a folder", file=sys.stderr)
        return 2
    from teddy.stages import report

    for folder in sorted({p.parent for p in Path(results).rglob(report.PROVENANCE)}):
        reason = report.stale_report(folder)
        print(f"teddy verify: {reason}" if reason else f"teddy verify: {folder} matches the installed code")
    checked, bad = artifacts.verify_tree(results)
    for path, problem in bad:
        print(f"BAD {path}: {problem}")
    if not bad:
        print(f"teddy verify: all {checked} artifacts under {results} are intact")
        return 0
    print(f"teddy verify: {len(bad)} of {checked} artifacts are damaged. Rebuild exactly these, with the")
    print("config they were made with (from the folder the command ran in):")
    for line in artifacts.rebuild_commands([p for p, _ in bad]):
        print(f"  {line}")
    return 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    os.environ["TEDDY_CLI_COMMAND"] = shlex.join(
        ["python", "-m", "teddy", *given]
    )  # runtime.provenance.run_command records it
    if args.stage in ("verify", "sync-tracking"):
        return {"verify": verify, "sync-tracking": sync_tracking}[args.stage](args.results)
    if args.stage == "make-miniature":
        return make_miniature(args)
    if args.stage == "workflow":
        return write_workflow(args)
    if args.stage == "estimate":
        return run_estimate(args)
    if args.stage == "index":
        return write_index(args)
    if args.stage == "job-server":
        return run_job_server(args)
    _, ins, sel = STAGES[args.stage]
    try:
        # after prepare-data the stages read its index: an image-file dataset's folder is not walked
        cfg = config_mod.load(args.config, args.overrides, list_files=args.stage == "prepare-data")
    except config_mod.ConfigError as err:
        print(f"teddy {args.stage}: {err}", file=sys.stderr)
        return 2
    inputs = {k.rstrip("?"): getattr(args, k.rstrip("?")) for k in ins}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    for key, value in inputs.items():
        for folder in value if isinstance(value, list) else [value]:
            if not Path(folder).is_dir():
                print(
                    f"teddy {args.stage}: --{key.replace('_', '-')} {folder} is not a folder; "
                    "run the stage that produces it first",
                    file=sys.stderr,
                )
                return 2
    selection = {k: getattr(args, k) for k in sel}
    replicate = selection.get("seed", getattr(args, "replicate", None))
    if args.stage == "pretrain-pool" and replicate is None:
        replicate = 0  # seed 0's pool: the recipe's own seeds (the one pool without replicate)
    if cfg.pretrain_pool.replicate:  # run seed S's jobs see pool S's seeds (teddy.protocol.replicate_config)
        if replicate is not None:  # prepare-data and report read no pool
            cfg = config_mod.freeze(protocol.replicate_config(cfg, replicate))
    elif getattr(args, "replicate", None) is not None:
        print(
            f"teddy {args.stage}: --replicate needs pretrain_pool.replicate: true; leave it out",
            file=sys.stderr,
        )
        return 2
    options = {
        k: getattr(args, k) for k in ("shard", "merge_from", "member", "assemble_from") if hasattr(args, k)
    }
    for flag, key in (("--merge", "merge_from"), ("--assemble", "assemble_from")):
        for folder in options.get(key) or []:
            if not Path(folder).is_dir():
                print(
                    f"teddy {args.stage}: {flag} {folder} is not a folder; run that job first", file=sys.stderr
                )
                return 2
    from teddy import runner  # torch and the stage modules load only when a stage runs

    problem = runner.check_selection(cfg, selection, inputs, options)
    if problem:
        print(f"teddy {args.stage}: {problem}", file=sys.stderr)
        return 2
    return runner.run(args.stage, cfg, inputs, Path(args.out), selection, options)


def run_job_server(args) -> int:
    """``teddy job-server``: kept out of :func:`main`, whose imports are every stage's code (the
    server's loop is not what a stage runs; the client, teddy/runtime/jobserver.py, is)."""
    from teddy.runtime import serve_jobs

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return serve_jobs.main(args.socket, args.idle_timeout, command)


def run_estimate(args) -> int:
    from teddy import estimate

    return estimate.main(args)


if __name__ == "__main__":
    sys.exit(main())
