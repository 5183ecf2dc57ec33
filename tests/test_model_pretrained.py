"""Weight loading: jax `.npz` in the real ImageNet-21k ViT-B_16 key layout (random values, small sizes), and
timm-layout torch state dicts. Expected values are written from the reference's table, not from the loader."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from msca.model import create_model, load_pretrained, load_state_dict, npz_layout

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=5)  # grid 4, N = 17
POS = "Transformer/posembed_input/pos_embedding"


def real_layout(depth=2, C=48, h=4, mlp=192, p=8, grid=4, classes=11):
    """Keys and shapes of Google's imagenet21k ViT-B_16.npz (depth 12, C 768, h 12, mlp 3072, p 16, grid 14,
    classes 21843), sized by the args."""
    d = C // h
    L = {
        "embedding/kernel": (p, p, 3, C),
        "embedding/bias": (C,),
        "cls": (1, 1, C),
        POS: (1, 1 + grid * grid, C),
        "Transformer/encoder_norm/scale": (C,),
        "Transformer/encoder_norm/bias": (C,),
        "head/kernel": (C, classes),
        "head/bias": (classes,),
        "pre_logits/kernel": (C, C),
        "pre_logits/bias": (C,),
    }
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            L[f"{b}{ln}/scale"], L[f"{b}{ln}/bias"] = (C,), (C,)
        for t in ("query", "key", "value"):
            L[f"{a}{t}/kernel"], L[f"{a}{t}/bias"] = (C, h, d), (h, d)
        L[a + "out/kernel"], L[a + "out/bias"] = (h, d, C), (C,)
        L[b + "MlpBlock_3/Dense_0/kernel"], L[b + "MlpBlock_3/Dense_0/bias"] = (C, mlp), (mlp,)
        L[b + "MlpBlock_3/Dense_1/kernel"], L[b + "MlpBlock_3/Dense_1/bias"] = (mlp, C), (C,)
    return L


def fake_npz(seed=0, **kw):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in real_layout(**kw).items()}


def save(tmp_path, w):
    np.savez(tmp_path / "w.npz", **w)
    return tmp_path / "w.npz"


def same(t, a):
    return torch.equal(t.detach(), torch.from_numpy(np.ascontiguousarray(a)))


def test_npz_round_trip(tmp_path):
    w = fake_npz()
    m = load_pretrained(create_model("msca_b16", **SMALL), save(tmp_path, w))
    C, sd = 48, m.state_dict()
    assert same(sd["patch_embed.proj.weight"], np.transpose(w["embedding/kernel"], [3, 2, 0, 1]))
    assert same(sd["patch_embed.proj.bias"], w["embedding/bias"])
    assert same(sd["cls_token"], w["cls"]) and same(sd["pos_embed"], w[POS])
    assert same(sd["norm.weight"], w["Transformer/encoder_norm/scale"])
    assert same(sd["norm.bias"], w["Transformer/encoder_norm/bias"])
    for i in range(2):
        b, m_ = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = b + "MultiHeadDotProductAttention_1/"
        for j, t in enumerate(("query", "key", "value")):  # fused qkv rows: q, then k, then v
            assert same(sd[m_ + "attn.qkv.weight"][j * C : (j + 1) * C], w[f"{a}{t}/kernel"].reshape(C, C).T)
            assert same(sd[m_ + "attn.qkv.bias"][j * C : (j + 1) * C], w[f"{a}{t}/bias"].reshape(C))
        assert same(sd[m_ + "attn.proj.weight"], w[a + "out/kernel"].reshape(C, C).T)
        assert same(sd[m_ + "attn.proj.bias"], w[a + "out/bias"])
        assert same(sd[m_ + "norm1.weight"], w[b + "LayerNorm_0/scale"]) and same(
            sd[m_ + "norm1.bias"], w[b + "LayerNorm_0/bias"]
        )
        assert same(sd[m_ + "norm2.weight"], w[b + "LayerNorm_2/scale"]) and same(
            sd[m_ + "norm2.bias"], w[b + "LayerNorm_2/bias"]
        )
        assert same(sd[m_ + "mlp.fc1.weight"], w[b + "MlpBlock_3/Dense_0/kernel"].T)
        assert same(sd[m_ + "mlp.fc1.bias"], w[b + "MlpBlock_3/Dense_0/bias"])
        assert same(sd[m_ + "mlp.fc2.weight"], w[b + "MlpBlock_3/Dense_1/kernel"].T)
        assert same(sd[m_ + "mlp.fc2.bias"], w[b + "MlpBlock_3/Dense_1/bias"])
    assert sd["head.weight"].abs().sum() == 0 and sd["head.bias"].abs().sum() == 0  # zero_head


def test_npz_heads_are_head_major(tmp_path):
    """MSCA's head 0 must be npz head index 0: its query rows are kernel[:, 0, :]."""
    w = fake_npz()
    m = load_pretrained(create_model("msca_b16", **SMALL), save(tmp_path, w))
    q0 = w["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"][:, 0, :]  # (C, d)
    assert same(m.blocks[0].attn.qkv.weight[:12], q0.T)


def test_npz_keeps_head_when_asked(tmp_path):
    w = fake_npz(classes=5)
    m = load_pretrained(create_model("vit_b16", **SMALL), save(tmp_path, w), zero_head=False)
    assert same(m.head.weight, w["head/kernel"].T) and same(m.head.bias, w["head/bias"])


