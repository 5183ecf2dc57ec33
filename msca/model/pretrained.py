"""Weight-format knowledge lives here, not in the modules: Google's jax ViT `.npz` (the ImageNet-21k
ViT-B_16 layout the reference fine-tunes from) and timm-layout torch state dicts.

Both paths check every key and shape against the model before touching it and fail with one error that names
each missing, unexpected and mis-shaped key. A position grid of another size is resampled (CLS kept) with
scipy.ndimage.zoom(order=1), as the reference does. With zero_head (the reference's `--tune_from`), the
checkpoint's classifier is ignored and the model's head is zeroed."""

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

POS_NPZ = "Transformer/posembed_input/pos_embedding"
IGNORED_NPZ = ("pre_logits/",)  # present in the 21k checkpoints, unused by the reference
IGNORED_TORCH = ("pre_logits.",)  # old timm in21k checkpoints


def npz_layout(model: nn.Module, with_head: bool = False) -> dict[str, tuple[int, ...]]:
    """Every jax key the model needs and its shape (the reference's table, sized by the model)."""
    C, depth = model.embed_dim, len(model.blocks)
    h = model.blocks[0].attn.num_heads
    d, hidden = C // h, model.blocks[0].mlp.fc1.out_features
    p = model.patch_embed.proj.kernel_size[0]
    cin = model.patch_embed.proj.in_channels
    L = {
        "embedding/kernel": (p, p, cin, C),
        "embedding/bias": (C,),
        "cls": (1, 1, C),
        POS_NPZ: tuple(model.pos_embed.shape),
        "Transformer/encoder_norm/scale": (C,),
        "Transformer/encoder_norm/bias": (C,),
    }
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            L[f"{b}{ln}/scale"] = L[f"{b}{ln}/bias"] = (C,)
        for t in ("query", "key", "value"):
            L[f"{a}{t}/kernel"], L[f"{a}{t}/bias"] = (C, h, d), (h, d)
        L[a + "out/kernel"], L[a + "out/bias"] = (h, d, C), (C,)
        L[b + "MlpBlock_3/Dense_0/kernel"], L[b + "MlpBlock_3/Dense_0/bias"] = (C, hidden), (hidden,)
        L[b + "MlpBlock_3/Dense_1/kernel"], L[b + "MlpBlock_3/Dense_1/bias"] = (hidden, C), (C,)
    if with_head:
        L["head/kernel"], L["head/bias"] = (C, model.num_classes), (model.num_classes,)
    return L


