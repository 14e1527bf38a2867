"""irkd.py section 3, the losses: kd_loss and IRKDLoss.

Oracles: KD = T^2 * KL(p_t || p_s), batchmean, computed by hand in numpy from two fixed 2 x 3
logit tables (S, T_); its gradient T (p_s - p_t) / B; hard KD = cross-entropy against the
teacher's argmax, also by hand; IRKDLoss = (1 - alpha) CE + alpha KD + gamma saliency,
recomputed from the public parts (F.cross_entropy, kd_loss, attention_rollout, saliency_loss).
The saliency loss itself is documented in test_saliency.py.
"""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import irkd
import saliency_variants
from conftest import tiny_vit

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


# ----------------------------------------------------------------------------- IRKDLoss

def test_irkd_loss_without_teacher_is_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
    loss, parts = irkd.IRKDLoss(None)(logits, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    assert set(parts) == {"ce"}


def irkd_setup():
    """A tiny teacher, a tiny student with a dist token, an input batch, labels and the loss."""
    torch.manual_seed(0)
    teacher = tiny_vit(4)
    student = tiny_vit(4, distill_token=True)
    x = torch.randn(3, 3, 16, 16)
    y = torch.tensor([1, 2, 3])
    loss_fn = irkd.IRKDLoss(teacher, alpha=0.5, temperature=4.0, gamma=0.8)
    return teacher, student, x, y, loss_fn


def test_irkd_loss_freezes_the_teacher_in_eval_mode():
    teacher, _, _, _, loss_fn = irkd_setup()
    assert not any(p.requires_grad for p in teacher.parameters())
    loss_fn.train()
    assert not teacher.training                      # the teacher stays in eval mode


def test_irkd_loss_mixes_ce_kd_and_saliency():
    teacher, student, x, y, loss_fn = irkd_setup()
    loss_fn.train()
    (cls, dist), attns = student(x, return_attn=True)
    loss, parts = loss_fn((cls, dist), y, teacher_input=x, internals=attns, student=student)
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


# Oracle: attention_rollout of the teacher's stored attentions. The teacher's rollout is folded
# in as its forward goes (one layer's attention in memory at a time): the same map, exactly.
def test_teacher_rollout_folded_in_equals_the_stored_one():
    torch.manual_seed(0)
    teacher = tiny_vit(patch_size=4).eval()
    x = torch.randn(3, 3, 16, 16)
    logits, t_map = irkd.IRKDLoss(teacher, gamma=0.8).teacher_forward(x, torch.tensor([1, 2, 3]))
    with torch.no_grad():
        want_logits, attentions = teacher(x, return_attn=True)
    assert torch.equal(logits, want_logits)
    assert torch.equal(t_map, irkd.attention_rollout(attentions, num_prefix=1))


# Oracle: cls_attention_maps of the teacher's stored attentions ("attn", the P_4_ALL replay),
# which the teacher now takes layer by layer as its forward goes.
def test_teacher_attn_maps_taken_as_it_goes_equal_the_stored_ones():
    torch.manual_seed(0)
    teacher = tiny_vit(patch_size=4).eval()
    x = torch.randn(3, 3, 16, 16)
    loss_fn = irkd.IRKDLoss(teacher, gamma=0.8, saliency=saliency_variants.AttnSaliency())
    logits, t_maps = loss_fn.teacher_forward(x, torch.tensor([1, 2, 3]))
    with torch.no_grad():
        want_logits, attentions = teacher(x, return_attn=True)
    assert torch.equal(logits, want_logits)
    assert torch.equal(t_maps, saliency_variants.cls_attention_maps(attentions, num_prefix=1))


# ----------------------------------------------------------------------------- the contract

# Oracle: DeiT's DistillationLoss contract. A student without a distillation token gives one
# (B, C) tensor; reading outputs[1] would silently take the second image's logits.
def test_kd_with_a_one_head_student_raises():
    torch.manual_seed(0)
    teacher, student = tiny_vit(4), tiny_vit(4)                      # no distillation token
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    loss_fn = irkd.IRKDLoss(teacher)
    with pytest.raises(ValueError, match="distillation token"):
        loss_fn(student(x), y, teacher_input=x)


# Oracle: kd_loss against the teacher's own logits. KD alone reads only the teacher's logits,
# so any module that maps images to (B, C) logits serves (here a linear model, not a ViT).
def test_kd_alone_accepts_any_teacher_that_returns_logits():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    student = tiny_vit(4, distill_token=True)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    cls, dist = student(x)
    loss, parts = irkd.IRKDLoss(teacher, alpha=0.5)((cls, dist), y, teacher_input=x)
    with torch.no_grad():
        kd = irkd.kd_loss(dist, teacher(x))
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(cls, y) + 0.5 * kd, atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in teacher.parameters())   # frozen by the loss


# Oracle: the file system. irkd.py copied alone into an empty folder (no other file of this
# project beside it) imports, and the README's usage block runs there and prints its two lines.
def test_irkd_copied_alone_runs_the_readme_block(tmp_path):
    import re
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(os.path.join(root, "irkd.py"), tmp_path / "irkd.py")
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    code = re.search(r"^## Reading the code$.*?^```python\n(.*?)^```", readme, re.M | re.S)[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["12 px", "32 px"], done.stdout
    assert sorted(os.listdir(tmp_path)) == ["__pycache__", "irkd.py"] or \
        sorted(os.listdir(tmp_path)) == ["irkd.py"]
