"""Data-loading benchmark → benchmarks/results/data.json.

Run: make bench-data   (or python benchmarks/data.py [--quick] [--out DIR]). On the same generated
Tiny-ImageNet-layout JPEG files (teddy.data.miniature, 64 px), with the same workers, batch size and
augmentation (random-resized-crop 0.08–1 + flip, to float tensors), side by side in one run:

- baseline: torchvision ``ImageFolder`` (PIL decode) + transforms + ``DataLoader``;
- teddy, ``storage: cache``: prepare_data decodes every file once (torchvision.io, loader workers)
  into a uint8 .npy; epochs read it (positioned reads in the workers) and augment whole batches;
- teddy, ``storage: files``: every epoch decodes the files (torchvision.io) in the workers.

Images/s of a first epoch (teddy cache: prepare_data's pass plus the epoch) and of a later epoch;
peak RSS of the whole process tree (main process + loader workers) for one epoch at N and at 4N
images, each in a fresh process.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import host, parse_args, write  # noqa: E402

BATCH, WORKERS, SIZE, CLASSES = 256, 1, 64, 10


def log(msg: str) -> None:
    print(f"[data] {msg}", flush=True)


def generate(root: Path, n: int) -> Path:
    from teddy.data import miniature

    return miniature.make("tiny_imagenet", root, classes=CLASSES, train=n // CLASSES, val=2, size=SIZE)


def baseline_loader(root: Path, seed: int):
    import torchvision
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE, scale=(0.08, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )
    data = torchvision.datasets.ImageFolder(root / "train", transform=tf)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, BATCH, shuffle=True, num_workers=WORKERS, generator=gen)


def teddy_prepare(root: Path, out: Path, storage: str) -> None:
    from teddy import config
    from teddy.stages import prepare_data
    from teddy.tracking import NullTracker

    cfg = config.load(
        [Path(__file__).resolve().parent.parent / "config" / "config.yaml"],
        [
            "tracking.enabled=false",
            "run.dataset=tiny_imagenet",
            f"prepare_data.root={root}",
            f"prepare_data.storage={storage}",
            f"prepare_data.workers={WORKERS}",
            "distill.ipcs=[1]",
        ],
    )
    prepare_data.run(cfg, {}, {"out": out}, device="cpu", tracker=NullTracker())


def teddy_epoch(data_dir: Path, seed: int) -> int:
    """One training epoch as pretrain_pool reads it: shuffled batches, crops + flips on the batch."""
    from teddy import augment
    from teddy.data.source import open_source
    from teddy.train import to_unit

    source = open_source(data_dir, WORKERS)
    gen = torch.Generator().manual_seed(seed)
    seen = 0
    for x, y in source.batches("train", torch.randperm(source.count("train"), generator=gen), BATCH):
        crops = augment.sample_crops(len(y), 0.08, True, gen)
        batch = augment.apply_crops(to_unit(x), crops)
        seen += len(batch)
    return seen


def baseline_epoch(root: Path, seed: int) -> int:
    return sum(len(y) for _, y in baseline_loader(root, seed))


def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def _tree_rss_child(fn_name: str, args: tuple, queue) -> None:
    import psutil

    torch.set_num_threads(1)
    proc = psutil.Process()
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            try:
                total = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                continue
            peak[0] = max(peak[0], total)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    globals()[fn_name](*args)
    done.set()
    sampler.join()
    queue.put(peak[0] / 2**20)


def tree_rss_mb(fn_name: str, *args) -> float:
    """Peak RSS (MiB) of a fresh process and its loader workers while ``fn_name(*args)`` runs."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_tree_rss_child, args=(fn_name, args, queue))
    proc.start()
    value = queue.get(timeout=1800)
    proc.join()
    return value


