"""Video ViT with MSCA temporal cross-attention and its baselines (frame-wise ViT, TokenShift).

model = create_model("msca_b16", num_classes=400)   # presets: MODEL_NAMES
load_pretrained(model, "ViT-B_16.npz")              # jax .npz or timm-layout torch state dict
logits = model(video)                               # (B, T, 3, H, W) -> (B, num_classes)
"""

from .attention import SHIFTS, Attention, HeadShift, NoTemporalMix, PatchShift, TokenShift, temporal_shift
from .factory import MODEL_NAMES, OVERRIDES, PRESETS, build, create_model
from .pretrained import load_npz, load_pretrained, load_state_dict, npz_layout, resample_pos_embed
from .vit import TEMPORAL, Block, VideoViT

__all__ = [
    "MODEL_NAMES",
    "OVERRIDES",
    "PRESETS",
    "SHIFTS",
    "TEMPORAL",
    "Attention",
    "Block",
    "HeadShift",
    "NoTemporalMix",
    "PatchShift",
    "TokenShift",
    "VideoViT",
    "build",
    "create_model",
    "load_npz",
    "load_pretrained",
    "load_state_dict",
    "npz_layout",
    "resample_pos_embed",
    "temporal_shift",
]
