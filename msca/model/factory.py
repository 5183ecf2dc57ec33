"""Named presets and the one way to build a model from a name plus overrides."""

from collections.abc import Mapping

from .vit import VideoViT

_B16 = dict(
    num_classes=400, num_frames=8, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0
)
PRESETS = {
    "vit_b16": dict(_B16, temporal="none"),
    "tokenshift_b16": dict(_B16, temporal="tokenshift", shift_div=4),  # TokShift's released div4
    "msca_b16": dict(_B16, temporal="msca", shift="kv", shift_div=12),  # MSCA-KV as released (1+1 of 12 heads)
    "msca_patch_b16": dict(_B16, temporal="msca_patch", shift="kv", shift_div=12),  # patch variant, ours
}
MODEL_NAMES = tuple(PRESETS)
OVERRIDES = (
    "num_classes",
    "num_frames",
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "temporal",
    "shift",
    "shift_div",
    "drop_path_rate",
    "attn_drop",
    "proj_drop",
)


def create_model(name: str, **overrides) -> VideoViT:
    """`create_model("msca_b16", num_classes=174, shift="k")`. shift/shift_div are ignored by temporal='none'."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise TypeError(f"unknown model override(s) {', '.join(bad)}; valid: {', '.join(OVERRIDES)}")
    return VideoViT(**{**PRESETS[name], **overrides})


def build(cfg: Mapping) -> VideoViT:
    """From a config mapping {name: ..., <overrides>}; keys whose value is None keep the preset's value."""
    cfg = dict(cfg)
    return create_model(cfg.pop("name"), **{k: v for k, v in cfg.items() if v is not None})
