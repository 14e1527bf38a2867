"""The students as the original study's notebooks built them, for their replays.

The notebooks' `ViTWithDistillation` wraps a HuggingFace ViT: the HF embeddings (patches,
cls token, a position table with rows for cls and the patches only, dropout), then a
zero-initialised distillation token put in between cls and the patches, the HF blocks, and
the two heads on the last block's output, with no final LayerNorm. HF's blocks drop out after
the attention projection and after the MLP's second linear (none after GELU), with a rate of
their own on the attention probabilities. NotebookViT is irkd.ViT changed in exactly those
places (docs/reproducing.md, rows "architecture", "dropout placement", "attention-probability
dropout"); the method (rollout, the losses, the curriculum) runs on it unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import irkd


class NotebookAttention(irkd.Attention):
    """HF ViT's attention: `attn_dropout` on the probabilities, `dropout` after the projection.

    irkd.Attention uses one rate for both; the weights (qkv, proj) and their names are its own.
    """

    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        # the base's one rate becomes the probabilities' (self.drop, and the fused path's
        # self.dropout); the projection's output gets the hidden rate, as HF's ViTSelfOutput
        super().__init__(dim=dim, heads=heads, dropout=attn_dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        # B batch, N tokens (prefix + patches), D width, H heads of D/H channels each
        B, N, D = x.shape
        H = self.heads
        qkv = self.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D/H)
        q, k, v = qkv.unbind(0)                                                # each (B, H, N, D/H)
        attn = None
        if return_attn:
            # explicit path: rollout reads the probabilities before their dropout, as in irkd
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, H, N, N)
            out = self.drop(attn) @ v                                          # (B, H, N, D/H)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0)     # (B, H, N, D/H)
        out = out.transpose(1, 2).reshape(B, N, D)     # (B, N, D): the heads side by side again
        return self.proj_drop(self.proj(out)), attn


class _PosTable:
    """What irkd.ViT.pos_embed_for reads of a model, with num_prefix = the table's prefix rows."""

    def __init__(self, pos_embed: torch.Tensor, grid: int, num_prefix: int):
        self.pos_embed, self.grid, self.num_prefix = pos_embed, grid, num_prefix


class NotebookViT(irkd.ViT):
    """The notebooks' distilled student (`ViTWithDistillation`) on irkd.ViT's code.

    Tokens are [cls, dist, patch_1 ... patch_n] as in irkd.ViT (num_prefix 2, which rollout
    and the losses rely on), and forward returns the same things, but:
      - the position table has rows for cls and the patches only, (1, 1 + grid**2, D); the
        dist token has no position row and is inserted after the embedding dropout;
      - the dist token starts at zero (the notebooks' wrapper owned it; HF's init never ran);
      - no LayerNorm after the blocks: both heads read the last block's output;
      - `dropout` after the embeddings, the attention projection and the MLP's second linear,
        none after GELU; `attn_dropout` on the attention probabilities (HF's
        hidden_dropout_prob and attention_probs_dropout_prob).
    distill_token=False is the HF ViT the notebooks' CE and CL cells called
    (ViTForImageClassification), which their replays run: its final LayerNorm is kept, the
    rest as above.
    Other HF details are not copied (LayerNorm eps 1e-12, the patch convolution's init, resampling
    without antialiasing): docs/reproducing.md, row "small model details".
    """

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_dim: int, patch_size: int,
                 img_size: int = 32, num_classes: int = 10, distill_token: bool = False,
                 dropout: float = 0.0, attn_dropout: float = 0.0):
        # irkd.ViT draws every weight; the changes below draw none, so one seed gives the same
        # weights as irkd.ViT's (less the dropped rows) and leaves the random stream as it does
        super().__init__(dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
                         patch_size=patch_size, img_size=img_size, num_classes=num_classes,
                         distill_token=distill_token, dropout=dropout)
        # the table's prefix is the cls row alone; num_prefix (2 with the dist token) still
        # counts the prefix tokens, which rollout and the saliency maps skip
        self.pos_prefix = 1
        table = self.pos_embed.detach()
        self.pos_embed = nn.Parameter(torch.cat([table[:, :1], table[:, self.num_prefix:]],
                                                dim=1))                  # (1, 1 + grid**2, D)
        if self.dist_token is not None:
            nn.init.zeros_(self.dist_token)
            self.norm = nn.Identity()              # the heads read the blocks' output directly
        for block in self.blocks:
            block.mlp[2] = nn.Identity()           # no dropout after GELU (HF's ViTIntermediate)
            # HF's attention in place of irkd's, adopting its layers (same weights and names);
            # made on the meta device, so that building it draws nothing
            with torch.device("meta"):
                attn = NotebookAttention(dim=dim, heads=heads, dropout=dropout,
                                         attn_dropout=attn_dropout)
            attn.qkv, attn.proj = block.attn.qkv, block.attn.proj
            block.attn = attn

    def pos_embed_for(self, gh: int, gw: int) -> torch.Tensor:
        """irkd.ViT's resampling of the table to a gh x gw grid -> (1, 1 + gh*gw, D)."""
        # irkd.ViT.pos_embed_for splits the prefix rows from the patch rows at num_prefix;
        # here the table has pos_prefix of them, so it runs on a view that says so
        return irkd.ViT.pos_embed_for(_PosTable(self.pos_embed, self.grid, self.pos_prefix),
                                      gh, gw)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, N, D): HF's embeddings, then the dist token."""
        # B batch, H x W pixels, p patch size, gh x gw patches, D width,
        # N = num_prefix + gh*gw tokens
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"resolution {H}x{W} is not divisible by the patch size {p}; "
                             f"use a multiple of {p}")
        x = self.patch_embed(x)                                   # (B, D, H/p, W/p)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)                          # (B, gh*gw, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)   # (B, 1 + gh*gw, D)
        x = self.drop(x + self.pos_embed_for(gh, gw))             # positions for this grid
        if self.dist_token is None:
            return x
        # after the positions and the dropout: the token gets neither
        dist = self.dist_token.expand(B, -1, -1)                  # (B, 1, D)
        return torch.cat([x[:, :1], dist, x[:, 1:]], dim=1)       # (B, 2 + gh*gw, D)


def build_notebook_model(preset: str, *, patch_size: int, distill_token: bool = False,
                         dropout: float = 0.0, attn_dropout: float = 0.0) -> NotebookViT:
    """A NotebookViT of one of irkd.PRESETS' sizes (train.make_model, arch="notebook")."""
    if preset not in irkd.PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid: {', '.join(irkd.PRESETS)}")
    return NotebookViT(**irkd.PRESETS[preset], patch_size=patch_size, distill_token=distill_token,
                       dropout=dropout, attn_dropout=attn_dropout)
