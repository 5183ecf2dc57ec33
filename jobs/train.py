"""Train job: every rank reads the run's config, joins the process group, trains, then (optionally)
evaluates. Stateless apart from the run URI, so a requeued or retried job simply runs it again and
resumes from the run home."""
from __future__ import annotations

import io
import logging

import torch

from msca import dist
from msca.run_home import RunHome
from msca.train import Trainer

from jobs.evaluate import evaluate_run

log = logging.getLogger(__name__)


class Train:
    def __init__(self, run_uri: str, endpoint_url: str | None = None):
        self.run_uri, self.endpoint_url = run_uri, endpoint_url

    def __call__(self) -> dict:
        dist.setup_logging()
        dist.init_distributed()
        home = RunHome(self.run_uri, self.endpoint_url)
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
