"""The laptop-small run that the launch benchmarks and the tests start for real: 4 synthetic classes of 6 videos
(16 frames of 40x52), 32-pixel crops, and a 2-block, 32-wide model of whichever kind. Seconds per run on a CPU,
yet every code path of a real one (data generation, DeepSpeed, checkpoints, evaluation)."""

TINY_DATA = [
    "data.synthetic.classes=4",
    "data.synthetic.videos_per_class=6",
    "data.synthetic.val_videos_per_class=2",
    "data.synthetic.frames=16",
    "data.synthetic.height=40",
    "data.synthetic.width=52",
    "data.crop_size=32",
    "data.train_short_side=[36,44]",
    "data.test_short_side=36",
    "data.stride=2",
    "data.num_workers=0",
]

TINY_MODEL = ["model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.shift_div=2"]

QUIET = ["train.progress=false", "train.log_every=1"]  # no progress bar; every step in metrics.jsonl
