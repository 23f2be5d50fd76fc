"""Stage evaluate: train a student from scratch on (synthetic images, replayed soft labels) with
KL divergence at temperature T; report top-1/top-5 on the real val split.

For the students in ``evaluate.hard_label_archs`` the job also trains a second student, same
initialisation and the very same views, with cross-entropy on the images' own labels (mixed by the
view's CutMix/Mixup λ): DD-Ranking's hard-label accuracy, from which report computes HLR.

Under ``evaluate.labels: hard`` (the published hard-label protocol of DC/DSA/DM) there are no soft
labels and no views: the one student learns each image's own label with cross-entropy on the
images as they are; its accuracy is both the set's top-1 and its hard-label top-1."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from teddy import health, models
from teddy.augment import render
from teddy.data.source import open_source
from teddy.io import artifacts
from teddy.io.files import ArtifactError, atomic_path, read_json
from teddy.method.losses import mixed_cross_entropy, soft_kl
from teddy.pool.members import Teacher, check_stored_logits, check_teacher_accuracy
from teddy.protocol import hard_labels, student_epochs
from teddy.runtime.distributed import data_parallel, local_part, share_weight
from teddy.runtime.progress import Progress
from teddy.train import TrainState, accuracy_of, make_optimizer, student_schedule

log = logging.getLogger(__name__)
STATE = "train_state.pt"  # resumable student state; removed when training completes
STATE_HARD = "train_state_hard.pt"  # the hard-label student's


def train_student(
    cfg,
    model,
    images,
    soft: dict | None,
    seed: int,
    device,
    on_epoch,
    teacher=None,
    state_path: Path | None = None,
    hard_labels: torch.Tensor | None = None,
    epochs: int | None = None,
    progress: Progress | None = None,
) -> int:
    """KL to the soft labels of the stored views: replayed logits, or ``teacher`` run online; with
    ``hard_labels``, cross-entropy to the images' labels on the same views instead, or on the images
    as they are when ``soft`` is None (evaluate.labels: hard). ``epochs``:
    evaluate.epochs unless given (the full-data row's, teddy.protocol.student_epochs).

    ``on_epoch(epoch, loss, extra) -> extra`` after every epoch (``extra``: e.g. the accuracy curve,
    None at first); ``progress`` (its loop's :class:`Progress`) learns the epoch a rerun resumes at.
    With ``state_path`` the loop state is saved every ``run.checkpoint_minutes``
    and when preemption is requested (then :class:`Preempted` is raised); a rerun resumes exactly.
    Returns the epoch it resumed from (0: a fresh start).
    """
    e = cfg.evaluate
    epochs = e.epochs if epochs is None else epochs
    n = len(images)
    if soft is None and hard_labels is None:
        raise ValueError("without soft labels the student needs the images' hard labels")
    if soft is not None and (soft["crops"].shape[0] < epochs or soft["crops"].shape[1] != n):
        raise ArtifactError(
            f"soft-label file holds {soft['crops'].shape[0]} epochs × {soft['crops'].shape[1]} images but "
            f"evaluate needs {epochs} × {n}: rerun relabel with the same evaluate.epochs "
            "(evaluate.full_data_epochs for the full-data row)"
        )
    replay = None if soft is None else soft.get("replay")
    if soft is not None and replay is None and teacher is None and hard_labels is None:
        raise ArtifactError(
            "the soft-label file was made with relabel.mode=online: pass --pool for the teacher"
        )
    batch = min(e.batch_size, n)
    net = data_parallel(model)
    opt = make_optimizer(model, e.optimizer, e.lr, e.weight_decay)
    sched = student_schedule(opt, e.schedule, epochs, -(-n // batch))
    gen = torch.Generator().manual_seed(seed)
    images = images.to(device)
    hard = None if hard_labels is None else hard_labels.to(device)
    views = None if soft is None else {**soft, "crops": soft["crops"].to(device), "mix": soft["mix"].to(device)}
    st = {"epoch": 0, "start": 0, "perm": None, "total": torch.zeros((), device=device), "extra": None}
    state = TrainState(state_path, model, opt, sched, gen)
    st = state.load(device) or st
    resumed_from = st["epoch"]
    if st["epoch"] or st["start"]:
        log.info("resuming student training from %s at epoch %d", state_path, st["epoch"] + 1)
        if progress is not None:
            progress.resume(st["epoch"])
    last_save = time.monotonic()

    while st["epoch"] < epochs:
        model.train()
        epoch = st["epoch"]
        if st["perm"] is None:
            st["perm"] = torch.randperm(n, generator=gen).to(device)
        while st["start"] < n:
            state.preempt(st, f"in epoch {epoch + 1}")
            whole = st["perm"][st["start"] : st["start"] + batch]
            idx = local_part(whole)  # this rank's share (DDP)
            if views is None:  # hard-label protocol: the images as they are
                loss = F.cross_entropy(net(images[idx]), hard[idx])
            elif hard is not None:
                view = render(images, views, epoch, idx)
                loss = mixed_cross_entropy(net(view), hard, idx, views["mix"][epoch, idx], views["mix_mode"])
            else:
                view = render(images, views, epoch, idx)
                target = replay(epoch, idx, device) if replay is not None else teacher(view)
                loss = soft_kl(net(view), target, e.temperature)
            opt.zero_grad(set_to_none=True)
            (loss * share_weight(len(idx), len(whole))).backward()  # ranks' unequal shares average right
            opt.step()
            sched.step()
            st["total"] += loss.detach() * len(idx)
            st["start"] += batch
        st["extra"] = on_epoch(epoch + 1, st["total"].item() / n, st["extra"])
        st |= {"epoch": epoch + 1, "start": 0, "perm": None, "total": torch.zeros((), device=device)}
        if state_path is not None and time.monotonic() - last_save > 60 * cfg.run.checkpoint_minutes:
            state.save(st)
            last_save = time.monotonic()
    state.done()
    return resumed_from


def student_model(arch: str, spec, width: int, device) -> torch.nn.Module:
    """A fresh student; a size that cannot be allocated is a config error naming evaluate.width (a
    ConvNet's weights grow with its square), not an allocator traceback."""
    try:
        return models.create_model(arch, spec, width=width).to(device)
    except (RuntimeError, MemoryError) as err:
        if not isinstance(err, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(err).lower():
            raise
        raise ArtifactError(
            f"evaluate.width={width}: the {arch} student does not fit in memory on {device} "
            f"({str(err).splitlines()[0][:160]}); lower evaluate.width (the ConvNet students' channels)"
        ) from None


def curve_subset(n_val: int, n: int) -> torch.Tensor | None:
    """Indices of the val images scored at intermediate curve points: a fixed random subset of
    ``n`` (the same for every student and seed), or None for the whole split."""
    if n <= 0 or n >= n_val:
        return None
    return torch.randperm(n_val, generator=torch.Generator().manual_seed(0))[:n].sort().values


def run(cfg, inputs: dict, outputs: dict, *, arch: str, seed: int, device, tracker) -> dict:
    """inputs: ``data``, ``synthetic``, ``soft_labels`` (+ ``pool``: the teacher, for online relabel and
    to check stored logits against) dirs, no ``soft_labels`` or ``pool`` under evaluate.labels: hard;
    outputs: ``out``."""
    data_dir = Path(inputs["data"])
    manifest = read_json(data_dir / artifacts.DATA_MANIFEST)
    source = open_source(data_dir, cfg.prepare_data.workers)
    syn = artifacts.load_synthetic(inputs["synthetic"], manifest)
    hard = hard_labels(cfg)
    soft = None if hard else artifacts.load_soft_labels(inputs["soft_labels"], syn)
    probe = curve_subset(source.count("val"), cfg.evaluate.curve_val_images)
    spec = models.InputSpec.from_manifest(manifest)
    name = f"{syn['method']} ipc{syn['ipc']} {arch} seed{seed}"
    epochs = student_epochs(cfg, syn["method"], syn["ipc"])
    stored = epochs if hard else soft["crops"].shape[0]
    if stored < epochs:  # before anything is trained or written
        raise ArtifactError(
            f"{Path(inputs['soft_labels']) / artifacts.SOFT_LABELS}: holds views for {stored} student epochs, "
            f"evaluate.epochs asks for {epochs}: set evaluate.epochs to at most {stored}, or rerun relabel "
            f"with evaluate.epochs={epochs} (evaluate.full_data_epochs for the full-data row)"
        )
    teacher = None
    if "pool" in inputs and not hard:
        teacher = Teacher(inputs["pool"], soft["teacher"], device, cfg, data_dir)
    if teacher is not None:  # the teacher still scores what it did when it was built
        check_teacher_accuracy(teacher, source, Path(inputs["pool"]) / artifacts.POOL_MANIFEST, device)
    if teacher is not None and "replay" in soft:  # stored logits: are they this teacher's?
        path = Path(inputs["soft_labels"]) / artifacts.SOFT_LABELS
        check_stored_logits(teacher, syn["images"], soft, path, device)
        teacher = None  # the stored logits serve the student
    out = Path(outputs["out"])
    out.mkdir(parents=True, exist_ok=True)

    def student(kind: str, state: Path, labels=None) -> tuple[dict, list, int]:
        """Train one student (same init for both kinds) → (final accuracy with its ``health``, curve,
        resumed epoch)."""
        torch.manual_seed(seed)
        model = student_model(arch, spec, cfg.evaluate.width, device)
        every = max(1, epochs // 10)
        curve: list = []
        prefix = "" if kind == "soft" else "hard_"
        progress = Progress(f"evaluate {name} {kind}-label epochs", epochs)

        losses: list[float] = []

        def on_epoch(epoch: int, loss: float, extra) -> list:
            progress.update(epoch)
            losses.append(float(loss))
            curve[:] = extra or []
            tracker.log_metrics({"hard_train_loss" if prefix else "train_kl": loss}, step=epoch)
            final = epoch == epochs
            if epoch % every == 0 or final:
                idx = None if final or probe is None else probe
                acc = accuracy_of(model, source.batches("val", idx, cfg.evaluate.eval_batch_size), device)
                tracker.log_metrics({f"{prefix}val_top1": acc["top1"]}, step=epoch)
                seen = source.count("val") if idx is None else len(idx)
                key = "train_loss" if prefix else "train_kl"
                curve.append({"epoch": epoch, key: loss, **acc, "val_images": seen})
            return list(curve)

        resumed = train_student(
            cfg,
            model,
            syn["images"],
            soft,
            seed,
            device,
            on_epoch,
            teacher,
            out / state,
            labels,
            epochs,
            progress=progress,
        )
        last = curve[-1]
        problems = health.loss_problems(losses)
        problems += health.accuracy_problems(last["top1"], manifest["num_classes"], last["val_images"])
        problems = [f"{kind}-label student {p}" for p in problems]
        for problem in problems:
            log.warning("evaluate %s: %s", name, problem)
        final = {
            **last,
            "params": models.count_params(model),
            "health": problems,
        }
        return final, curve, resumed

    if hard:  # the one student is the hard-label one: its accuracy is the set's top-1 and hard top-1
        final, curve, resumed = student("hard", STATE, labels=syn["labels"])
    else:
        final, curve, resumed = student("soft", STATE)
    metrics = {
        "labels": "hard" if hard else "soft",
        "arch": arch,
        "seed": seed,
        "method": syn["method"],
        "ipc": syn["ipc"],
        "top1": final["top1"],
        "top5": final["top5"],
        "params": final["params"],
        "epochs": epochs,
        "curve": curve,
        "resumed_from_epoch": resumed,
        "health": final["health"],  # why this number is not a result (diverged, at chance); empty: none
    }
    if hard:
        metrics |= {"hard_top1": final["top1"], "hard_top5": final["top5"]}
    elif arch in cfg.evaluate.hard_label_archs:
        second, hard_curve, _ = student("hard", STATE_HARD, labels=syn["labels"])
        metrics |= {"hard_top1": second["top1"], "hard_top5": second["top5"], "hard_curve": hard_curve}
        metrics["health"] += second["health"]
    plot_curve(metrics, name, out / artifacts.CURVE_PNG)
    tracker.log_artifact(out / artifacts.CURVE_PNG)  # the learning curve, in the run that made it
    return metrics


def plot_curve(metrics: dict, title: str, path: Path) -> None:
    """Val top-1 against epoch (soft-label student, and the hard-label one when trained); the
    intermediate points score curve_val_images, the last the whole split (marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    first = "hard labels (CE, no views)" if metrics.get("labels") == "hard" else "soft labels (KL)"
    for key, label in (("curve", first), ("hard_curve", "hard labels (CE)")):
        points = metrics.get(key)
        if points:
            line = ax.plot(
                [p["epoch"] for p in points], [p["top1"] for p in points], marker="o", ms=3, label=label
            )
            ax.plot(points[-1]["epoch"], points[-1]["top1"], "*", ms=10, color=line[0].get_color())
    ax.set(xlabel="student epoch", ylabel="val top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
