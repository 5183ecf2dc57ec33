"""VideoViT and its temporal variants against slow, obviously-correct ports of the reference code."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from msca.model import MODEL_NAMES, SHIFTS, Attention, HeadShift, build, create_model, temporal_shift

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=7)  # N = 17 tokens


def tiny(name="msca_b16", **kw):
    """Tiny model with O(1) random weights, so attention is far from uniform and every head matters."""
    m = create_model(name, **{**TINY, **kw}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def video(B=2, T=3, size=32):
    return torch.randn(B, T, 3, size, size)


# ---- slow reference: the released code's zeros_like + slice copies, generalised ------------------------------


def ref_shift(t, T, future, past, dim):
    """t (B*T, ...); along `dim` of the (B, T, ...) view, `future` positions copy frame t+1, `past` t-1."""
    t5 = t.reshape(-1, T, *t.shape[1:])
    out = torch.zeros_like(t5)

    def ix(ts, cs):
        return (slice(None), ts) + (slice(None),) * (dim - 2) + (cs,)

    rest = [i for i in range(t5.shape[dim]) if i not in future and i not in past]
    out[ix(slice(0, T - 1), list(future))] = t5[ix(slice(1, T), list(future))]
    out[ix(slice(1, T), list(past))] = t5[ix(slice(0, T - 1), list(past))]
    out[ix(slice(None), rest)] = t5[ix(slice(None), rest)]
    return out.reshape(t.shape)


def ref_attention(attn, x, T, temporal, shift, shift_div):  # x (B*T, N, C)
    BT, N, C = x.shape
    h = attn.num_heads
    d = C // h
    q, k, v = [t.reshape(BT, N, h, d).permute(0, 2, 1, 3) for t in attn.qkv(x).chunk(3, dim=-1)]
    if temporal == "msca":
        f = h // shift_div
        future, past, dim = range(0, f), range(h - f, h), 2  # dims of (B, T, h, N, d)
    else:
        f = (N - 1) // shift_div
        future, past, dim = range(1, 1 + f), range(N - f, N), 3
    q, k, v = [ref_shift(t, T, future, past, dim) if n in shift else t for n, t in zip("qkv", (q, k, v))]
    a = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)
    return attn.proj((a @ v).permute(0, 2, 1, 3).reshape(BT, N, C))


def ref_token_shift(x, T, shift_div):  # TokShift's shift_tk on (B*T, N, C)
    BT, N, C = x.shape
    x = x.view(BT // T, T, N, C)
    fold = C // shift_div
    out = torch.zeros_like(x)
    out[:, :-1, 0, :fold] = x[:, 1:, 0, :fold]
    out[:, 1:, 0, fold : 2 * fold] = x[:, :-1, 0, fold : 2 * fold]
    out[:, :, 0, 2 * fold :] = x[:, :, 0, 2 * fold :]
    out[:, :, 1:] = x[:, :, 1:]
    return out.view(BT, N, C)


def ref_forward(model, vid, temporal, shift="kv", shift_div=12):
    B, T = vid.shape[:2]

    def ln(m, x):
        return F.layer_norm(x, m.weight.shape, m.weight, m.bias, eps=1e-6)

    pe = model.patch_embed.proj
    x = F.conv2d(vid.flatten(0, 1), pe.weight, pe.bias, stride=pe.stride).flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], 1) + model.pos_embed  # (B*T, N, C)
    for blk in model.blocks:
        if temporal == "tokenshift":
            x = ref_token_shift(x, T, shift_div)
        if temporal in ("msca", "msca_patch"):
            x = x + ref_attention(blk.attn, ln(blk.norm1, x), T, temporal, shift, shift_div)
        else:
            a = blk.attn
            x = x + ref_attention(a, ln(blk.norm1, x), T, "msca", "", 2)  # no shifted tensor = plain MSA
        if temporal == "tokenshift":
            x = ref_token_shift(x, T, shift_div)
        m = blk.mlp
        x = x + m.fc2(F.gelu(m.fc1(ln(blk.norm2, x))))
    logits = model.head(ln(model.norm, x)[:, 0])  # (B*T, K)
    return logits.view(B, T, -1).mean(1)


# ---- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("T", [1, 3])
def test_shapes(name, T):
    m = tiny(name, shift_div=2)
    x = video(2, T)
    assert m(x).shape == (2, 7)
    assert m.forward_features(x).shape == (2, T, 48)


@pytest.mark.parametrize("temporal", ["msca", "msca_patch"])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("shift_div", [2, 3])
def test_msca_matches_reference(temporal, shift, shift_div):
    m = tiny(temporal=temporal, shift=shift, shift_div=shift_div)
    x = video(2, 3)
    torch.testing.assert_close(m(x), ref_forward(m, x, temporal, shift, shift_div), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("temporal,shift_div", [("none", 12), ("tokenshift", 4), ("tokenshift", 2)])
def test_baselines_match_reference(temporal, shift_div):
    m = tiny(temporal=temporal, shift_div=shift_div)
    x = video(2, 3)
    torch.testing.assert_close(m(x), ref_forward(m, x, temporal, shift_div=shift_div), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("temporal,shift_div", [("msca", 5), ("msca_patch", 17), ("tokenshift", 49)])
def test_fold_zero_is_exactly_framewise(temporal, shift_div):
    vit, m = tiny("vit_b16"), tiny(temporal=temporal, shift="qkv", shift_div=shift_div)
    m.load_state_dict(vit.state_dict())
    x = video(2, 3)
    assert torch.equal(m(x), vit(x))


def test_framewise_vit_treats_frames_independently():
    m = tiny("vit_b16")
    x = video(2, 3)
    per_frame = torch.stack([m(x[:, t : t + 1]) for t in range(3)], 1).mean(1)  # T=1 calls = the image ViT
    torch.testing.assert_close(m(x), per_frame, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shift", SHIFTS)
def test_t1_msca_is_vit_with_shifted_heads_zeroed(shift):
    """At T=1 every shifted head is at a clip boundary, so it sees zeros: MSCA equals the image ViT whose
    shifted heads' q/k/v projections (rows of the fused qkv) are zero."""
    m = tiny(shift=shift, shift_div=4)  # 4 heads: head 0 reads t+1, head 3 reads t-1
    vit = tiny("vit_b16")
    vit.load_state_dict(m.state_dict())
    C, d = 48, 12
    with torch.no_grad():
        for blk in vit.blocks:
            for i, name in enumerate("qkv"):
                if name in shift:
                    for head in (0, 3):
                        rows = slice(i * C + head * d, i * C + (head + 1) * d)
                        blk.attn.qkv.weight[rows] = 0
                        blk.attn.qkv.bias[rows] = 0
    x = video(2, 1)
    torch.testing.assert_close(m(x), vit(x), atol=1e-5, rtol=1e-4)
    plain = tiny("vit_b16")
    plain.load_state_dict(m.state_dict())
    assert (m(x) - plain(x)).abs().max() > 1e-2  # the zeroed heads matter: the check is not vacuous


