"""Evaluate job: the final multi-view test (data.test_clips x data.test_crops views per video) of a run's
weights; writes results.json, confusion.png and curves.png to the run home."""

from __future__ import annotations

import io
import json
import logging

import torch

from jobs.base import Job
from msca.data import build_dataset
from msca.runstate.home import RunHome
from msca.runstate.metrics import read_metrics
from msca.runtime import dist, preemption
from msca.runtime.collective import agreed
from msca.runtime.precision import DTYPES
from msca.runtime.preemption import EvaluationInterrupted, StopRequested
from msca.training.build import build_model
from msca.training.evaluation import evaluate_dataset

log = logging.getLogger(__name__)


def evaluate_run(cfg, home: RunHome, forward=None) -> dict:
    """Test-split evaluation with `forward` (the trained engine, in eval mode) or, when None, the run's
    model.pt (into a model built without its pretrained file: model.pt replaces every weight)."""
    dataset = build_dataset(cfg.data, "test", seed=cfg.seed, uint8=True)
    device, dtype = dist.device(), DTYPES[cfg.deepspeed.precision]
    if forward is None:
        model = build_model(cfg.model, dataset.num_classes, cfg.store.endpoint_url, pretrained=False)
        state = torch.load(io.BytesIO(home.store.read_bytes("model.pt")), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        forward = model.to(device=device, dtype=dtype).eval()
    try:
        res = evaluate_dataset(forward, dataset, cfg, device, dtype, stop=preemption.install().agreed)
    except EvaluationInterrupted as stop:  # rerun by the relaunch: training is done, its weights committed
        raise StopRequested(-1, stop.signum, during="during the final evaluation") from None
    res.update(run=home.name, model=cfg.model.name, views=f"{cfg.data.test_clips}x{cfg.data.test_crops}")
    agreed(lambda: write_results(home, res, plots=cfg.eval.plots) if dist.is_main() else None, "writing results.json")
    if dist.is_main():
        log.info(
            "test %s: top-1 %.2f%% top-5 %.2f%% on %d videos (%s views) -> %s",
            cfg.model.name,
            100 * res["top1"],
            100 * res["top5"],
            res["num_videos"],
            res["views"],
            home.store.url("results.json"),
        )
    return res


def write_results(home: RunHome, res: dict, plots: bool = True) -> None:
    home.store.write_text("results.json", json.dumps(res, indent=2))
    if not plots:
        return
    from msca.report.plots import plot_confusion, plot_curves

    local = home.local_dir
    plot_confusion(
        res["confusion"],
        res["class_names"],
        local / "confusion.png",
        title=f"{res['model']}: top-1 {100 * res['top1']:.1f}%",
    )
    plot_curves(read_metrics(home.store), local / "curves.png", title=f"{home.name} ({res['model']})")
    home.sync_up("confusion.png")
    home.sync_up("curves.png")


class Evaluate(Job):
    """Every rank reads the run's config and evaluates its shard of the test videos."""

    def __call__(self) -> dict:
        home = self.start()
        return evaluate_run(self.config(home), home)
