"""Train job: every rank reads the run's config, joins the process group, trains, then (optionally)
evaluates. Rank 0 holds the run's lease and writes this attempt's record in the ledger for the whole job."""

from __future__ import annotations

import io
import logging

import torch

from jobs.base import Job
from jobs.evaluate import evaluate_run
from msca.runstate.session import RunSession
from msca.runtime import dist
from msca.runtime.collective import agreed
from msca.runtime.preemption import StopRequested
from msca.training.trainer import Trainer

log = logging.getLogger(__name__)


class Train(Job):
    """Every rank trains from the newest checkpoint in the run home (or from scratch), saves the final
    weights, then evaluates them when eval.at_end."""

    def __call__(self) -> dict:
        home = self.start()
        cfg = self.config(home)
        session = agreed(
            lambda: RunSession.open(home, self.hosts, dist.world_size()) if dist.is_main() else None,
            "taking the run's lease",
        )
        try:
            result = self.train(cfg, session.fenced(home) if session is not None else home, session)
        except StopRequested:
            if session is not None:
                session.close("stopped")
            raise
        except BaseException as err:
            if session is not None:
                session.close("failed", f"{type(err).__name__}: {err}")
            raise
        if session is not None:
            session.close("finished")
        return result

    def train(self, cfg, home, session) -> dict:
        trainer = Trainer(cfg, home, session)
        try:
            return self.fit_and_test(trainer, cfg, home)
        finally:
            trainer.close()

    def fit_and_test(self, trainer, cfg, home) -> dict:
        state = trainer.fit()
        weights = trainer.final_weights()

        def save_weights():
            if dist.is_main():
                buf = io.BytesIO()
                torch.save(weights, buf)
                home.store.write_bytes("model.pt", buf.getvalue())

        agreed(save_weights, "writing model.pt")
        result = {"step": state.step, "epoch": state.epoch}
        if cfg.eval.at_end:  # the engine's own weights (DeepSpeedEngine.eval() returns None, not the engine)
            trainer.engine.eval()
            result.update(evaluate_run(cfg, home, forward=trainer.engine))
        return result
