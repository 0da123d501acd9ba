import torch

from regionedit.lomoe.losses import background_loss, cross_attention_loss, fuse


def test_fuse_weighted_average_and_uncovered_cells():
    z = torch.stack([torch.full((2, 2, 2), v) for v in (1.0, 3.0, 5.0)])
    w = torch.zeros(3, 1, 2, 2)
    w[0, 0, 0, 0] = 1  # background only
    w[1, 0, 0, 1] = 1  # region 1 only
    w[1, 0, 1, 0] = w[2, 0, 1, 0] = 1  # overlap: average of 3 and 5
    out = fuse(z, w)
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0, 0, 0] == 1 and out[0, 0, 0, 1] == 3 and out[0, 0, 1, 0] == 4
    assert out[0, 0, 1, 1] == 1  # no weight: keep the background branch


def test_fuse_soft_weights():
    z = torch.stack([torch.zeros(1, 1, 1), torch.ones(1, 1, 1)])
    w = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    assert torch.allclose(fuse(z, w), torch.tensor(0.75))


def test_background_loss_counts_background_pixels_only():
    fused = torch.zeros(1, 4, 2, 2)
    ref = torch.zeros(1, 4, 2, 2)
    ref[..., 0, 0] = 2.0  # differs under the background
    ref[..., 1, 1] = 7.0  # differs under a region: ignored
    m0 = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    # per channel: sum over pixels of (1 * (0 - 2))^2 = 4; mean over channels = 4
    assert background_loss(fused, ref, m0).item() == 4.0


def test_cross_attention_loss_broadcasts_reference_over_branches():
    heads, px, tok = 2, 3, 4
    ref = torch.rand(2, heads, px, tok)
    same = ref[:, None].expand(2, 3, heads, px, tok).reshape(2 * 3 * heads, px, tok)
    assert cross_attention_loss({"l": same}, {"l": ref}).item() < 1e-12
    moved = same.clone()
    moved[0] += 1.0  # one (uncond, branch 0, head 0) map off by 1 everywhere: px*tok squared error
    expected = px * tok / (2 * 3 * heads)
    assert abs(cross_attention_loss({"l": moved}, {"l": ref}).item() - expected) < 1e-5
    # the same chunk counted against 6 branches in total contributes half as much
    assert abs(cross_attention_loss({"l": moved}, {"l": ref}, num_total=6).item() - expected / 2) < 1e-5
    # layers add up
    assert (
        abs(cross_attention_loss({"a": moved, "b": moved}, {"a": ref, "b": ref}).item() - 2 * expected) < 1e-5
    )
