"""Action heads and Perceiver resampler: shapes, ranges, (non-)mixing across time, trainability."""
import pytest
import torch
import torch.nn.functional as F

from robovlm_ros.model.heads import HEAD_KINDS, build_head
from robovlm_ros.model.resampler import PerceiverResampler

B, W, L, D, CHUNK, ARM = 2, 4, 3, 16, 3, 5


def make(kind, **kw):
    torch.manual_seed(0)
    args = dict(hidden_size=D, latent_num=L, window_size=W, chunk=CHUNK, arm_dim=ARM, head_hidden=32, head_layers=2)
    args.update(kw)
    return build_head(kind, **args).eval()


def feats(w=W, seed=1):
    return torch.randn(B, w, L, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_shapes_and_ranges(kind):
    arm, grip = make(kind)(feats())
    assert arm.shape == (B, W, CHUNK, ARM)
    assert grip.shape == (B, W, CHUNK)
    assert torch.isfinite(arm).all() and torch.isfinite(grip).all()
    assert (arm.abs() < 1).all()


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="mlp"):
        make("transformer")


def _perturb(x, j):
    y = x.clone()
    y[:, j] += torch.randn_like(y[:, j])
    return y


@torch.no_grad()
def test_mlp_does_not_mix_frames():
    head, x, j = make("mlp"), feats(), 1
    (a0, g0), (a1, g1) = head(x), head(_perturb(x, j))
    for i in range(W):
        same = torch.equal(a0[:, i], a1[:, i]) and torch.equal(g0[:, i], g1[:, i])
        assert same == (i != j), f"frame {i}"


@pytest.mark.parametrize("kind", ["lstm", "gpt"])
@pytest.mark.parametrize("j", [0, 2, W - 1])
@torch.no_grad()
def test_causal(kind, j):
    head, x = make(kind), feats()
    (a0, g0), (a1, g1) = head(x), head(_perturb(x, j))
    assert torch.equal(a0[:, :j], a1[:, :j]) and torch.equal(g0[:, :j], g1[:, :j])
    assert not torch.equal(a0[:, j], a1[:, j]) and not torch.equal(g0[:, j], g1[:, j])


@torch.no_grad()
def test_gpt_partial_window():
    head, x = make("gpt"), feats()
    arm, grip = head(x[:, :2])
    assert arm.shape == (B, 2, CHUNK, ARM) and grip.shape == (B, 2, CHUNK)
    full_arm, full_grip = head(x)  # causal + positions from 0: a prefix gives the prefix's outputs
    torch.testing.assert_close(arm, full_arm[:, :2])
    torch.testing.assert_close(grip, full_grip[:, :2])
    with pytest.raises(ValueError, match="window_size"):
        head(feats(W + 1))


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_head_overfits(kind):
    head = make(kind).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, W, L, D, generator=g)
    arm_t = torch.rand(B, W, CHUNK, ARM, generator=g) * 1.6 - 0.8
    grip_t = torch.randint(0, 2, (B, W, CHUNK), generator=g).float()
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def loss_fn():
        arm, grip = head(x)
        return F.mse_loss(arm, arm_t) + F.binary_cross_entropy_with_logits(grip, grip_t)

    first = loss_fn().item()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < first / 10


def test_resampler():
    torch.manual_seed(0)
    rs = PerceiverResampler(dim=D, num_latents=5, depth=2, heads=2, dim_head=8)
    x = torch.randn(3, 7, D, requires_grad=True)
    out = rs(x)
    assert out.shape == (3, 5, D) and torch.isfinite(out).all()
    assert not torch.allclose(out, rs(torch.randn(3, 7, D)))
    assert not torch.allclose(out[0], out[1])  # each sample reads its own image tokens
    out.square().sum().backward()
    assert rs.latents.grad is not None and rs.latents.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