def measure(tmp: Path, n: int) -> dict:
    root = generate(tmp / f"tiny_{n}", n)
    cache, files = tmp / f"cache_{n}", tmp / f"files_{n}"
    row: dict = {"images": n}
    log(f"{n} images: teddy prepare_data (storage cache)")
    row["teddy_prepare_s"], _ = timed(teddy_prepare, root, cache, "cache")
    teddy_prepare(root, files, "files")
    for name, fn, arg in [
        ("baseline", baseline_epoch, root),
        ("teddy_cache", teddy_epoch, cache),
        ("teddy_files", teddy_epoch, files),
    ]:
        log(f"{n} images: {name} epochs 1 and 2")
        first, seen = timed(fn, arg, 0)
        later, _ = timed(fn, arg, 1)
        assert seen == n, (name, seen, n)
        row[name] = {"epoch1_s": first, "epoch2_s": later, "epoch1_img_s": n / first, "epoch2_img_s": n / later}
    # teddy's first epoch with the cache pays prepare_data's decoding pass too
    row["teddy_cache"]["epoch1_with_prepare_img_s"] = n / (
        row["teddy_prepare_s"] + row["teddy_cache"]["epoch1_s"]
    )
    return row


def warm_up(tmp: Path) -> None:
    """Every path once on 100 images: imports and first-use costs stay out of the timings."""
    root = generate(tmp / "warm", 100)
    teddy_prepare(root, tmp / "warm_data", "cache")
    baseline_epoch(root, 0)
    teddy_epoch(tmp / "warm_data", 0)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    n = 300 if args.quick else 2500
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm_up(tmp)
        small, large = measure(tmp, n), measure(tmp, 4 * n)
        rss = {}
        for key, size in (("N", n), ("4N", 4 * n)):
            log(f"peak RSS at {key} = {size} images")
            rss[key] = {
                "baseline": tree_rss_mb("baseline_epoch", tmp / f"tiny_{size}", 0),
                "teddy_cache": tree_rss_mb("teddy_epoch", tmp / f"cache_{size}", 0),
                "teddy_files": tree_rss_mb("teddy_epoch", tmp / f"files_{size}", 0),
            }

    def ratios_of(ref: dict) -> dict:
        return {
            "later_epoch_vs_baseline": ref["teddy_cache"]["epoch2_img_s"] / ref["baseline"]["epoch2_img_s"],
            "first_epoch_incl_prepare_vs_baseline": ref["teddy_cache"]["epoch1_with_prepare_img_s"]
            / ref["baseline"]["epoch1_img_s"],
            "files_epoch_vs_baseline": ref["teddy_files"]["epoch2_img_s"] / ref["baseline"]["epoch2_img_s"],
        }

    ref = large
    ratios = {
        "later_epoch_vs_baseline": ref["teddy_cache"]["epoch2_img_s"] / ref["baseline"]["epoch2_img_s"],
        "first_epoch_incl_prepare_vs_baseline": ref["teddy_cache"]["epoch1_with_prepare_img_s"]
        / ref["baseline"]["epoch1_img_s"],
        "files_epoch_vs_baseline": ref["teddy_files"]["epoch2_img_s"] / ref["baseline"]["epoch2_img_s"],
        "rss_4N_over_N": {k: rss["4N"][k] / rss["N"][k] for k in rss["N"]},
    }
    goals = {
        "later_epoch_at_least_3x": ratios["later_epoch_vs_baseline"] >= 3,
        "first_epoch_not_slower": ratios["first_epoch_incl_prepare_vs_baseline"] >= 1,
        "rss_4N_within_10pct": ratios["rss_4N_over_N"]["teddy_cache"] <= 1.10,
    }
    result = {
        "host": host(),
        "quick": args.quick,
        "setup": {"batch": BATCH, "workers": WORKERS, "size": SIZE, "format": "JPEG q90, Tiny-ImageNet layout"},
        "runs": {"N": small, "4N": large},
        "peak_rss_mb": rss,
        "ratios_at_4N": ratios,
        "ratios_at_N": ratios_of(small),
        "goals": goals,
    }
    path = write("data.json", result, args.out)
    print(f"wrote {path}")
    for key, value in ratios.items():
        print(f"{key}: {value}")
    print(f"goals: {goals}")


if __name__ == "__main__":
    main()
