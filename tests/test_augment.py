import math

import pytest
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


def test_crop_offsets_move_the_image_along_their_own_axis():
    """tx = 0.25 on an 8-pixel-wide image samples one pixel to the right, ty one pixel down; each
    offset moves only its own axis (bilinear at exact pixel centres is exact)."""
    x = torch.rand(2, 1, 8, 8)
    right = augment.apply_crops(x, torch.tensor([[1.0, 1.0, 0.25, 0.0]]).repeat(2, 1))
    down = augment.apply_crops(x, torch.tensor([[1.0, 1.0, 0.0, 0.25]]).repeat(2, 1))
    assert torch.allclose(right[..., :-1], x[..., 1:], atol=1e-6)
    assert torch.allclose(down[..., :-1, :], x[..., 1:, :], atol=1e-6)
    # past the border the image is reflected (not zero-padded): half a pixel out mirrors the edge
    assert torch.allclose(right[..., -1], x[..., -1], atol=1e-6)


def test_crops_keep_double_precision():
    """Images in float64 (gradient checks, CPU reference runs) are cropped in float64."""
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    crops = augment.sample_crops(3, 0.3, True, torch.Generator().manual_seed(0))
    out = augment.apply_crops(x, crops)
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), augment.apply_crops(x.float(), crops), atol=1e-6)


def test_sampled_crops_follow_the_random_resized_crop_distribution():
    """Area uniform on [scale_min, 1], log aspect ratio uniform on [log r0, log r1] (width/height),
    centres spread over the whole room the crop leaves on both sides."""
    n, scale_min = 20000, 0.3
    c = augment.sample_crops(n, scale_min, False, torch.Generator().manual_seed(0), ratio=(1.0, 2.0))
    w, h, tx, ty = c.T
    # an area below 0.5 is never clamped with ratios ≤ 2 (and a clamped crop keeps w·h > 0.5)
    small = w * h < 0.5
    assert abs(small.float().mean().item() - (0.5 - scale_min) / (1 - scale_min)) < 0.02
    assert abs((w * h).min().item() - scale_min) < 0.01
    ratio = (w / h)[small]
    assert ratio.min() >= 1 - 1e-5 and ratio.max() <= 2 + 1e-5
    assert abs(ratio.log().median().item() - math.log(2) / 2) < 0.03
    for offset, side in ((tx, w), (ty, h)):
        room = offset[side < 0.9] / (1 - side[side < 0.9])  # uniform on [-1, 1]
        assert room.min() < -0.95 and room.max() > 0.95 and abs(room.mean().item()) < 0.03


@pytest.mark.parametrize("mode", ["cutmix", "mixup"])
def test_render_mixes_each_view_with_its_partners_view(mode):
    """render = crop the images, crop their partners with the partners' own crops, mix per mode."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 8, 8)
    crops = augment.sample_crops(4, 0.3, True, g)[None]
    mix = torch.tensor(
        [[[2.0, 0.5, 0.3, 0.6], [3.0, 0.7, 0.5, 0.5], [0.0, 0.2, 0.8, 0.1], [1.0, 0.9, 0.4, 0.4]]]
    )
    views = {"crops": crops, "mix": mix, "mix_mode": mode}
    idx = torch.tensor([1, 3])
    own = augment.apply_crops(images[idx], crops[0, idx])
    partner = augment.apply_crops(images[[3, 1]], crops[0, [3, 1]])
    expected = augment.apply_mix(own, partner, mix[0, idx], mode)
    got = augment.render(images, views, 0, idx)
    assert torch.allclose(got, expected) and not torch.allclose(got, own)
    plain = augment.render(images, {**views, "mix_mode": "none"}, 0, idx)
    assert torch.allclose(plain, own)


def test_cutmix_box_is_the_pixels_whose_centres_lie_strictly_inside():
    """λ = 0.75: a box of side √0.25 = 0.5 centred at (cx, cy) = (9/16, 7/16) on an 8 × 8 image. Pixel
    centres (j + 0.5)/8 strictly within 0.25 of the centre: columns 3–5, rows 2–4 (columns 2 and 6,
    rows 1 and 5 lie exactly on the edge and stay the image's own)."""
    x, partner = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    mix = torch.tensor([[0.0, 0.75, 9 / 16, 7 / 16]])
    expected = torch.zeros(8, 8)
    expected[2:5, 3:6] = 1
    assert torch.equal(augment.apply_mix(x, partner, mix, "cutmix")[0, 0], expected)


def test_mixup_blends_by_lambda():
    x, partner = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), 4.0)
    mix = torch.tensor([[1.0, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    out = augment.apply_mix(x, partner, mix, "mixup")
    assert torch.allclose(out[0], torch.full((1, 2, 2), 0.3 * 2 + 0.7 * 4))
    assert torch.equal(out[1], x[1])


def test_sample_mix_rows():
    """Mode none: every image its own partner with λ = 1. CutMix/mixup: partners a permutation,
    λ ~ Beta(α, α) (mean ½, variance 1/12 at α = 1), box centres two independent uniforms."""
    none = augment.sample_mix(5, "none", 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(none, torch.tensor([[float(i), 1.0, 0.0, 0.0] for i in range(5)]))
    n = 4000
    rows = augment.sample_mix(n, "cutmix", 1.0, torch.Generator().manual_seed(0))
    assert rows.shape == (n, 4)
    assert torch.equal(rows[:, 0].sort().values, torch.arange(n).float())
    lam, cx, cy = rows[:, 1], rows[:, 2], rows[:, 3]
    assert abs(lam.mean().item() - 0.5) < 0.02 and abs(lam.var().item() - 1 / 12) < 0.01
    for c in (cx, cy):
        assert c.min() >= 0 and c.max() <= 1 and abs(c.mean().item() - 0.5) < 0.02
    assert abs(torch.corrcoef(torch.stack([cx, cy]))[0, 1].item()) < 0.05
    peaked = augment.sample_mix(n, "mixup", 8.0, torch.Generator().manual_seed(0))[:, 1]
    assert abs(peaked.var().item() - 1 / (4 * 17)) < 0.003  # Beta(8, 8): variance 1/(4(2α+1))


def test_jitter_shift_and_roll():
    """sample_shift draws (dy, dx) in [−m, m], every value reachable, (0, 0) when m = 0; roll moves
    the batch by it with wrap-around (SRe2L's jitter)."""
    assert augment.sample_shift(0, torch.Generator()) == (0, 0)
    g = torch.Generator().manual_seed(0)
    draws = [augment.sample_shift(2, g) for _ in range(400)]
    assert {d for d, _ in draws} == {-2, -1, 0, 1, 2} == {d for _, d in draws}
    assert {augment.sample_shift(1, g) for _ in range(100)} == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}

    def seeded(seed):  # the draws follow the generator alone, whatever the global RNG does
        g = torch.Generator().manual_seed(seed)
        return [(torch.manual_seed(i), augment.sample_shift(3, g))[1] for i in range(20)]

    assert seeded(5) == seeded(5) != seeded(6)
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    assert torch.equal(augment.roll(x, (1, -2)), torch.roll(x, shifts=(1, -2), dims=(2, 3)))
    assert torch.equal(augment.roll(x, (1, 0))[:, :, 1:], x[:, :, :-1])
    assert augment.roll(x, (0, 0)) is x