def test_temporal_shift_values_and_zero_boundaries():
    x = torch.arange(1, 1 + 2 * 3 * 5, dtype=torch.float).view(2, 3, 5)  # (B, T, S)
    y = temporal_shift(x, slice(0, 1), slice(3, 5), dim=2)
    for t in range(3):
        assert y[:, t, 0].tolist() == (x[:, t + 1, 0].tolist() if t < 2 else [0, 0])
        assert y[:, t, 3:].tolist() == (x[:, t - 1, 3:].tolist() if t > 0 else [[0, 0], [0, 0]])
        assert torch.equal(y[:, t, 1:3], x[:, t, 1:3])
    assert temporal_shift(x, slice(0, 0), slice(5, 5), dim=2) is x  # fold 0: untouched, no copy
    one = temporal_shift(x[:, :1], slice(0, 1), slice(4, 5), dim=2)  # T = 1: both moved parts are zeros
    assert one[..., 0].abs().sum() == 0 and one[..., 4].abs().sum() == 0 and torch.equal(one[..., 1:4], x[:, :1, 1:4])


@pytest.mark.parametrize("future,past,dim", [((0, 1), (3, 5), 2), ((0, 2), (2, 4), -1), ((1, 2), (4, 5), 3)])
def test_temporal_shift_gradient_is_exact(future, past, dim):
    x = torch.randn(2, 3, 5, 5, dtype=torch.double, requires_grad=True)

    def f(x):
        return temporal_shift(x, slice(*future), slice(*past), dim)

    assert torch.autograd.gradcheck(f, (x,)) and torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize(
    "temporal,shift,shift_div", [("msca", "kv", 4), ("msca_patch", "qkv", 3), ("tokenshift", "kv", 4)]
)
def test_parameter_gradients_match_reference(temporal, shift, shift_div):
    m = tiny(temporal=temporal, shift=shift, shift_div=shift_div)
    x = video(2, 3)
    got = torch.autograd.grad(m(x).square().sum(), list(m.parameters()))
    want = torch.autograd.grad(ref_forward(m, x, temporal, shift, shift_div).square().sum(), list(m.parameters()))
    for (n, _), g, w in zip(m.named_parameters(), got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-3, msg=n)


