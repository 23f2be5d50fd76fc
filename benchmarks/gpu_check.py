"""One prepared GPU check → gpu_check.json + gpu_check.md (in benchmarks/results by default).

    make gpu-check                       # on a GPU node, e.g. srun --gpus=1 make gpu-check
    python benchmarks/gpu_check.py --device cpu --quick --out DIR    # CPU smoke run (make test)

Six parts, each in its own process group with its own time budget, inside --budget seconds in all
(default 525: a lent GPU session has 15 minutes of device time, start-up included):

1. ``gpu_tests``: ``pytest -m gpu`` (bf16 vs fp32 synthesis, DDP with NCCL at world size 1);
2. ``bench_distill``: benchmarks/distill.py on the device (Teddy step vs bare forward+backward,
   unrolled K ratios; the objectives' fidelity is device-independent: benchmarks/fidelity.py);
3. ``bench_evaluate``: benchmarks/evaluate.py on the device (evaluation loop vs a DataLoader
   pipeline; goal on GPU ≥ 3× its images/s);
4. ``bench_peers``: benchmarks/peers.py on the device (the package's synthesis step vs SRe2L's
   recover loop, interleaved; goal on CUDA ≥ 1.5× at 224 px, batch 100);
5. ``synthesis``: ResNet-18 BN-matching throughput at 32, 64 and 224 px, batch 100 (images/s,
   iteration time, peak CUDA memory) and from it the GPU-hours to distil ImageNet-1K at IPC 10/50;
6. ``pipeline``: a short Fashion-MNIST pipeline through Snakemake on the device (one IPC, one seed,
   two students; digits when the Debian Fashion-MNIST files are absent), each stage's wall time.

A part that does not fit in the time left is skipped and says so; a part that overruns its budget
is killed with its whole process group and marked ``timed_out``; nothing waits without a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
# seconds per part on a GPU, and in the CPU smoke run (--quick on cpu)
BUDGETS = {
    "gpu_tests": (60, 60),
    "bench_distill": (90, 120),
    "bench_evaluate": (90, 90),
    "bench_peers": (75, 120),
    "synthesis": (60, 60),
    "pipeline": (150, 240),
}
# ImageNet-1K synthesis recipe (SRe2L/Teddy, ../DESIGN.md §2): 100 images per batch, 1k-4k iterations
IMAGENET_CLASSES, SYNTH_BATCH, RECIPE_ITERATIONS = 1000, 100, (1000, 4000)
PAPER_NOTE = "Teddy (ECCV 2024) reports a 46.6 % runtime reduction vs prior methods, no absolute GPU-hours"


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_part(cmd: list[str], budget: float, logfile: Path, cwd: Path = ROOT) -> dict:
    """Run ``cmd`` in a new process group; kill the whole group past ``budget`` seconds."""
    t0 = time.monotonic()
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return {
                "status": "timed_out",
                "wall_s": time.monotonic() - t0,
                "budget_s": budget,
                "log": str(logfile),
            }
    status = "ok" if code == 0 else "failed"
    record = {"status": status, "wall_s": time.monotonic() - t0, "budget_s": budget, "log": str(logfile)}
    if code:
        record["returncode"] = code
        record["log_tail"] = logfile.read_text()[-2000:]
    return record


# -- parts ------------------------------------------------------------------------------------


def gpu_tests(args, work: Path, budget: float) -> dict:
    xml = work / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    record = run_part([*cmd, "tests/test_gpu.py"], budget, work / "gpu_tests.log")
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        record["tests"] = counts
        record["cases"] = {
            case.get("name"): next((child.tag for child in case), "passed") for case in suite.iter("testcase")
        }
    return record


def benchmark(name: str, keys: tuple[str, ...]):
    def part(args, work: Path, budget: float) -> dict:
        cmd = [sys.executable, f"benchmarks/{name}.py", "--device", args.device, "--out", str(work)]
        record = run_part([*cmd, *(["--quick"] if args.quick else [])], budget, work / f"{name}.log")
        result = work / f"{name}.json"
        if record["status"] == "ok" and result.is_file():
            full = json.loads(result.read_text())
            record["figures"] = {k: full[k] for k in keys if k in full}
        return record

    return part


def synthesis(args, work: Path, budget: float) -> dict:
    cmd = [sys.executable, __file__, "--part", "synthesis", "--device", args.device, "--out", str(work)]
    record = run_part([*cmd, *(["--quick"] if args.quick else [])], budget, work / "synthesis.log")
    result = work / "synthesis.json"
    if record["status"] == "ok" and result.is_file():
        record["figures"] = json.loads(result.read_text())
    return record


def pipeline(args, work: Path, budget: float) -> dict:
    project = work / "pipeline"
    project.mkdir()
    for item in ("Snakefile", "workflow", "config"):
        (project / item).symlink_to(ROOT / item)
    smoke = args.quick and args.device == "cpu"  # the CPU smoke: digits, the code path in seconds
    dataset = "fashion_mnist" if FMNIST.is_dir() and not smoke else "digits"
    overlay = project / "gpu_check.yaml"
    overlay.write_text(json.dumps(pipeline_overlay(dataset, args.device, args.quick), indent=1))
    configs = (
        [str(ROOT / "config" / "experiments" / "fashion_mnist.yaml")] if dataset == "fashion_mnist" else []
    )
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(os.cpu_count() or 1)]
    cmd += ["--configfile", *configs, str(overlay)]
    record = run_part(cmd, budget, work / "pipeline.log", cwd=project)
    record["dataset"] = dataset
    if dataset != "fashion_mnist" and not smoke:
        record["note"] = f"{FMNIST} absent (apt-get install dataset-fashion-mnist): ran digits instead"
    record["stage_wall_s"] = stage_walls(project / "results" / dataset)
    return record


def pipeline_overlay(dataset: str, device: str, quick: bool) -> dict:
    """One IPC, one seed, teddy + random, two students on ``device``; CPU smoke sizes with quick (random
    only, one student: the smoke checks the script's path, the e2e tests teddy through the pipeline)."""
    small = quick and device == "cpu"
    return {
        "run": {"dataset": dataset, "device": device, "seeds": [0], "threads": 1 if small else 4},
        "tracking": {"enabled": False},
        "prepare_data": {"image_size": 8} if small else {},
        "pretrain_pool": {
            "width": 8 if small else 64,
            "epochs": 2 if small else 5,
            "prior_epochs": [] if small else [1, 2],  # the smoke's random draws no member: none trained
            "post_members": 0 if small else 2,
        },
        "distill": {
            "methods": ["random"] if small else ["teddy", "random"],
            "ipcs": [1 if small else 10],
            "iterations": 4 if small else 300,
        },
        "evaluate": {
            "archs": ["convnet"] if small else ["convnet", "resnet18"],
            "width": 8 if small else 64,
            "epochs": 2 if small else 50,
            "full_data": False,
        },
    }


def stage_walls(results: Path) -> dict:
    """Sum of ``wall_s`` per stage over every metrics.json the pipeline wrote (shards included)."""
    folders = {"data": "prepare_data", "pool": "pretrain_pool", "distill": "distill"}
    folders |= {"relabel": "relabel", "evaluate": "evaluate", "report": "report"}
    walls: dict[str, float] = {}
    for path in sorted(results.glob("*/**/metrics.json")):  # ** matches no folder too: every depth ≥ 2
        parts = path.relative_to(results).parts  # data/<key>/…, pool/<key>/…, <study>/<stage>/…
        stage = folders.get(parts[0]) or folders.get(parts[1] if len(parts) > 2 else "")
        wall = json.loads(path.read_text()).get("wall_s")
        if stage and isinstance(wall, int | float):
            walls[stage] = walls.get(stage, 0.0) + wall
    return walls


PARTS = {
    "gpu_tests": gpu_tests,
    "bench_distill": benchmark(
        "distill",
        ("dtype", "overhead_vs_fwd_bwd", "unrolled_time_ratio", "unrolled_memory_ratio"),
    ),
    "bench_evaluate": benchmark(
        "evaluate",
        ("throughput_images_per_s", "throughput_ratio_vs_dataloader", "max_possible_ratio_vs_dataloader"),
    ),
    "bench_peers": benchmark(
        "peers", ("speedup_median", "teddy_overhead_vs_bare", "peak_memory_ratio", "agreement_max_rel")
    ),
    "synthesis": synthesis,
    "pipeline": pipeline,
}


# -- synthesis throughput (run in its own process by the synthesis part) -----------------------


def synthesis_throughput(device: str, quick: bool) -> dict:
    """ResNet-18 BN matching through distill.synthesize_batch: seconds per iteration at each size."""
    import torch

    from teddy import models
    from teddy.method.objectives import BNMatching
    from teddy.stages import distill

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import config, sync

    dev = torch.device(device)
    small = quick and dev.type == "cpu"
    sizes, batch, iterations = ((32,), 4, 2) if small else ((32, 64, 224), SYNTH_BATCH, 10)
    cfg = config(f"distill.iterations={iterations}")
    out = {
        "batch": batch,
        "iterations_timed": iterations,
        "dtype": cfg.run.dtype if dev.type == "cuda" else "float32",
    }
    for size in sizes:
        classes = {32: 100, 64: 200}.get(size, IMAGENET_CLASSES)
        spec = models.InputSpec(classes, 3, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        torch.manual_seed(0)
        member = models.create_model("resnet18", spec).to(dev)
        with torch.no_grad():  # BN running statistics of some data, as a trained member has
            member.train()(torch.rand(min(batch, 32), 3, size, size, device=dev))
        member = member.eval().requires_grad_(False)
        if dev.type == "cuda":
            member = member.to(memory_format=torch.channels_last)
        labels = torch.arange(batch) % classes
        objective = BNMatching(cfg)

        def steps(member=member, labels=labels, objective=objective, size=size):
            gen = torch.Generator().manual_seed(0)
            st = distill.new_state(torch.rand(batch, 3, size, size, generator=gen), cfg, dev)
            schedule = distill.draw_schedule(cfg, batch, lambda it, g: 0, gen, dev)
            distill.synthesize_batch(st, labels, [member], objective, schedule, cfg, gen, dev)

        steps()  # warm-up: cuDNN autotuning, allocator
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        t0 = time.perf_counter()
        steps()
        sync(dev)
        per_it = (time.perf_counter() - t0) / iterations
        row = {"classes": classes, "iteration_s": per_it, "images_per_s": batch / per_it}
        if dev.type == "cuda":
            row["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out[f"{size}px"] = row
    if "224px" in out:
        out["imagenet1k_gpu_hours"] = imagenet_hours(out["224px"]["iteration_s"], batch)
        out["imagenet1k_paper"] = PAPER_NOTE
    return out


def imagenet_hours(iteration_s: float, batch: int) -> dict:
    """GPU-hours to synthesise ImageNet-1K at IPC 10/50: (1000 × IPC / batch) batches × iterations."""
    return {
        f"ipc{ipc}_{its}it": IMAGENET_CLASSES * ipc / batch * its * iteration_s / 3600
        for ipc in (10, 50)
        for its in RECIPE_ITERATIONS
    }


# -- driver -------------------------------------------------------------------------------------


def rounded(value, digits: int = 3):
    """Floats to ``digits`` significant digits, recursively (for the Markdown summary)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def summary_markdown(result: dict) -> str:
    lines = [
        f"# GPU check ({result['device_name']})",
        "",
        f"`{result['command']}` — {result['wall_s']:.0f} s of a {result['budget_s']:.0f} s budget, "
        f"torch {result['torch']}, {time.strftime('%Y-%m-%d', time.gmtime(result['started']))}.",
        "",
        "| part | status | wall s | key figures |",
        "|---|---|---|---|",
    ]
    for name, part in result["parts"].items():
        figures = part.get("figures") or part.get("tests") or part.get("stage_wall_s") or part.get("reason", "")
        text = json.dumps(rounded(figures), default=str)
        lines.append(f"| {name} | {part['status']} | {part.get('wall_s', 0):.1f} | {text[:400]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu, or auto")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (the CPU test in make test)")
    parser.add_argument("--budget", type=float, default=525.0, help="seconds for all parts together")
    parser.add_argument(
        "--out", type=Path, help="results folder (default: benchmarks/results on CUDA, benchmarks/out on CPU)"
    )
    parser.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    parser.add_argument("--part", choices=["synthesis"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: no CUDA device is visible (use --device cpu --quick for a smoke run)"
        )
    if args.out is None:  # a CPU smoke run never overwrites the committed GPU figures
        args.out = ROOT / "benchmarks" / ("out" if torch.device(args.device).type == "cpu" else "results")
    if args.part == "synthesis":
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "synthesis.json").write_text(
            json.dumps(synthesis_throughput(args.device, args.quick), indent=1)
        )
        return 0
    return check(args, torch)


def check(args, torch) -> int:
    started, t0 = time.time(), time.monotonic()
    cpu_smoke = torch.device(args.device).type == "cpu"
    result = {
        "command": " ".join(["python benchmarks/gpu_check.py", *sys.argv[1:]]),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if not cpu_smoke else "cpu",
        "quick": args.quick,
        "torch": torch.__version__,
        "budget_s": args.budget,
        "started": started,
        "parts": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for name, part in PARTS.items():
            if args.only and name not in args.only:
                continue
            budget = BUDGETS[name][1 if cpu_smoke else 0]
            left = args.budget - (time.monotonic() - t0)
            if left < budget:
                reason = f"needs {budget} s, {max(left, 0):.0f} s of the budget left"
                result["parts"][name] = {"status": "skipped", "reason": reason}
                log(f"{name}: skipped ({reason})")
                continue
            log(f"{name} (budget {budget} s)")
            record = part(args, work, budget)
            record.pop("log", None)
            result["parts"][name] = record
            log(f"{name}: {record['status']} in {record['wall_s']:.1f} s")
        for name in (
            "distill.json",
            "evaluate.json",
            "peers.json",
        ):  # full benchmark outputs beside the summary
            if (work / name).is_file():
                shutil.copy(work / name, args.out / f"gpu_check_{name}")
    result["wall_s"] = time.monotonic() - t0
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(summary_markdown(result))
    log(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md")
    return 0 if all(p["status"] in ("ok", "skipped") for p in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
