"""The synthetic set: Kinetics layout, deterministic, and its class is in the change over time, not in any frame.

Both kinds: "hue" (colours cycling forwards/backwards, the default) and "scroll" (texture moving up/down)."""

import dataclasses

import numpy as np
import pytest
import torch

from msca.data import DataConfig, SyntheticConfig, build_dataset
from msca.data.lists import parse_list
from msca.data.synthetic import class_names, class_velocity, generate, hue_class_names, main
from msca.storage import open_store

CFG = SyntheticConfig(
    classes=4, videos_per_class=10, val_videos_per_class=6, frames=16, height=32, width=40, kind="scroll"
)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for kind in ("scroll", "hue"):
        out[kind] = tmp_path_factory.mktemp(kind)
        generate(open_store(str(out[kind])), dataclasses.replace(CFG, kind=kind))
    return out


@pytest.fixture
def root(roots):
    return roots["scroll"]


def data_cfg(root, **kw):
    return DataConfig(
        root=str(root),
        num_frames=8,
        stride=2,
        crop_size=32,
        train_short_side=[36, 44],
        test_short_side=36,
        val_clips=1,
        test_crops=1,
        **kw,
    )


def test_layout_and_lists(root):
    vl = parse_list((root / "trainValTest" / "train.txt").read_text())
    assert len(vl.records) == 40 and vl.class_names is None
    first = vl.records[0]
    assert first.path.startswith("frames_train/down_1px/") and first.num_frames == 16 and first.label == 0
    assert (root / first.path / "img_00001.jpg").exists() and (root / first.path / "img_00016.jpg").exists()
    assert (root / "trainValTest" / "classes.txt").read_text().split() == class_names(4)
    assert "," in (root / "trainValTest" / "val.txt").read_text().splitlines()[0]
    assert class_names(4) == ["down_1px", "up_1px", "down_3px", "up_3px"]
    assert [class_velocity(c, 1.0) for c in range(4)] == [1, -1, 3, -3]
    assert hue_class_names(4, 0.01) == ["hue_fwd_0.01", "hue_back_0.01", "hue_fwd_0.03", "hue_back_0.03"]
    assert SyntheticConfig().kind == "hue"


def test_deterministic_and_cli(root, tmp_path):
    assert (
        main(
            [
                str(tmp_path / "cli"),
                "--classes",
                "4",
                "--videos-per-class",
                "10",
                "--val-videos-per-class",
                "6",
                "--frames",
                "16",
                "--height",
                "32",
                "--width",
                "40",
                "--kind",
                "scroll",
            ]
        )
        == 0
    )
    rel = "frames_val/up_3px/val_003_00002/img_00007.jpg"
    assert (tmp_path / "cli" / rel).read_bytes() == (root / rel).read_bytes()


def _vertical_shift(a, b):
    """Vertical displacement from a to b (pixels, + = down) by phase correlation of grey frames."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2(a * win), np.fft.fft2(b * win)
    r = np.fft.ifft2(fb * np.conj(fa) / (np.abs(fb * np.conj(fa)) + 1e-9)).real
    dy = np.unravel_index(np.argmax(r), r.shape)[0]
    return dy if dy < a.shape[0] // 2 else dy - a.shape[0]


def _hue_turn(a, b):
    """Rotation (degrees) of the colours from a to b about the grey axis, both (3, H, W)."""

    def uv(x):
        return (x[0] - x[1]) / np.sqrt(2), (x[0] + x[1] - 2 * x[2]) / np.sqrt(6)

    (u1, v1), (u2, v2) = uv(a), uv(b)
    return np.degrees(np.arctan2((u1 * v2 - v1 * u2).sum(), (u1 * u2 + v1 * v2).sum()))


@pytest.mark.parametrize("kind", ["scroll", "hue"])
def test_class_is_readable_across_time(roots, kind):
    """Through the real pipeline (JPEG, random scale, crop, flip), the change between frames gives the class:
    scroll: vertical shift per step (2 vs 6 px x scale); hue: colour turn per step (18 vs 54 degrees)."""
    ds = build_dataset(data_cfg(roots[kind], color_jitter_prob=0.0), "train", seed=0)
    correct = 0
    for i in range(0, 40, 2):
        s = ds[(0, i)]
        v = s["video"].numpy()  # (T, 3, c, c)
        if kind == "scroll":
            grey = v.mean(1)
            step = np.median([_vertical_shift(grey[t], grey[t + 1]) for t in range(7)])
            fast = abs(step) > 4.5
        else:
            step = np.median([_hue_turn(v[t], v[t + 1]) for t in range(7)])
            fast = abs(step) > 36.0
        correct += (0 if step > 0 else 1) + (2 if fast else 0) == s["label"]
    assert correct >= 18  # of 20


@pytest.mark.parametrize("kind", ["scroll", "hue"])
def test_frame_wise_model_is_at_chance(roots, kind):
    """A classifier that sees frames one at a time (logits averaged over the clip) learns nothing that
    transfers: every frame has the same distribution in every class."""

    def frames(split):
        ds = build_dataset(data_cfg(roots[kind], flip=False, color_jitter_prob=0.0), split, seed=0)
        xs, ys = [], []
        for i in range(len(ds)):
            v = ds[(0, i)]["video"] if split == "train" else ds[i]["video"][0]  # (T, 3, c, c)
            feats = torch.nn.functional.avg_pool2d(v, 4).flatten(1)  # (T, 3*8*8) per-frame features
            xs.append(torch.cat([feats, feats**2], 1))
            ys.append(ds.records[i].label)
        return torch.stack(xs), torch.tensor(ys)  # (N, T, F), (N,)

    xtr, ytr = frames("train")
    xva, yva = frames("val")
    mu, sd = xtr.mean((0, 1)), xtr.std((0, 1)) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[-1], 4)
    opt = torch.optim.Adam(lin.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xtr).mean(1), ytr)  # frame logits averaged over T
        loss.backward()
        opt.step()
    acc = (lin(xva).mean(1).argmax(1) == yva).float().mean().item()
    print(f"frame-wise val accuracy ({kind}): {acc:.2f}")
    assert acc <= 0.5  # chance 0.25; 24 val videos


def test_existing_set_with_other_settings_is_refused(roots):
    """A set generated with other settings is never silently reused (the run's config.yaml would lie)."""
    from msca.data.synthetic import ensure_synthetic

    store = open_store(str(roots["hue"]))
    assert ensure_synthetic(store, dataclasses.replace(CFG, kind="hue")) is False  # same settings: reused
    with pytest.raises(ValueError) as err:
        ensure_synthetic(store, dataclasses.replace(CFG, kind="hue", hue_speed=0.05, frames=20))
    msg = str(err.value)
    assert "data.synthetic.hue_speed=0.05 (found 0.025)" in msg and "data.synthetic.frames=20 (found 16)" in msg
    assert "\n" not in msg and "data.root" in msg
