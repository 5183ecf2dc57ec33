"""Train job: every rank reads the run's config, joins the process group, trains, then (optionally)
evaluates."""
from __future__ import annotations

import io
import logging

import torch

from msca import dist
from msca.train import Trainer

from jobs.base import Job
from jobs.evaluate import evaluate_run

log = logging.getLogger(__name__)


class Train(Job):
    """Every rank trains from the newest checkpoint in the run home (or from scratch), saves the final
    weights, then evaluates them when eval.at_end."""

    def __call__(self) -> dict:
        home = self.start()
        cfg = home.config()
        trainer = Trainer(cfg, home)
        state = trainer.fit()
        weights = trainer.final_weights()
        if dist.is_main():
            buf = io.BytesIO()
            torch.save(weights, buf)
            home.store.write_bytes("model.pt", buf.getvalue())
        dist.barrier()
        result = {"step": state.step, "epoch": state.epoch}
        if cfg.eval.at_end:
            result.update(evaluate_run(cfg, home, forward=trainer.engine.eval()))
        return result
