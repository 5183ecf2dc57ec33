"""Attention with a replaceable temporal step, and the temporal steps themselves.

Activations keep time as an explicit axis, (B, T, N, C), so a temporal step needs no frame count: it shifts
along dim 1. Every variant is one call to `temporal_shift`, which moves slices of a tensor one frame forward
or back with zero frames at the clip's ends (no wrap-around), built with a pad and one cat (its backward is the
opposite shift, one more cat), so the result is an ordinary tensor and any SDPA kernel runs unchanged: zero
keys/values reproduce the reference's zeros_like + slice-copy semantics exactly.

Variants (who reads frame t+1 / t-1; everything else reads frame t):
- `NoTemporalMix`  frame-wise ViT.
- `HeadShift`      MSCA (paper): fold = heads // shift_div; heads [0, fold) read t+1, heads [h-fold, h) read
                   t-1, for every token (CLS included). `shift` picks which of q, k, v move ("kv" = MSCA-KV).
- `PatchShift`     MSCA patch variant (our definition; the paper gives no pattern): the same split along the
                   token axis. fold = (N-1) // shift_div patch tokens; the first `fold` patch tokens in raster
                   order (token positions [1, 1+fold)) read t+1, the last `fold` ([N-fold, N)) read t-1, in all
                   heads: a strip at the top of the image from t+1 and one at the bottom from t-1. The CLS
                   token (position 0) always stays at frame t, so each query still sees its own frame's summary.
                   shift_div 12 moves 32 of 196 tokens at 224 px (16 %), close to the 2 of 12 heads (17 %) of
                   the head split.
- `TokenShift`     TokenShift baseline on the residual stream: CLS channels [0, fold) read t+1 and
                   [fold, 2*fold) read t-1, fold = C // shift_div; patch tokens untouched.
"""

import torch
import torch.nn.functional as F
from torch import nn

SHIFTS = ("kv", "k", "v", "q", "qk", "qv", "qkv")


def _shift(x: torch.Tensor, future: tuple[int, int], past: tuple[int, int], dim: int) -> torch.Tensor:
    """The shift as plain ops: one pad per moved part, one cat."""
    parts, pos = [], 0
    for (start, stop), src in sorted(((future, 1), (past, -1))):
        if stop <= start:
            continue
        if start > pos:
            parts.append(x.narrow(dim, pos, start - pos))  # unshifted run before this move
        seg = x.narrow(dim, start, stop - start)  # (B, T, ..., stop-start, ...)
        seg = seg[:, 1:] if src > 0 else seg[:, :-1]  # (B, T-1, ...): frames t+1 (or t-1) that exist
        pad = [0, 0] * (x.dim() - 2) + ([0, 1] if src > 0 else [1, 0])
        parts.append(F.pad(seg, pad))  # (B, T, ...): zero frame at the clip's end (or start)
        pos = stop
    if pos < x.shape[dim]:
        parts.append(x.narrow(dim, pos, x.shape[dim] - pos))
    return torch.cat(parts, dim)


class _TemporalShift(torch.autograd.Function):
    """The shift is linear and its adjoint is the opposite shift, so backward is one more cat; plain autograd
    through narrow/pad/cat would allocate and sum a full-size zero gradient per piece."""

    @staticmethod
    def forward(ctx, x, future, past, dim):
        ctx.args = future, past, dim
        return _shift(x, future, past, dim)

    @staticmethod
    def backward(ctx, grad):
        future, past, dim = ctx.args
        return _TemporalShift.apply(grad, past, future, dim), None, None, None  # future reads t-1, past t+1


