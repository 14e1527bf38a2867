"""A small convolutional network for CIFAR-10: a strong teacher that a 2-core CPU can train.

airbench-style (Keller Jordan's cifar10-airbench): a 3x3 conv stem, then three stages, each
conv -> max-pool (halves the grid) -> BN -> GELU -> conv -> BN -> GELU, then a global max over
the last 4 x 4 grid and a linear head whose logits are scaled down. No residual connections,
no dropout: at this depth batch norm alone keeps training stable.

    32 x 32 x 3 -> stem -> 32 x 32 x w0 -> stage 1 -> 16 x 16 x w1 -> stage 2 -> 8 x 8 x w2
                -> stage 3 -> 4 x 4 x w3 -> max -> w3 -> linear -> 10 logits

The teacher sees the 32-px view (teacher_res="full"): it has no position table to resample.
torch only; imports nothing of the project. train.make_model builds it for preset "conv".
"""
from __future__ import annotations

import torch
import torch.nn as nn

# widths: the stem's channels, then each stage's; chosen so that training fits ~30 min of a
# 2-core CPU (docs/speed.md, "A convolutional teacher")
CONV_PRESETS = {
    "conv": dict(widths=(32, 64, 128, 256)),
}


class ConvBlock(nn.Module):
    """conv -> max-pool(2) -> BN -> GELU -> conv -> BN -> GELU: half the grid, c_out channels.

    Pooling right after the first conv (airbench's order) lets the second conv, and the
    norm and activation, run on a quarter of the pixels."""

    def __init__(self, *, c_in: int, c_out: int):
        super().__init__()
        # no conv biases: the batch norm right after each conv has its own
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))     # (B, c_out, H/2, W/2)
        return self.act(self.norm2(self.conv2(x)))             # (B, c_out, H/2, W/2)


class ConvNet(nn.Module):
    """Images (B, 3, H, W), normalised -> logits (B, num_classes); features(x) -> the last
    feature map (B, widths[-1], H/8, W/8) (for a Grad-CAM).

    Runs in channels-last memory format (weights and activations): oneDNN's convolutions
    on a CPU are faster in it (docs/speed.md, "A convolutional teacher"); it changes no
    result beyond float rounding.
    """

    def __init__(self, *, widths: tuple = (32, 64, 128, 256), num_classes: int = 10,
                 logit_scale: float = 1 / 9):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths={widths}: four numbers, the stem's and three stages'")
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.GELU())
        self.stages = nn.Sequential(*[ConvBlock(c_in=a, c_out=b)
                                      for a, b in zip(widths[:-1], widths[1:])])
        # no bias: the max-pooled features feed the head directly; airbench scales the logits
        # by 1/9 so that the untrained net's softmax starts near uniform
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale = logit_scale
        self.to(memory_format=torch.channels_last)             # the conv weights (4-d) only

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)    # a no-op when it already is
        return self.stages(self.stem(x))                       # (B, C, H/8, W/8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).amax(dim=(2, 3))             # (B, C): global max pooling
        return self.head(pooled) * self.logit_scale            # (B, num_classes)


def conv_flops(widths: tuple, res: int = 32, num_classes: int = 10) -> int:
    """FLOPs of one image's forward pass (2 per multiply-add, as bench.forward_flops counts),
    convolutions and the head only (batch norm, activations and pooling are a few % more)."""
    w0, *stages = widths
    flops = 2 * res * res * w0 * 3 * 9                          # the 3x3 stem at res x res
    c_in, s = w0, res
    for c in stages:
        flops += 2 * s * s * c * c_in * 9                       # conv1 before the pool, s x s
        s //= 2
        flops += 2 * s * s * c * c * 9                          # conv2 after it, s/2 x s/2
        c_in = c
    return flops + 2 * c_in * num_classes                       # the linear head
