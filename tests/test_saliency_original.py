"""The original notebooks' two saliency methods (irkd.py section 2) and the token Grad-CAM fix.

"attn" replays P_4_ALL.ipynb's process_attention / multi_layer_attention_loss: the class
token's attention to the patches, mean over heads, min-max per image, MSE averaged over layers.
"probe" replays SaliencyDistiller of P_2_OUR_STUDENT_SAL_MAP.ipynb / P_2_SaliencyMap.ipynb:
per layer, the model's classifier on the mean patch feature; per class, the patch-averaged
gradient of that logit weights the channels, ReLU per channel, channel sum; joint min-max over
patches x classes per image; MSE summed over layers; second order through the student only.
Every oracle here is an explicit loop over layers / images / classes written from that
description (torch.autograd.grad per image and class), not a call to the batched code.
"grad" (token_gradcam) must take its channel weights from the patch tokens only.
"""
import pytest
import torch
import torch.nn.functional as F

import irkd
import saliency_variants
import train as train_lib
from conftest import tiny_vit


def attention(L, B, H, N, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(B, H, N, N, generator=g), -1) for _ in range(L)]


def minmax(m, eps):
    return (m - m.min()) / (m.max() - m.min() + eps)


def test_cls_attention_maps_match_loop_oracle():
    attns = attention(3, 2, 4, 2 + 9, seed=0)
    got = saliency_variants.cls_attention_maps(attns, num_prefix=2)
    assert got.shape == (3, 2, 3, 3)
    for l, a in enumerate(attns):
        for b in range(2):
            want = sum(a[b, h, 0, 2:] for h in range(4)) / 4
            torch.testing.assert_close(got[l, b], want.view(3, 3), atol=1e-7, rtol=0)


