"""Mutation testing of the core modules with mutmut → benchmarks/results/mutation.json.

mutmut changes one thing at a time in the code (an operator, a constant, a condition, a returned
value) and runs the tests that reach the changed function; a mutant the tests do not catch
("survived") marks behaviour no test pins down. This runs mutmut in a scratch copy of the project
(benchmarks/out/mutation/: the repository never holds mutants), on the modules given, with the test
files given, and writes per module: killed, survived, timed out, not reached by any selected test,
the kill rate over the mutants the tests reach, and every survivor (function, mutant
number and diff). Each module's entry says which run produced it (tests,
command, wall time); a run over other modules keeps the entries already in the file.

Run on demand, not in CI (tens of minutes on 2 cores per module group):
    make mutation                                            (the default groups below)
    python benchmarks/mutation.py --modules method/losses augment --tests test_losses test_augment
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# survivors judged equivalent (no behaviour changes), each with its diff and the reason
EQUIVALENT = Path(__file__).resolve().parent / "mutation_equivalent.json"
# core modules and the test files that pin them down (fast, in-process); distill and relabel are
# reached mostly through CLI runs of whole stages, minutes per mutant on CPU: left to a GPU box
DEFAULT_MODULES = ["method/losses", "augment", "method/meta"]
DEFAULT_TESTS = ["test_losses", "test_augment", "test_meta", "test_relabel"]


def mutmut_config(modules: list[str], tests: list[str]) -> str:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return "\n".join(
        [
            "[tool.mutmut]",
            'source_paths = ["teddy"]',
            f"only_mutate = {toml_list(f'teddy/{m}.py' for m in modules)}",
            f"pytest_add_cli_args_test_selection = {toml_list(f'tests/{t}.py' for t in tests)}",
            'pytest_add_cli_args = ["-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-x"]',
            'also_copy = ["workflow", "config", "tests", "benchmarks"]',
            "",
        ]
    )


def scratch_project(work: Path, modules: list[str], tests: list[str]) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for item in ("teddy", "tests", "workflow", "config", "benchmarks"):
        shutil.copytree(
            ROOT / item, work / item, ignore=shutil.ignore_patterns("__pycache__", "out", "results")
        )
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + "\n" + mutmut_config(modules, tests))
    return work


def require_same_source(work: Path, modules: list[str], root: Path = ROOT) -> None:
    """--rerun-survivors reruns an earlier run's mutants, which are of the code as it was then: if a
    module changed since, tests written for the new code would fail on the code, not on the mutant,
    and count as kills. Refuse, naming the module."""
    for module in modules:
        then, now = work / "teddy" / f"{module}.py", root / "teddy" / f"{module}.py"
        if not then.is_file() or then.read_bytes() != now.read_bytes():
            raise SystemExit(
                f"--rerun-survivors: teddy/{module}.py changed since the run in {work} (or that run never "
                f"copied it): its mutants are of other code; run {module} again without --rerun-survivors"
            )


def survivors_of(work: Path, modules: list[str]) -> list[str]:
    """The mutants an earlier run in ``work`` left alive or timed out, for --rerun-survivors."""
    require_same_source(work, modules)
    from mutmut.stats import status_by_exit_code

    names = []
    for module in modules:
        meta = work / "mutants" / "teddy" / f"{module}.py.meta"
        if not meta.is_file():
            raise SystemExit(f"--rerun-survivors: {meta} is missing: run {module} in --work {work} first")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if any(c is None for c in codes.values()):
            raise SystemExit(f"--rerun-survivors: the run in {work} did not finish {module}: run it to the end")
        # timeouts too: a mutant whose tests were slowed (a loaded or paused machine) gets a fair rerun
        names += sorted(n for n, c in codes.items() if status_by_exit_code[c] in ("survived", "timeout"))
    return names


def summarise(work: Path, modules: list[str], only: list[str] | None = None) -> dict:
    from mutmut.stats import status_by_exit_code

    out = {}
    for module in modules:
        meta = work / "mutants" / "teddy" / f"{module}.py.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}
        if only:  # the functions selected: other functions' mutants were never meant to run
            codes = {n: c for n, c in codes.items() if any(fnmatch.fnmatch(n, p) for p in only)}
        status = {n: status_by_exit_code[c] if c is not None else "not run" for n, c in codes.items()}
        counts = Counter(status.values())
        reached = counts["killed"] + counts["survived"] + counts["timeout"]
        survivors = sorted(n for n, s in status.items() if s == "survived")
        entry = {
            "mutants": len(codes),
            "killed": counts["killed"],
            "survived": counts["survived"],
            "timeout": counts["timeout"],
            "no_tests": counts["no tests"],
            "not_run": counts["not run"],
            "kill_rate_reached": round(counts["killed"] / reached, 3) if reached else None,
            "survivors": {},
        }
        for name in survivors:
            function = re.sub(r"__mutmut_\d+$", "", name.split(".")[-1]).removeprefix("x")
            location = {"function": function.replace("ǁ", ".").strip("_."), "mutant": name}
            shown = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True
            )
            changed = [line for line in shown.stdout.splitlines() if line.startswith(("+", "-"))]
            location["diff"] = changed[2:]  # without the ---/+++ file header
            entry["survivors"][name] = location
        out[module] = entry
    return out


def report(modules: dict, out: Path) -> None:
    for module, entry in modules.items():
        print(
            f"{module}: {entry['killed']} killed, {entry['survived']} survived "
            f"({entry.get('equivalent', 0)} equivalent), {entry['timeout']} timeout, "
            f"{entry['no_tests']} no tests, {entry['not_run']} not run; "
            f"kill rate {entry['kill_rate_reached']}, "
            f"without equivalents {entry.get('kill_rate_non_equivalent')}"
        )
    print(f"wrote {out}")


def classify(modules: dict, equivalent_file: Path = EQUIVALENT) -> dict:
    """Mark each survivor listed in ``equivalent_file`` (same mutant, same diff) as equivalent, with
    the reason; the kill rate then counts killed over reached mutants that are not equivalent."""
    listed = json.loads(equivalent_file.read_text()) if equivalent_file.is_file() else {}
    for entry in modules.values():
        survivors = entry["survivors"]
        for name, location in survivors.items():
            known = listed.get(name)
            if known and known["diff"] == location.get("diff"):
                location["equivalent"] = known["reason"]
            else:
                location.pop("equivalent", None)
        equivalent = sum("equivalent" in loc for loc in survivors.values())
        reached = entry["killed"] + entry["survived"] + entry["timeout"] - equivalent
        entry["equivalent"] = equivalent
        entry["kill_rate_non_equivalent"] = round(entry["killed"] / reached, 3) if reached else None
    return modules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--modules",
        nargs="+",
        default=DEFAULT_MODULES,
        help="teddy/<module>.py to mutate (e.g. method/losses, stages/distill)",
    )
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="tests/<file>.py mutmut may run")
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        help="mutant-name patterns (fnmatch), e.g. 'teddy.stages.report.x_add_ior__mutmut_*': only those",
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--minutes", type=float, default=0, help="stop mutmut after this long (0 = no limit)")
    parser.add_argument(
        "--reclassify", action="store_true", help="only re-apply mutation_equivalent.json to --out (no run)"
    )
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="after tests were added: in the --work folder of a finished run of the same modules, take the "
        "repository's tests again and rerun only that run's survivors and timeouts (every other mutant keeps "
        "its result)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "mutation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.json")
    args = parser.parse_args()
    if args.reclassify:
        result = json.loads(args.out.read_text())
        classify(result["modules"])
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        report(result["modules"], args.out)
        return 0

    if args.rerun_survivors:
        work, names = args.work, survivors_of(args.work, args.modules)
        shutil.copytree(ROOT / "tests", work / "tests", dirs_exist_ok=True)  # the tests added since
    else:
        work, names = scratch_project(args.work, args.modules, args.tests), args.only
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    log = (work / "mutmut.log").open("a" if args.rerun_survivors else "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *names],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        proc.wait(timeout=args.minutes * 60 or None)
        finished = proc.returncode == 0
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()
        finished = False
    run = {
        "tests": [f"tests/{t}.py" for t in args.tests],
        "only": args.only,
        "finished": finished,
        "wall_s": round(time.time() - t0, 1),
        "cpus": os.cpu_count(),
        "max_children": args.max_children,
        "command": " ".join(["python benchmarks/mutation.py", *sys.argv[1:]]),
        **({"survivors_rerun": len(names)} if args.rerun_survivors else {}),
        "date": time.strftime("%Y-%m-%d"),
    }
    modules = classify(summarise(work, args.modules, args.only))
    for entry in modules.values():
        entry["run"] = run
    # modules mutated by earlier runs keep their entries: one file covers every group run so far
    earlier = json.loads(args.out.read_text()).get("modules", {}) if args.out.is_file() else {}
    kept = {m: e for m, e in earlier.items() if m not in modules and "run" in e}
    result = {
        "tool": "mutmut 3.8.1",
        "modules": {**kept, **modules},
        "status_meaning": {
            "killed": "a selected test failed on the mutant",
            "survived": "every selected test passed on the mutant: behaviour no test pins down",
            "timeout": "the tests ran past mutmut's limit on the mutant (counted as caught by mutmut)",
            "no_tests": "no selected test reaches the mutated function",
            "not_run": "the run stopped (--minutes) before this mutant",
            "equivalent": "a survivor listed in benchmarks/mutation_equivalent.json: changes no behaviour",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(modules, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
