import torch

from teddy import augment, cli, relabel
from teddy.pretrain_pool import load_pool

from .conftest import BASE, TINY


def test_replayed_soft_labels_equal_teacher_on_stored_crops(tmp_path):
    cfg = ["--config", str(BASE), "--config", str(TINY)]
    d, p, s, r = (tmp_path / n for n in ("data", "pool", "syn", "soft"))
    assert cli.main(["prepare-data", *cfg, "--out", str(d)]) == 0
    assert cli.main(["pretrain-pool", *cfg, "--data", str(d), "--out", str(p)]) == 0
    assert (
        cli.main(
            [
                "distill",
                *cfg,
                "--data",
                str(d),
                "--method",
                "random",
                "--ipc",
                "2",
                "--seed",
                "0",
                "--out",
                str(s),
            ]
        )
        == 0
    )
    assert (
        cli.main(["relabel", *cfg, "--synthetic", str(s), "--pool", str(p), "--seed", "0", "--out", str(r)])
        == 0
    )
    soft = relabel.load_soft_labels(r)
    images = torch.load(s / "synthetic.pt", weights_only=True)["images"]
    teacher = load_pool(p, "base", "cpu")[0][0]
    epochs = soft["crops"].shape[0]
    assert soft["logits"].shape == (epochs, len(images), 10) and soft["logits"].dtype == torch.float16
    for e in range(epochs):
        with torch.no_grad():
            expected = teacher(augment.apply_crops(images, soft["crops"][e]))
        assert torch.equal(soft["logits"][e], expected.half())
    # views differ between epochs: the soft labels are per crop, not per image
    assert not torch.equal(soft["crops"][0], soft["crops"][1])