def test_npz_resamples_position_grid(tmp_path):
    w = fake_npz(grid=4)
    m = load_pretrained(create_model("vit_b16", **{**SMALL, "img_size": 48}), save(tmp_path, w))  # grid 6
    pos = w[POS]
    want = ndimage.zoom(pos[0, 1:].reshape(4, 4, 48), (6 / 4, 6 / 4, 1), order=1).reshape(1, 36, 48)
    assert m.pos_embed.shape == (1, 37, 48)
    assert same(m.pos_embed[:, :1], pos[:, :1])  # CLS kept
    torch.testing.assert_close(m.pos_embed[:, 1:].detach(), torch.from_numpy(want))


def test_bad_npz_names_every_key_and_both_shapes(tmp_path):
    w = fake_npz()
    del w["Transformer/encoderblock_1/LayerNorm_2/bias"]
    w["Transformer/encoderblock_2/LayerNorm_0/scale"] = np.zeros(48, np.float32)
    w["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel"] = np.zeros((48, 6, 8), np.float32)
    with pytest.raises(ValueError) as e:
        load_pretrained(create_model("msca_b16", **SMALL), save(tmp_path, w))
    msg = str(e.value)
    assert "missing: Transformer/encoderblock_1/LayerNorm_2/bias (model expects (48,))" in msg
    assert "unexpected: Transformer/encoderblock_2/LayerNorm_0/scale (48,)" in msg
    assert (
        "shape mismatch: Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel: "
        "checkpoint (48, 6, 8) vs model expects (48, 4, 12)"
    ) in msg


def test_b16_npz_layout_is_the_reference_table():
    with torch.device("meta"):
        L = npz_layout(create_model("msca_b16"))
    assert len(L) == 6 + 12 * 16
    a = "Transformer/encoderblock_11/MultiHeadDotProductAttention_1/"
    assert L["embedding/kernel"] == (16, 16, 3, 768) and L["embedding/bias"] == (768,)
    assert L["cls"] == (1, 1, 768) and L[POS] == (1, 197, 768)
    assert L["Transformer/encoder_norm/scale"] == L["Transformer/encoder_norm/bias"] == (768,)
    assert (
        L["Transformer/encoderblock_0/LayerNorm_0/scale"] == L["Transformer/encoderblock_11/LayerNorm_2/bias"] == (768,)
    )
    assert L[a + "query/kernel"] == L[a + "key/kernel"] == L[a + "value/kernel"] == (768, 12, 64)
    assert L[a + "query/bias"] == L[a + "value/bias"] == (12, 64)
    assert L[a + "out/kernel"] == (12, 64, 768) and L[a + "out/bias"] == (768,)
    assert L["Transformer/encoderblock_11/MlpBlock_3/Dense_0/kernel"] == (768, 3072)
    assert L["Transformer/encoderblock_11/MlpBlock_3/Dense_0/bias"] == (3072,)
    assert L["Transformer/encoderblock_11/MlpBlock_3/Dense_1/kernel"] == (3072, 768)
    assert L["Transformer/encoderblock_11/MlpBlock_3/Dense_1/bias"] == (768,)
    real = real_layout(depth=12, C=768, h=12, mlp=3072, p=16, grid=14, classes=21843)
    assert L == {k: s for k, s in real.items() if not k.startswith(("head/", "pre_logits/"))}


def test_torch_state_dict_round_trip(tmp_path):
    src = create_model("msca_b16", **SMALL)
    torch.save({"model": src.state_dict()}, tmp_path / "ckpt.pt")
    full = load_pretrained(create_model("msca_b16", **SMALL), tmp_path / "ckpt.pt", zero_head=False)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), src.state_dict().values()))
    tuned = load_pretrained(create_model("msca_b16", **SMALL), tmp_path / "ckpt.pt")
    assert tuned.head.weight.abs().sum() == 0 and torch.equal(tuned.pos_embed, src.pos_embed)


def test_timm_checkpoint_with_other_head_and_grid():
    """A timm in21k-style dict (1000-class head, pre_logits, grid 4) fine-tunes into a 5-class grid-6 model."""
    src = create_model("vit_b16", **{**SMALL, "num_classes": 1000}).state_dict()
    src["pre_logits.fc.weight"] = torch.zeros(48, 48)
    m = load_state_dict(create_model("msca_b16", **{**SMALL, "img_size": 48}), src)
    assert m.pos_embed.shape == (1, 37, 48) and torch.equal(m.pos_embed[:, 0], src["pos_embed"][:, 0])
    assert torch.equal(m.blocks[1].attn.qkv.weight, src["blocks.1.attn.qkv.weight"])
    with pytest.raises(ValueError, match=r"head.weight: checkpoint \(1000, 48\) vs model expects \(5, 48\)"):
        load_state_dict(create_model("msca_b16", **SMALL), src, zero_head=False)
    src["blocks.0.mlp.fc1.weight"] = torch.zeros(96, 48)
    del src["norm.bias"]
    with pytest.raises(ValueError) as e:
        load_state_dict(create_model("msca_b16", **SMALL), src)
    assert "missing: norm.bias (model expects (48,))" in str(e.value)
    assert "blocks.0.mlp.fc1.weight: checkpoint (96, 48) vs model expects (192, 48)" in str(e.value)