def test_attn_loss_matches_loop_oracle_and_pairs_layers_by_index():
    # student: 3 layers, teacher: 5 layers
    s = saliency_variants.cls_attention_maps(attention(3, 2, 2, 2 + 16, seed=1), num_prefix=2)
    t = saliency_variants.cls_attention_maps(attention(5, 2, 3, 1 + 16, seed=2), num_prefix=1)
    want = sum(sum(((minmax(s[l, b], 1e-8) - minmax(t[l, b], 1e-8)) ** 2).mean()
                   for b in range(2)) / 2
               for l in range(3)) / 3  # layers 0..2 of both, averaged
    torch.testing.assert_close(saliency_variants.attn_saliency_loss(s, t), want, atol=1e-7, rtol=0)
    fine = torch.rand(2, 2, 8, 8)  # a finer teacher grid: 2x2 area mean
    pooled = fine.view(2, 2, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(saliency_variants.attn_saliency_loss(s[:2], fine),
                               saliency_variants.attn_saliency_loss(s[:2], pooled))


def student_tokens(seed=0, layers=(0, 1)):
    torch.manual_seed(seed)
    model = tiny_vit(4, distill_token=True)
    with saliency_variants.capture_tokens(model, layers) as tokens:
        model(torch.randn(2, 3, 16, 16))
    return model, tokens


def test_probe_maps_match_per_image_per_class_autograd_oracle():
    model, tokens = student_tokens()
    got = saliency_variants.probe_gradient_maps(tokens, model.head, num_prefix=2, create_graph=False)
    assert got.shape == (2, 2, 4, 4, 10)                                # (L, B, gh, gw, C)
    for l, h in enumerate(tokens):
        for b in range(2):
            for c in range(10):
                P = h[b, 2:].detach().clone().requires_grad_(True)     # (16, D), no norm
                grad = torch.autograd.grad(model.head(P.mean(0))[c], P)[0]
                w = grad.mean(0)                                        # averaged over patches
                want = F.relu(w * P).sum(-1).view(4, 4)                 # ReLU per channel, then sum
                torch.testing.assert_close(got[l, b, :, :, c], want.detach(), atol=1e-6, rtol=1e-5)


def test_probe_loss_matches_loop_oracle():
    g = torch.Generator().manual_seed(3)
    s, t = torch.rand(3, 2, 4, 4, 10, generator=g), torch.rand(3, 2, 4, 4, 10, generator=g)
    want = sum(sum(((minmax(s[l, b], 1e-6) - minmax(t[l, b], 1e-6)) ** 2).sum() for b in range(2))
               / s[l].numel() for l in range(3))  # joint over patches x classes; sum over layers
    torch.testing.assert_close(saliency_variants.probe_saliency_loss(s, t), want, atol=1e-6, rtol=0)
    fine = torch.rand(3, 2, 8, 8, 10, generator=g)
    pooled = fine.view(3, 2, 4, 2, 4, 2, 10).mean(dim=(3, 5))
    torch.testing.assert_close(saliency_variants.probe_saliency_loss(s, fine),
                               saliency_variants.probe_saliency_loss(s, pooled))


def test_student_probe_map_is_second_order_teacher_map_has_no_graph():
    model, tokens = student_tokens()
    maps = saliency_variants.probe_gradient_maps(tokens, model.head, num_prefix=2, create_graph=True)
    # the patch features do not depend on the head: its gradient comes only through w
    # (second order)
    g_head, g_qkv = torch.autograd.grad((maps ** 2).sum(),
                                        [model.head.weight, model.blocks[0].attn.qkv.weight])
    assert g_head.abs().sum() > 0 and g_qkv.abs().sum() > 0
    torch.manual_seed(1)
    teacher, x = tiny_vit(4), torch.randn(2, 3, 16, 16)
    loss_fn = irkd.IRKDLoss(teacher, gamma=0.8, saliency=saliency_variants.ProbeSaliency(),
                            student_depth=2)        # the student's probe layers: [0, 1]
    _, t_maps = loss_fn.teacher_forward(x, torch.tensor([1, 2]))
    assert t_maps.shape == (2, 2, 4, 4, 10) and not t_maps.requires_grad and t_maps.grad_fn is None
    assert saliency_variants.probe_layers(4) == [0, 2, 3] and saliency_variants.probe_layers(12) == list(range(12))


def test_gradcam_weights_come_from_patch_tokens_only():
    torch.manual_seed(0)
    h = torch.randn(2, 2 + 4, 8, requires_grad=True)                   # [cls, dist, 4 patches]
    A, Bm, y = torch.randn(8, 5), torch.randn(8, 5), torch.tensor([1, 4])
    cams = [saliency_variants.token_gradcam(k * h[:, 0] @ A + h[:, 2:].mean(1) @ Bm, [h], y, 2,
                               create_graph=False)
            for k in (1.0, 1000.0)]                                     # a 1000x louder cls token
    torch.testing.assert_close(cams[0], cams[1], atol=0, rtol=0)        # changes nothing
    for b in range(2):
        w = Bm[:, y[b]] / 4  # patch-mean of d score / d patch
        want = torch.stack([F.relu((w * h[b, 2 + n]).sum()) for n in range(4)]).view(2, 2)
        torch.testing.assert_close(cams[0][b], want.detach(), atol=1e-5, rtol=1e-5)


def test_gradcam_last_block_patch_tokens_get_zero_gradient():
    torch.manual_seed(0)
    model, y = tiny_vit(4, distill_token=True), torch.tensor([3, 7])
    with saliency_variants.capture_tokens(model, [0, 1]) as tokens:                  # block 1 is the last of 2
        cls, _ = model(torch.randn(2, 3, 16, 16))
    grads = torch.autograd.grad(cls.gather(1, y[:, None]).sum(), tokens, retain_graph=True)
    assert grads[1][:, 2:].abs().max() == 0 and grads[1][:, :2].abs().max() > 0
    assert grads[0][:, 2:].abs().max() > 0
    last = saliency_variants.token_gradcam(cls, tokens[1:], y, num_prefix=2, create_graph=False)
    assert last.abs().max() == 0  # the last block's map is all zero


@pytest.mark.parametrize("saliency", tuple(saliency_variants.METHODS))
def test_irkd_loss_runs_for_each_saliency(saliency):
    torch.manual_seed(0)
    student, teacher = tiny_vit(4, distill_token=True), tiny_vit(4)
    loss_fn = irkd.IRKDLoss(teacher, gamma=0.8, saliency=saliency_variants.METHODS[saliency](),
                            student_depth=len(student.blocks))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    stats = irkd.train_step(student, loss_fn, opt, x, y, labels=y, teacher_input=x, lr=1e-3)
    assert torch.isfinite(stats).all() and stats[3] > 0                 # the saliency term is on
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_config_rejects_unknown_saliency_naming_the_choices():
    with pytest.raises(ValueError, match="rollout, grad, attn, probe"):
        train_lib.RunConfig(saliency="bogus").check()