def test_head_shift_boundaries_and_no_wraparound():
    attn = Attention(48, 4, temporal=HeadShift("kv", 4)).eval()  # head 0 from t+1, head 3 from t-1
    attn.proj = torch.nn.Identity()  # look at per-head outputs, (B, T, N, h*d)
    x = torch.randn(2, 3, 17, 48)
    y = attn(x).unflatten(-1, (4, 12))  # (B, T, N, h, d)
    assert y[:, 2, :, 0].abs().sum() == 0  # last frame: future head sees zero K,V -> zero output
    assert y[:, 0, :, 3].abs().sum() == 0  # first frame: past head sees zero K,V -> zero output
    assert y[:, :2, :, 0].abs().min() > 0 and y[:, 1:, :, 3].abs().min() > 0
    x2 = x.clone()
    x2[:, 0] += 1.0  # touching frame 0 may only reach frames 0 and 1 (frame 1's past head)
    y2 = attn(x2).unflatten(-1, (4, 12))
    assert torch.equal(y2[:, 2], y[:, 2])  # no wrap-around from frame 0 into frame T-1
    assert torch.equal(y2[:, 1, :, :3], y[:, 1, :, :3]) and not torch.equal(y2[:, 1, :, 3], y[:, 1, :, 3])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name):
    m = tiny(name, shift_div=2).train()
    m(video(2, 3)).logsumexp(-1).sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_b16_parameter_count():
    with torch.device("meta"):
        for name in MODEL_NAMES:
            assert sum(p.numel() for p in create_model(name).parameters()) == 86_106_256, name


def test_timm_parameter_names():
    names = set(dict(tiny().named_parameters()))
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    for i in range(2):
        expected |= {
            f"blocks.{i}.{p}.{w}"
            for p in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            for w in ("weight", "bias")
        }
    assert names == expected


def test_presets_and_overrides():
    m = tiny("msca_b16", shift="q", num_frames=16)
    assert (m.temporal, m.shift, m.shift_div, m.num_frames) == ("msca", "q", 12, 16)
    assert tiny("tokenshift_b16").shift_div == 4
    assert build(dict(name="vit_b16", **TINY, shift=None)).temporal == "none"


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="msca_b16"):
        create_model("msca_b32")
    with pytest.raises(ValueError, match="kv, k, v, q, qk, qv, qkv"):
        tiny(shift="vk")
    with pytest.raises(ValueError, match="tokenshift"):
        tiny(temporal="tsm")
    with pytest.raises(ValueError, match="shift_div"):
        tiny(shift_div=1)
    with pytest.raises(TypeError, match="num_heads"):
        create_model("vit_b16", heads=3)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        tiny()(torch.randn(2, 3, 32, 32))


def test_drop_path_and_dropout_train_only():
    m = tiny(drop_path_rate=0.5, attn_drop=0.1, proj_drop=0.1)
    x = video(2, 2)
    assert torch.equal(m(x), m(x))  # eval: deterministic
    m.train()
    assert not torch.equal(m(x), m(x))
    assert copy.deepcopy(m).eval()(x).shape == (2, 7)
