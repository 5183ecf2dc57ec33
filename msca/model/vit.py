"""Video ViT: frames run through a plain ViT as one (B*T) batch, with timm's parameter names so timm and jax
ViT checkpoints map 1:1. The only temporal parts are the steps from attention.py; per-frame CLS logits are
averaged over T (the reference's 'avg' consensus)."""

import torch
from torch import nn

from .attention import Attention, HeadShift, NoTemporalMix, PatchShift, TokenShift, check_shift, check_shift_div

TEMPORAL = ("none", "msca", "msca_patch", "tokenshift")


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.grid_size = (img_size // patch_size,) * 2
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):  # (B*T, 3, H, W)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B*T, N-1, C)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth per clip (not per frame), so a dropped branch is dropped for all of a clip's frames."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):  # (B, T, N, C)
        if not self.training:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - self.p)  # (B, 1, 1, 1)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-LN block; `token_shift` acts on the residual stream before attention and before the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        attn_temporal: nn.Module | None = None,
        token_shift: nn.Module | None = None,
        drop_path: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.token_shift = token_shift if token_shift is not None else nn.Identity()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, temporal=attn_temporal)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):  # (B, T, N, C)
        x = self.token_shift(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = self.token_shift(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def temporal_steps(temporal: str, shift: str, shift_div: int):
    """Map a variant name to (attention step, residual-stream step) factories."""
    check_shift(shift)
    if temporal == "none":
        return NoTemporalMix, nn.Identity
    check_shift_div(shift_div)
    if temporal == "msca":
        return (lambda: HeadShift(shift, shift_div)), nn.Identity
    if temporal == "msca_patch":
        return (lambda: PatchShift(shift, shift_div)), nn.Identity
    if temporal == "tokenshift":
        return NoTemporalMix, (lambda: TokenShift(shift_div))
    raise ValueError(f"unknown temporal variant {temporal!r}; valid: {', '.join(TEMPORAL)}")


class VideoViT(nn.Module):
    """(B, T, 3, H, W) -> (B, num_classes). T is read from the input; `num_frames` is only the default clip
    length that data and configs use."""

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 8,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        temporal: str = "none",
        shift: str = "kv",
        shift_div: int = 12,
        drop_path_rate: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        attn_step, stream_step = temporal_steps(temporal, shift, shift_div)
        self.num_classes, self.num_frames, self.embed_dim = num_classes, num_frames, embed_dim
        self.temporal, self.shift, self.shift_div = temporal, shift, shift_div
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, attn_step(), stream_step(), dpr[i], attn_drop, proj_drop)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self):
        """timm's ViT init; a pretrained load overwrites all of it."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def forward_features(self, x):  # (B, T, 3, H, W)
        """Final-norm CLS feature of every frame."""
        if x.dim() != 5:
            raise ValueError(f"expected a video batch (B, T, 3, H, W), got shape {tuple(x.shape)}")
        B, T = x.shape[:2]
        x = self.patch_embed(x.flatten(0, 1))  # (B*T, N-1, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B*T, N, C)
        x = x.unflatten(0, (B, T))  # (B, T, N, C)
        for blk in self.blocks:
            x = blk(x)  # (B, T, N, C)
        return self.norm(x[:, :, 0])  # (B, T, C); LayerNorm is per token, so norm(CLS) == norm(x)[CLS]

    def forward(self, x):  # (B, T, 3, H, W)
        return self.head(self.forward_features(x)).mean(dim=1)  # (B, num_classes): logits averaged over T