def resample_pos_embed(pos: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(1, 1+g*g, C) -> (1, 1+gh*gw, C): keep CLS, bilinear zoom of the square grid like the reference."""
    from scipy import ndimage

    g = int(round((pos.shape[1] - 1) ** 0.5))
    tok, cells = pos[:, :1], pos[0, 1:].reshape(g, g, -1)  # (1, 1, C), (g, g, C)
    cells = ndimage.zoom(cells, (grid[0] / g, grid[1] / g, 1), order=1)  # (gh, gw, C)
    assert cells.shape[:2] == tuple(grid), f"zoom gave {cells.shape[:2]}, wanted {grid}"
    return np.concatenate([tok, cells.reshape(1, grid[0] * grid[1], -1)], axis=1)


def _fit_pos(pos: np.ndarray, target: tuple[int, ...], grid: tuple[int, int]) -> np.ndarray:
    """Resample a square position grid of another size; anything else is left for the shape check."""
    n = pos.shape[1] - 1 if pos.ndim == 3 else -1
    square = n > 0 and int(round(n**0.5)) ** 2 == n
    if tuple(pos.shape) == tuple(target) or not square or pos.shape[0] != 1 or pos.shape[2] != target[2]:
        return pos
    return resample_pos_embed(pos, grid)


def _check(found: Mapping[str, tuple], expected: Mapping[str, tuple], source: str) -> None:
    missing = [f"  missing: {k} (model expects {tuple(s)})" for k, s in expected.items() if k not in found]
    unexpected = [f"  unexpected: {k} {tuple(s)}" for k, s in found.items() if k not in expected]
    shapes = [
        f"  shape mismatch: {k}: checkpoint {tuple(found[k])} vs model expects {tuple(s)}"
        for k, s in expected.items()
        if k in found and tuple(found[k]) != tuple(s)
    ]
    if missing or unexpected or shapes:
        raise ValueError(f"{source} does not fit the model:\n" + "\n".join(missing + unexpected + shapes))


def _zero_head(model: nn.Module) -> None:
    if isinstance(model.head, nn.Linear):
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)


def load_npz(model: nn.Module, npz: str | os.PathLike | Mapping[str, np.ndarray], zero_head: bool = True):
    """Load a jax ViT checkpoint (path or loaded mapping) into a VideoViT; see the reference's table."""
    source = os.fspath(npz) if not isinstance(npz, Mapping) else "npz mapping"
    if not isinstance(npz, Mapping):
        with np.load(npz) as f:
            npz = {k: f[k] for k in f.files}
    drop = IGNORED_NPZ + (("head/",) if zero_head else ())
    w = {k: v for k, v in npz.items() if not k.startswith(drop)}
    if POS_NPZ in w:
        w[POS_NPZ] = _fit_pos(w[POS_NPZ], tuple(model.pos_embed.shape), model.patch_embed.grid_size)
    _check({k: v.shape for k, v in w.items()}, npz_layout(model, with_head=not zero_head), source)

    C = model.embed_dim

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    sd = {
        "patch_embed.proj.weight": t(w["embedding/kernel"].transpose(3, 2, 0, 1)),  # HWIO -> OIHW
        "patch_embed.proj.bias": t(w["embedding/bias"]),
        "cls_token": t(w["cls"]),
        "pos_embed": t(w[POS_NPZ]),
        "norm.weight": t(w["Transformer/encoder_norm/scale"]),
        "norm.bias": t(w["Transformer/encoder_norm/bias"]),
    }
    for i in range(len(model.blocks)):
        b, m = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = b + "MultiHeadDotProductAttention_1/"
        qkv = ("query", "key", "value")  # timm's fused order: q, k, v; heads are head-major (h*d + j)
        sd[m + "attn.qkv.weight"] = t(np.concatenate([w[f"{a}{n}/kernel"].reshape(C, C).T for n in qkv]))
        sd[m + "attn.qkv.bias"] = t(np.concatenate([w[f"{a}{n}/bias"].reshape(-1) for n in qkv]))
        sd[m + "attn.proj.weight"] = t(w[a + "out/kernel"].reshape(C, C).T)
        sd[m + "attn.proj.bias"] = t(w[a + "out/bias"])
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            sd[f"{m}{name}.weight"], sd[f"{m}{name}.bias"] = t(w[f"{b}{ln}/scale"]), t(w[f"{b}{ln}/bias"])
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[f"{m}mlp.{fc}.weight"] = t(w[f"{b}MlpBlock_3/{dense}/kernel"].T)
            sd[f"{m}mlp.{fc}.bias"] = t(w[f"{b}MlpBlock_3/{dense}/bias"])
    if not zero_head:
        sd["head.weight"], sd["head.bias"] = t(w["head/kernel"].T), t(w["head/bias"])
    return _load(model, sd, zero_head, source)


def load_state_dict(
    model: nn.Module, sd: Mapping[str, torch.Tensor], zero_head: bool = True, source: str = "state dict"
):
    """Load a timm-layout torch state dict (optionally nested under 'model', 'state_dict' or 'module')."""
    for nest in ("model", "state_dict", "module"):
        if isinstance(sd.get(nest), Mapping):
            sd = sd[nest]
    drop = IGNORED_TORCH + (("head.",) if zero_head else ())
    sd = {k: v for k, v in sd.items() if not k.startswith(drop)}
    if "pos_embed" in sd:
        pos = sd["pos_embed"].detach().cpu()
        fit = _fit_pos(pos.float().numpy(), tuple(model.pos_embed.shape), model.patch_embed.grid_size)
        sd["pos_embed"] = pos if fit.shape == pos.shape else torch.from_numpy(fit)
    return _load(model, sd, zero_head, source)


def _load(model: nn.Module, sd: Mapping[str, torch.Tensor], zero_head: bool, source: str):
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not (zero_head and k.startswith("head."))}
    _check({k: tuple(v.shape) for k, v in sd.items()}, expected, source)
    model.load_state_dict(sd, strict=not zero_head)
    if zero_head:
        _zero_head(model)
    return model


def load_pretrained(model: nn.Module, path: str | os.PathLike, zero_head: bool = True):
    """Load `.npz` (jax) or anything torch.load reads (timm-layout state dict) into `model`; returns it.
    zero_head=True fine-tunes from a backbone (head zeroed); False loads a matching head too."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        return load_npz(model, path, zero_head)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return load_state_dict(model, sd, zero_head, source=path)