def temporal_shift(x: torch.Tensor, future: slice, past: slice, dim: int) -> torch.Tensor:
    """Along `dim` of x (B, T, ...), positions in `future` take frame t+1's values and positions in `past`
    frame t-1's; frames beyond the clip are zeros. Returns x itself when both slices are empty."""
    dim, size = dim % x.dim(), x.shape[dim % x.dim()]
    assert dim >= 2, "dims 0 and 1 are batch and time"
    (f0, f1), (p0, p1) = future.indices(size)[:2], past.indices(size)[:2]
    if f1 <= f0 and p1 <= p0:
        return x
    assert f1 <= f0 or p1 <= p0 or f1 <= p0 or p1 <= f0, f"future {future} and past {past} overlap"
    return _TemporalShift.apply(x, (f0, f1), (p0, p1), dim)


def check_shift(shift: str) -> str:
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")
    return shift


def check_shift_div(shift_div: int) -> int:
    if not isinstance(shift_div, int) or shift_div < 2:
        raise ValueError(f"shift_div must be an int >= 2 (fold = size // shift_div), got {shift_div!r}")
    return shift_div


class NoTemporalMix(nn.Module):
    """Frame-wise attention: q, k, v pass through."""

    def forward(self, q, k, v):
        return q, k, v


class HeadShift(nn.Module):
    """MSCA: the first `fold` heads read frame t+1, the last `fold` read t-1, for the tensors in `shift`."""

    dim = 3  # the head axis of q/k/v (B, T, N, h, d)

    def __init__(self, shift: str = "kv", shift_div: int = 12):
        super().__init__()
        self.shift, self.shift_div = check_shift(shift), check_shift_div(shift_div)

    def slices(self, q):
        h = q.shape[self.dim]
        fold = h // self.shift_div
        return slice(0, fold), slice(h - fold, h)

    def forward(self, q, k, v):  # each (B, T, N, h, d)
        future, past = self.slices(q)
        return tuple(
            temporal_shift(t, future, past, self.dim) if name in self.shift else t for name, t in zip("qkv", (q, k, v))
        )

    def extra_repr(self):
        return f"shift={self.shift!r}, shift_div={self.shift_div}"


class PatchShift(HeadShift):
    """MSCA patch variant: the first `fold` patch tokens read t+1, the last `fold` read t-1; CLS stays."""

    dim = 2  # the token axis of (B, T, N, h, d)

    def slices(self, q):
        n = q.shape[self.dim]
        fold = (n - 1) // self.shift_div
        return slice(1, 1 + fold), slice(n - fold, n)


class TokenShift(nn.Module):
    """TokenShift on the residual stream: CLS channels [0, fold) from t+1, [fold, 2*fold) from t-1."""

    def __init__(self, shift_div: int = 4):
        super().__init__()
        self.shift_div = check_shift_div(shift_div)

    def forward(self, x):  # (B, T, N, C)
        fold = x.shape[-1] // self.shift_div
        if fold == 0:
            return x
        cls = temporal_shift(x[:, :, :1], slice(0, fold), slice(fold, 2 * fold), dim=-1)  # (B, T, 1, C)
        return torch.cat([cls, x[:, :, 1:]], dim=2)  # (B, T, N, C)

    def extra_repr(self):
        return f"shift_div={self.shift_div}"


class Attention(nn.Module):
    """Multi-head attention with a fused qkv projection; `temporal` decides which frame q/k/v come from."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        temporal: nn.Module | None = None,
    ):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.temporal = temporal if temporal is not None else NoTemporalMix()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):  # (B, T, N, C)
        B, T, N, C = x.shape
        qkv = self.qkv(x).reshape(B, T, N, 3, self.num_heads, self.head_dim)  # (B, T, N, 3, h, d)
        # Shift before the head transpose: the shifted copies keep the Linear's (N, h, d) memory order, so SDPA
        # sees the same strides as in the frame-wise ViT and gradients flow back into qkv without a transpose.
        q, k, v = self.temporal(*qkv.unbind(3))  # each (B, T, N, h, d)
        q, k, v = (t.flatten(0, 1).transpose(1, 2) for t in (q, k, v))  # each (B*T, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, T, N, C)  # (B, T, N, C)
        return self.proj_drop(self.proj(x))
