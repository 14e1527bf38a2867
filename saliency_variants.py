"""The saliency maps beside the paper's attention rollout (irkd.RolloutSaliency).

    grad    token Grad-CAM through the rest of the network (this project's variant)
    attn    the raw class-token attention of every layer (the original's ViT-Tiny p4 cell)
    probe   per-class gradients of a linear probe on each layer (the original's custom and
            ViT-Tiny p2 cells)

Neither of the original notebooks' two methods is attention rollout, and neither is classic
Grad-CAM: they are replayed here so that the replays (experiments.py, orig_*) run what the
notebooks ran (github.com/Soobiwan/IRKD at 0a27c9f; cells numbered from 0, markdown included,
line numbers within the cell).

Each method is a class with the four parts irkd.RolloutSaliency documents (student_forward,
student_map, teacher_map, loss). METHODS is the one place where a map plugs in: add a class
here, name it in METHODS, and --saliency=NAME reaches it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import irkd


class capture_tokens:
    """Context manager that records the output tokens (B, N, D) of chosen blocks during a forward.

    Forward hooks keep ViT.forward free of a third return mode; the gradient maps need the
    tokens themselves (not copies) so gradients can be taken with respect to them.
    """

    def __init__(self, model: nn.Module, layers=()):
        self.model, self.layers, self.tokens, self.handles = model, list(layers), [], []

    def __enter__(self) -> list[torch.Tensor]:
        for i in self.layers:
            hook = lambda module, inputs, output: self.tokens.append(output[0])  # noqa: E731
            self.handles.append(self.model.blocks[i].register_forward_hook(hook))
        return self.tokens

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _square(n: int) -> int:
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} patch tokens is not a square grid")
    return g


def area_pool_grid(maps: torch.Tensor, size) -> torch.Tensor:
    """Area-pool (..., gh, gw) maps to the grid `size`, as irkd.saliency_loss pools a teacher map."""
    size = tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    # every leading dim folded into the batch: (M, 1, gh, gw), one channel per map
    pooled = F.adaptive_avg_pool2d(maps.reshape(-1, 1, *maps.shape[-2:]), size)
    return pooled.view(*maps.shape[:-2], *size)                    # (..., size[0], size[1])


# =============================================================================
# grad: token Grad-CAM (this project's variant)
# =============================================================================

def grad_layers(depth: int) -> list[int]:
    """The layers of saliency="grad": blocks 0, 1 and the last for models of up to 4 blocks,
    else all. The last block's map is all zero (see token_gradcam), so it only rescales the
    layer average, which min-max normalisation removes."""
    return [0, 1, depth - 1] if depth <= 4 else list(range(depth))


def token_gradcam(logits: torch.Tensor, tokens: list[torch.Tensor], target: torch.Tensor,
                  num_prefix: int, create_graph: bool) -> torch.Tensor:
    """Grad-CAM over patch tokens through the rest of the network, averaged over the captured
    layers -> (B, gh, gw).

    Per layer: channel weights = the gradient of the target-class score averaged over the
    *patch* tokens only (averaging over all tokens let the class and distillation tokens,
    whose gradients are far larger, set the weights); map = ReLU(sum over channels of
    weight * patch token). The heads read only the prefix tokens after the final norm, so the
    last block's patch tokens get exactly zero gradient and that layer's map is all zero: only
    blocks before the last carry signal. With create_graph=True the map stays differentiable
    (second order), so a loss on it trains the student.
    """
    # logits (B, C); tokens and their grads: per captured layer (B, N, D)
    score = logits.float().gather(1, target[:, None]).sum()    # samples are independent: sum
    grads = torch.autograd.grad(score, tokens, create_graph=create_graph)
    cams = [F.relu((g[:, num_prefix:].float().mean(dim=1, keepdim=True)
                    * h[:, num_prefix:].float()).sum(-1))                      # (B, n_patches)
            for h, g in zip(tokens, grads)]
    cam = torch.stack(cams).mean(0)                       # (L, B, n_patches) -> (B, n_patches)
    side = math.isqrt(cam.shape[1])
    return cam.reshape(-1, side, side)                                         # (B, gh, gw)


class GradSaliency:
    """saliency="grad": token Grad-CAM of student and teacher (target class), saliency_loss.

    Needs from the student: the explicit attention path (a second-order gradient runs through
    the attention, which the fused kernels cannot give) and its block outputs (hooks)."""
    name, compilable, recomputable = "grad", False, False

    def student_forward(self, student, x):
        with capture_tokens(student, grad_layers(len(student.blocks))) as tokens:
            out, _ = student(x, return_attn=True)
        return out, tokens

    def student_map(self, student, outputs, tokens, y):
        cls_logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return token_gradcam(cls_logits, tokens, y, num_prefix=student.num_prefix,
                             create_graph=True)                                # (B, gh, gw)

    def teacher_map(self, teacher, x, y, student_depth):
        # gradients inside the frozen teacher, taken w.r.t. its tokens only
        with torch.enable_grad(), capture_tokens(teacher, grad_layers(len(teacher.blocks))) as t:
            # its parameters are frozen, so an input that needs grad is what builds the graph
            logits = teacher(x.detach().requires_grad_(True))
            cam = token_gradcam(logits, t, y, num_prefix=teacher.num_prefix, create_graph=False)
        return logits.detach(), cam.detach()

    def loss(self, student_map, teacher_map):
        return irkd.saliency_loss(student_map, teacher_map)


# =============================================================================
# attn: the original ViT-Tiny p4 cell's raw class-token attention
# =============================================================================

def cls_attention_maps(attentions: list[torch.Tensor], num_prefix: int) -> torch.Tensor:
    """Class-token -> patch attention of every layer, mean over heads -> (L, B, gh, gw), raw.

    Replays process_attention() of P_4_ALL.ipynb (the ViT-Tiny p4 KD+CL+Sal cell, cell 14,
    lines 107-119): attentions[l].mean(heads)[:, 0, num_prefix:] on a square grid. No
    gradients and no rollout; attn_saliency_loss does the min-max normalisation and the MSE.
    attentions: per layer (B, heads, N, N) probabilities, tokens [cls, (dist), patches].
    """
    a = torch.stack([layer.float().mean(dim=1)[:, 0, num_prefix:]
                     for layer in attentions])                                 # (L, B, n)
    g = _square(a.shape[-1])
    return a.reshape(*a.shape[:2], g, g)                                       # (L, B, gh, gw)


def attn_saliency_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """saliency="attn": per-image min-max (over patches), MSE per layer, averaged over layers.

    Replays multi_layer_attention_loss() of P_4_ALL.ipynb (cell 14, lines 121-146): layer i of
    the student against layer i of the teacher, over the layers both have (the notebook looped
    over range(12) and skipped missing layers), eps 1e-8. Where the grids differ, the teacher's
    raw maps are area-pooled to the student's grid (as saliency_loss does); the notebook would
    have resized the student's normalised map bilinearly, a branch its runs never reached.
    """
    L = min(len(student_maps), len(teacher_maps))
    s = student_maps[:L].flatten(0, 1)                                         # (L*B, gh, gw)
    t = area_pool_grid(teacher_maps[:L], student_maps.shape[-2:]).flatten(0, 1)  # (L*B, gh, gw)
    # every layer has the same B*gh*gw terms, so one MSE over all = the mean of layer MSEs
    return F.mse_loss(irkd.minmax_normalize(s, 1e-8), irkd.minmax_normalize(t, 1e-8))


class AttnSaliency:
    """saliency="attn": the notebooks' raw cls attention per layer. Needs from the student:
    the explicit attention path (return_attn=True)."""
    name, compilable, recomputable = "attn", True, True

    def student_forward(self, student, x):
        return student(x, return_attn=True)

    def student_map(self, student, outputs, attentions, y):
        return cls_attention_maps(attentions, num_prefix=student.num_prefix)  # (L, B, gh, gw)

    @torch.no_grad()
    def teacher_map(self, teacher, x, y, student_depth):
        # the class token's row of each layer, taken as the forward goes: one layer's
        # attention in memory at a time
        h, maps = teacher.embed(x), []                                        # (B, N, D)
        for block in teacher.blocks:
            h, attn = block(h, return_attn=True)                              # (B, heads, N, N)
            maps.append(cls_attention_maps([attn], teacher.num_prefix)[0])    # (B, gh, gw)
        return teacher.classify(h), torch.stack(maps)                         # (L, B, gh, gw)

    def loss(self, student_maps, teacher_maps):
        return attn_saliency_loss(student_maps, teacher_maps)


# =============================================================================
# probe: the original custom and ViT-Tiny p2 cells' linear-probe gradients
# =============================================================================

def probe_layers(depth: int) -> list[int]:
    """The blocks saliency="probe" reads, in the student and (same indices) in the teacher:
    [0, 2, 3] for a 4-block model (P_2_OUR_STUDENT_SAL_MAP.ipynb's custom student), else all
    (P_2_SaliencyMap.ipynb used all 12 blocks of ViT-Tiny)."""
    return [0, 2, 3] if depth == 4 else list(range(depth))


def probe_gradient_maps(tokens: list[torch.Tensor], head: nn.Module, num_prefix: int,
                        create_graph: bool) -> torch.Tensor:
    """Per-class gradient maps of a linear probe on each layer's patches -> (L, B, gh, gw, C), raw.

    Replays SaliencyDistiller.compute_attention_map / saliency_loss of
    P_2_OUR_STUDENT_SAL_MAP.ipynb (cell 1, lines 91-132) and P_2_SaliencyMap.ipynb (cell 1,
    lines 101-142). Per captured block output (tokens[l], (B, N, D)): P = its patch tokens,
    with no norm; probe logits = head(mean over patches of P), `head` being the model's final
    class-token classifier; for every class c, w_c = the gradient of probe logit c w.r.t. P,
    averaged over patches; map_c[patch] = sum over channels of ReLU(w_c * P[patch]).
    probe_saliency_loss normalises the maps jointly over patches x classes per image.

    Since the probe input is the patch mean z, mean_n d logit_c / d P_n = (d logit_c / d z) / n:
    one small backward per class through the head alone. sum_k ReLU(w_k P_k) is computed as
    ReLU(P) @ ReLU(w) + ReLU(-P) @ ReLU(-w) (exact, ReLU(ab) = ReLU(a)ReLU(b) + ReLU(-a)ReLU(-b)),
    two matmuls instead of a (B, n, C, D) tensor. create_graph=True (the student, as in the
    notebooks) keeps the maps differentiable w.r.t. the features and, second order, the head's
    weights; False (the teacher) returns maps without a graph.
    """
    maps = []
    with torch.autocast(tokens[0].device.type, enabled=False), torch.enable_grad():
        for h in tokens:
            P = h[:, num_prefix:].float()                                          # (B, n, D)
            if not create_graph:
                P = P.detach()
            n = P.shape[1]
            z = P.mean(dim=1)                                                      # (B, D)
            if not z.requires_grad:
                z.requires_grad_(True)
            logits = head(z)                                                       # (B, C)
            w = torch.stack([torch.autograd.grad(logits[:, c].sum(), z, retain_graph=True,
                                                 create_graph=create_graph)[0]
                             for c in range(logits.shape[1])], dim=1) / n          # (B, C, D)
            if not create_graph:
                w = w.detach()
            m = (F.relu(P) @ F.relu(w).transpose(1, 2)
                 + F.relu(-P) @ F.relu(-w).transpose(1, 2))                        # (B, n, C)
            g = _square(n)
            maps.append(m.reshape(m.shape[0], g, g, m.shape[-1]))                 # (B, gh, gw, C)
    return torch.stack(maps)                                                   # (L, B, gh, gw, C)


def probe_saliency_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """saliency="probe": per-image min-max over patches x classes jointly, MSE per layer,
    summed over layers (P_2_OUR_STUDENT_SAL_MAP.ipynb cell 1 lines 106-109 and 128; eps 1e-6).

    Both map stacks come from the same layer indices (probe_layers). The notebooks' teacher and
    student always had the same grid; here a finer teacher grid is area-pooled to the student's
    before normalising, as saliency_loss does.
    """
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student layers against "
                         f"{len(teacher_maps)} teacher layers")
    # maps are (L, B, gh, gw, C): the classes move out of the way of the pooled grid and back
    t = area_pool_grid(teacher_maps.movedim(-1, -3), student_maps.shape[-3:-1]).movedim(-3, -1)
    s, t = (irkd.minmax_normalize(student_maps.flatten(0, 1), 1e-6),        # (L*B, gh, gw, C)
            irkd.minmax_normalize(t.flatten(0, 1), 1e-6))
    return ((s - t) ** 2).reshape(len(student_maps), -1).mean(dim=1).sum()  # (L, ...): per layer


class ProbeSaliency:
    """saliency="probe": the notebooks' linear-probe gradient maps. Needs from the student: its
    block outputs (hooks) and its cls head (`student.head`, the probe); the fused path is fine.
    The teacher is read at the student's probe layers (as the notebooks did)."""
    name, compilable, recomputable = "probe", False, False

    def student_forward(self, student, x):
        with capture_tokens(student, probe_layers(len(student.blocks))) as tokens:
            out = student(x)
        return out, tokens

    def student_map(self, student, outputs, tokens, y):
        return probe_gradient_maps(tokens, student.head, num_prefix=student.num_prefix,
                                   create_graph=True)                        # (L, B, gh, gw, C)

    def teacher_map(self, teacher, x, y, student_depth):
        layers = probe_layers(student_depth or len(teacher.blocks))
        if max(layers) >= len(teacher.blocks):
            raise ValueError(f"saliency='probe' reads blocks {layers}; "
                             f"the teacher has {len(teacher.blocks)}")
        # the probe's gradients start at the captured tokens, so the forward needs no graph
        with torch.no_grad(), capture_tokens(teacher, layers) as tokens:
            logits = teacher(x)
        return logits, probe_gradient_maps(tokens, teacher.head, teacher.num_prefix,
                                           create_graph=False)               # (L, B, gh, gw, C)

    def loss(self, student_maps, teacher_maps):
        return probe_saliency_loss(student_maps, teacher_maps)


# The one place where a saliency method plugs in: --saliency=NAME builds METHODS[NAME]().
METHODS = {"rollout": irkd.RolloutSaliency, "grad": GradSaliency, "attn": AttnSaliency,
           "probe": ProbeSaliency}
