"""kd_loss, saliency_loss and IRKDLoss against hand-computed values."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import irkd
from test_model import tiny_vit

S = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]       # student logits, 2 x 3
T_ = [[0.5, 2.5, -1.0], [2.0, 1.0, 0.0]]      # teacher logits


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kd_by_hand(s, t, T):
    """T^2 * sum_c p_t (log p_t - log p_s), averaged over the rows (batchmean)."""
    p_s, p_t = softmax(np.asarray(s) / T), softmax(np.asarray(t) / T)
    per_row = [sum(p_t[b, c] * (math.log(p_t[b, c]) - math.log(p_s[b, c])) for c in range(3))
               for b in range(len(s))]
    return T * T * sum(per_row) / len(s)


def test_kd_zero_for_equal_logits():
    torch.manual_seed(0)
    z = torch.randn(8, 10) * 5
    for T in (1.0, 4.0):
        assert abs(irkd.kd_loss(z, z.clone(), T).item()) < 1e-6


@pytest.mark.parametrize("T", [4.0, 1.0])
def test_kd_matches_hand_computation(T):
    got = irkd.kd_loss(torch.tensor(S), torch.tensor(T_), temperature=T).item()
    want = kd_by_hand(S, T_, T)
    assert want > 0.01
    assert abs(got - want) < 1e-5 * max(1.0, want), (got, want)


def test_kd_default_temperature_is_4():
    got = irkd.kd_loss(torch.tensor(S), torch.tensor(T_)).item()
    assert abs(got - kd_by_hand(S, T_, 4.0)) < 1e-5


def test_kd_batchmean_scale():
    s, t = torch.tensor(S), torch.tensor(T_)
    one = irkd.kd_loss(s, t)
    doubled = irkd.kd_loss(torch.cat([s, s]), torch.cat([t, t]))
    torch.testing.assert_close(one, doubled, atol=1e-6, rtol=0)
    # batchmean, not mean over B*C: 10 classes do not shrink the value tenfold
    torch.manual_seed(0)
    s10, t10 = torch.randn(4, 10), torch.randn(4, 10)
    per_row = [irkd.kd_loss(s10[i:i + 1], t10[i:i + 1]).item() for i in range(4)]
    assert abs(irkd.kd_loss(s10, t10).item() - sum(per_row) / 4) < 1e-5


def test_kd_hard_is_ce_against_teacher_argmax():
    s, t = torch.tensor(S), torch.tensor(T_)
    got = irkd.kd_loss(s, t, hard=True)
    want = F.cross_entropy(s, torch.tensor([1, 0]))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    by_hand = -(math.log(softmax(S)[0, 1]) + math.log(softmax(S)[1, 0])) / 2
    assert abs(got.item() - by_hand) < 1e-5


def test_kd_gradient_goes_to_student_only():
    s = torch.tensor(S, requires_grad=True)
    t = torch.tensor(T_, requires_grad=True)
    irkd.kd_loss(s, t).backward()
    # d/ds of T^2 KL / B = T (p_s - p_t) / B
    want = 4.0 * (softmax(np.array(S) / 4) - softmax(np.array(T_) / 4)) / 2
    torch.testing.assert_close(s.grad, torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- saliency

def test_saliency_zero_for_identical_maps():
    torch.manual_seed(0)
    m = torch.rand(3, 4, 4)
    assert irkd.saliency_loss(m, m.clone()).item() < 1e-12


def test_saliency_invariant_to_affine_scaling():
    torch.manual_seed(0)
    s, t = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    base = irkd.saliency_loss(s, t)
    assert base.item() > 1e-3
    torch.testing.assert_close(irkd.saliency_loss(7.5 * s + 2.0, t), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(irkd.saliency_loss(s, 0.05 * t - 3.0), base, atol=1e-5, rtol=0)
    # per image: scaling one image differently from the other does not matter either
    scale = torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
    torch.testing.assert_close(irkd.saliency_loss(s * scale, t), base, atol=1e-6, rtol=0)


def test_saliency_matches_manual_minmax_mse():
    torch.manual_seed(0)
    s, t = torch.rand(2, 3, 3), torch.rand(2, 3, 3)

    def norm(m):
        lo = m.amin(dim=(1, 2), keepdim=True)
        hi = m.amax(dim=(1, 2), keepdim=True)
        return (m - lo) / (hi - lo)

    want = ((norm(s) - norm(t)) ** 2).mean()
    torch.testing.assert_close(irkd.saliency_loss(s, t), want, atol=1e-6, rtol=0)


def test_saliency_flat_map_is_finite():
    flat = torch.full((2, 4, 4), 0.25, requires_grad=True)
    t = torch.rand(2, 4, 4)
    loss = irkd.saliency_loss(flat, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(flat.grad).all()
    # a flat map normalises to zeros
    torch.testing.assert_close(irkd.minmax_normalize(flat.detach()), torch.zeros(2, 4, 4), atol=0, rtol=0)
    both_flat = irkd.saliency_loss(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))
    assert both_flat.item() == 0.0


def test_saliency_pools_finer_teacher_map():
    torch.manual_seed(0)
    s, t = torch.rand(2, 4, 4), torch.rand(2, 8, 8)
    pooled = t.view(2, 4, 2, 4, 2).mean(dim=(2, 4))          # manual 2x2 area average
    torch.testing.assert_close(irkd.saliency_loss(s, t), irkd.saliency_loss(s, pooled), atol=1e-6, rtol=0)
    # and it is not just comparing to a nearest/strided subsample
    strided = t[:, ::2, ::2]
    assert abs(irkd.saliency_loss(s, t).item() - irkd.saliency_loss(s, strided).item()) > 1e-4


# ----------------------------------------------------------------------------- IRKDLoss

def test_irkd_loss_without_teacher_is_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
    loss, parts = irkd.IRKDLoss(None)(logits, None, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    assert set(parts) == {"ce"}


def test_irkd_loss_mixes_ce_kd_and_saliency():
    torch.manual_seed(0)
    teacher = tiny_vit(4)
    student = tiny_vit(4, distill_token=True)
    x = torch.randn(3, 3, 16, 16)
    y = torch.tensor([1, 2, 3])
    loss_fn = irkd.IRKDLoss(teacher, alpha=0.5, temperature=4.0, gamma=0.8)
    assert not any(p.requires_grad for p in teacher.parameters())
    loss_fn.train()
    assert not teacher.training                      # the teacher stays in eval mode
    (cls, dist), attns = student(x, return_attn=True)
    loss, parts = loss_fn((cls, dist), attns, y, teacher_input=x)
    with torch.no_grad():
        t_logits, t_attns = teacher(x, return_attn=True)
    ce = F.cross_entropy(cls, y)
    kd = irkd.kd_loss(dist, t_logits, 4.0)
    sal = irkd.saliency_loss(irkd.attention_rollout(attns, num_prefix=2),
                             irkd.attention_rollout(t_attns, num_prefix=1))
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * kd + 0.8 * sal, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts["kd"], kd.detach())
    torch.testing.assert_close(parts["sal"], sal.detach())
    loss.backward()
    assert student.head_dist.weight.grad.abs().sum() > 0   # the dist head is trained by KD
    assert student.head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Grad-CAM saliency

def test_token_gradcam_matches_manual_formula():
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token=True)
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([3, 7])
    with irkd.capture_tokens(model, [0, 1]) as tokens:
        (cls, _), _ = model(x, return_attn=True)
    assert len(tokens) == 2 and tokens[0].shape == (2, 2 + 16, 32)
    cam = irkd.token_gradcam(cls, tokens, y, num_prefix=2, create_graph=True)
    assert cam.shape == (2, 4, 4)
    grads = torch.autograd.grad(cls[0, 3] + cls[1, 7], tokens, retain_graph=True)
    want = torch.stack([F.relu((g.mean(1, keepdim=True) * h).sum(-1))[:, 2:] for h, g in zip(tokens, grads)])
    torch.testing.assert_close(cam, want.mean(0).view(2, 4, 4), atol=1e-6, rtol=1e-5)
    # second order: a loss on the map reaches the student's weights
    irkd.saliency_loss(cam, torch.rand(2, 4, 4)).backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
