import torch

from teddy import augment


def test_identity_crop_is_exact():
    x = torch.rand(3, 2, 8, 8)
    crops = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
    assert torch.allclose(augment.apply_crops(x, crops), x, atol=1e-6)


def test_negative_width_flips():
    x = torch.rand(1, 1, 8, 8)
    flipped = augment.apply_crops(x, torch.tensor([[-1.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-6)


def test_sampled_crops_stay_inside_and_are_seeded():
    a = augment.sample_crops(500, 0.3, True, torch.Generator().manual_seed(1))
    b = augment.sample_crops(500, 0.3, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    w, h, tx, ty = a.abs().T
    assert (w <= 1).all() and (h <= 1).all()
    assert (tx + w <= 1 + 1e-6).all() and (ty + h <= 1 + 1e-6).all()
    assert (a[:, 0] < 0).any() and (a[:, 0] > 0).any()
    assert not (augment.sample_crops(50, 0.3, False, torch.Generator()).T[0] < 0).any()
