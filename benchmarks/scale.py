"""ImageNet-1K's shape on this machine → benchmarks/results/scale.json.

ImageNet-1K cannot be run on 2 CPU cores, but its shape can: a generated tree with ImageNet's layout
and counts (1,000 class folders × 1,281 tiny JPEGs of varying sizes, a flat val folder of 50,000
with the devkit's ground truth; ``teddy.data.miniature``), at ``--fraction`` of the counts. Through the
package's own CLI, each stage in a fresh process as a workflow job runs it:

1. ``prepare-data`` with ``storage: files`` (list, check, index: what a 1.28M-file dataset costs
   before any training);
2. opening the index as every later stage does (``teddy.data.source.open_source``) and counting;
3. ``pretrain-pool`` from a local torchvision-format checkpoint (an untrained ResNet-18 with the
   package's 32-px stem, saved here: the figures are about data, not accuracy), no prior or post
   members;
4. one ``distill`` shard (``sre2l``: the package's synthesis step at the base model; IPC 1, 100
   classes per batch, 2 iterations), merged;
5. ``relabel`` with top-k (10) soft labels, one epoch of views;
6. a short ``evaluate`` (ResNet-18, one epoch) reading the index: the final val pass decodes every
   val file.

Per stage: wall seconds and peak RSS of its whole process tree (loader workers included, sampled
every 0.1 s), and the index's size on disk. Run at two fractions to see what grows with the number
of files: ``python benchmarks/scale.py --fraction 0.25`` then ``--fraction 1`` (each adds its entry to
the JSON). Images are 8–40 px at 32 px training size: the costs measured are per file, not per pixel.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
TRAIN, VAL, CLASSES = 1281, 50, 1000  # ImageNet-1K per class


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def measured(cmd: list[str], log_file: Path) -> dict:
    """Run ``cmd``; wall seconds and the peaks of its process tree's summed RSS and summed PSS.

    RSS counts every page a process maps, so forked loader workers count the parent's shared pages
    (torch's libraries, the listing) once more each; PSS splits each shared page among the processes
    that share it, so the summed PSS is the memory the tree really takes."""
    import psutil

    with open(log_file, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        peak, done = [0, 0], threading.Event()

        def sample():
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [p for p in (parent, *parent.children(recursive=True)) if p.is_running()]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
                    peak[1] = max(peak[1], sum(p.memory_full_info().pss for p in tree))
                except psutil.Error:
                    pass
                time.sleep(0.1)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        done.set()
        thread.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed ({code}); its log: {log_file}")
    rss, pss = (round(p / 2**20, 1) for p in peak)
    return {"wall_s": round(wall, 2), "peak_rss_mb": rss, "peak_pss_mb": pss}


def folder_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.25, help="of ImageNet-1K's per-class counts")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "scale")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the generated tree and outputs")
    args = parser.parse_args()
    train, val = max(2, round(TRAIN * args.fraction)), max(1, round(VAL * args.fraction))
    work = args.work / f"f{args.fraction:g}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    entry: dict = {"fraction": args.fraction, "classes": CLASSES, "train_files": CLASSES * train}
    entry["val_files"] = CLASSES * val

    import torch

    from teddy import models
    from teddy.data import miniature

    log(f"generating {CLASSES} × {train} train + {CLASSES * val} flat val JPEGs under {work}")
    t = time.perf_counter()
    root = miniature.make(
        "imagenet", work / "imagenet", classes=CLASSES, train=train, val=val, size=8, val_style="devkit"
    )
    entry["generate_s"] = round(time.perf_counter() - t, 1)
    entry["tree_mb"] = folder_mb(root)
    weights = work / "resnet18-local.pth"
    # torchvision's format (what a user points to), for the package's ResNet-18 at 32 px (3×3 stem)
    spec = models.InputSpec(CLASSES, 3, 32, (0.5,) * 3, (0.25,) * 3)
    torch.save(models.create_model("resnet18", spec)[1].state_dict(), weights)

    teddy = [sys.executable, "-m", "teddy"]
    cfg = ["--config", "config/config.yaml", "--config", "config/experiments/imagenet1k.yaml"]
    for key, value in {
        "run.seeds": "[0]",
        "run.device": "cpu",
        "run.progress_seconds": "60",
        "tracking.enabled": "false",
        "prepare_data.root": str(root),
        "prepare_data.image_size": "32",
        "prepare_data.storage": "files",
        "prepare_data.workers": "2",
        "pretrain_pool.checkpoint": str(weights),
        "pretrain_pool.prior_epochs": "[]",
        "pretrain_pool.post_members": "0",
        "distill.methods": "[sre2l, random]",
        "distill.ipcs": "[1]",
        "distill.iterations": "2",
        "distill.shards": "10",
        "relabel.shard_epochs": "1",
        "evaluate.archs": "[resnet18]",
        "evaluate.epochs": "1",
        "evaluate.batch_size": "100",
        "evaluate.eval_batch_size": "500",
        "evaluate.curve_val_images": "100",
    }.items():
        cfg += ["--set", f"{key}={value}"]
    data, pool, syn, soft = work / "data", work / "pool", work / "syn", work / "soft"
    stages = {}

    log("prepare-data (list, check, index)")
    stages["prepare_data"] = measured([*teddy, "prepare-data", *cfg, "--out", str(data)], work / "prepare.log")
    manifest = json.loads((data / "manifest.json").read_text())
    entry["index_mb"] = folder_mb(data)
    entry["indexed"] = {"train": manifest["train_count"], "val": manifest["val_count"]}

    probe = (
        "import sys, time; t = time.perf_counter(); from teddy.data.source import open_source; "
        f"s = open_source({str(data)!r}); n = s.count('train') + s.count('val'); "
        "print(time.perf_counter() - t, n)"
    )
    log("opening the index")
    opened = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    seconds, count = opened.stdout.split()
    stages["open_index"] = {"wall_s": round(float(seconds), 2), "images": int(count)}

    log("pretrain-pool (from the local checkpoint)")
    stages["pretrain_pool"] = measured(
        [*teddy, "pretrain-pool", *cfg, "--data", str(data), "--out", str(pool)], work / "pool.log"
    )
    log("distill: shard 0 of 10 (100 classes), then the rest and the merge")
    shard0 = syn / "shards" / "0-of-10"
    common = [*cfg, "--data", str(data), "--pool", str(pool), "--method", "sre2l", "--ipc", "1", "--seed", "0"]
    stages["distill_shard"] = measured(
        [*teddy, "distill", *common, "--shard", "0/10", "--out", str(shard0)], work / "shard0.log"
    )
    for i in range(1, 10):
        subprocess.run(
            [*teddy, "distill", *common, "--shard", f"{i}/10", "--out", str(syn / "shards" / f"{i}-of-10")],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    merge = [*teddy, "distill", *common, "--merge", *[str(p) for p in sorted((syn / "shards").iterdir())]]
    stages["distill_merge"] = measured([*merge, "--out", str(syn)], work / "merge.log")
    log("relabel (top-10)")
    relabel = [*teddy, "relabel", *cfg, "--synthetic", str(syn), "--pool", str(pool)]
    stages["relabel"] = measured([*relabel, "--seed", "0", "--out", str(soft)], work / "relabel.log")
    log("evaluate (ResNet-18, one epoch, every val file at the end)")
    evaluate = [
        *teddy,
        "evaluate",
        *cfg,
        "--data",
        str(data),
        "--synthetic",
        str(syn),
        "--soft-labels",
        str(soft),
    ]
    evaluate += ["--pool", str(pool), "--arch", "resnet18", "--seed", "0", "--out", str(work / "eval")]
    stages["evaluate"] = measured(evaluate, work / "evaluate.log")
    entry["stages"] = stages
    entry["host"] = {"cpus": __import__("os").cpu_count(), "torch": torch.__version__}

    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    results["runs"][f"{args.fraction:g}"] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(json.dumps(entry, indent=1))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
