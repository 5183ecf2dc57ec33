"""Trainer: builds model, data and the DeepSpeed engine from a resolved config, then trains and validates.

Every rank runs the same code. Progress is counted in optimizer steps and in samples of the epoch's global order
consumed (all ranks together), with a global batch fixed for the run (msca.training.batching): that is all a
checkpoint needs for the sampler to resume mid-epoch exactly, on the same or another number of ranks.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from msca.config import identity_hash
from msca.data import ResumableDistributedSampler, build_dataset, build_loader, to_model_input
from msca.runstate.checkpoint import CheckpointManager
from msca.runstate.home import RunHome
from msca.runstate.lease import LeaseLost
from msca.runstate.metrics import MetricsLogger
from msca.runstate.session import RunSession
from msca.runtime import dist, failure
from msca.runtime.collective import agreed, from_main
from msca.runtime.precision import DTYPES
from msca.runtime.preemption import EvaluationInterrupted, StopRequested
from msca.runtime.preemption import install as install_stop_flag
from msca.training.batching import resolve as resolve_batching
from msca.training.build import build_model
from msca.training.evaluation import evaluate_dataset
from msca.training.optim import build_optimizer, build_scheduler, deepspeed_config

log = logging.getLogger(__name__)

FENCED = 1 << 20  # agreed at a step boundary like a signal number, above all of them: rank 0 lost its lease


SAMPLE_TRACE = "MSCA_SAMPLE_TRACE"  # a folder: every rank appends the dataset indices of each micro-batch it trains


@dataclass
class TrainState:
    """What a checkpoint must carry beyond DeepSpeed's own state, in units that do not depend on the world size."""

    epoch: int = 0  # current epoch
    samples: int = 0  # samples of `epoch`'s global order consumed, all ranks together
    step: int = 0  # optimizer steps taken
    global_batch: int = 0  # clips per optimizer step, fixed for the run

    @classmethod
    def restore(cls, saved: dict, world_size: int) -> "TrainState":
        """From a checkpoint's trainer state; one written before global units counted `position` per rank."""
        saved = dict(saved)
        if "position" in saved:
            saved["samples"] = saved.pop("position") * world_size
        return cls(**saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: DictConfig, home: RunHome, session: RunSession | None = None):
        """`session`: rank 0's lease and attempt record (None on other ranks and in tools)."""
        import deepspeed

        self.cfg, self.home, self.session = cfg, home, session
        self.device = dist.device()
        self.dtype = DTYPES[cfg.deepspeed.precision]
        seed_everything(cfg.seed)  # identical initial weights on every rank

        # uint8 clips: normalised on the device (to_model_input), 4x less pinned memory and copy traffic
        self.train_set = build_dataset(cfg.data, "train", seed=cfg.seed, uint8=True)
        self.val_set = build_dataset(cfg.data, "val", seed=cfg.seed, uint8=True) if cfg.train.val_every else None
        b = self.batching = resolve_batching(
            cfg.train.global_batch, cfg.train.grad_accum, cfg.data.batch_size, dist.world_size(), self._recorded(home)
        )
        self.steps_per_epoch = len(self.train_set) // b.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {len(self.train_set)} clips: fewer than one global batch of {b.global_batch} "
                f"(data.batch_size {b.batch_size} x {b.grad_accum} accumulation x {b.world_size} ranks). "
                "Lower train.global_batch or data.batch_size, or use fewer ranks."
            )
        self.micro_per_epoch = self.steps_per_epoch * b.grad_accum  # micro-batches per rank
        self.sampler = ResumableDistributedSampler(
            len(self.train_set),
            dist.rank(),
            dist.world_size(),
            seed=cfg.seed,
            shuffle=True,
            drop_last=True,
            epoch_len=self.steps_per_epoch * b.global_batch,
        )
        self.loader = build_loader(
            self.train_set,
            self.sampler,
            cfg.data.batch_size,
            cfg.data.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
        )

        model = build_model(cfg.model, self.train_set.num_classes, cfg.store.endpoint_url)
        seed_everything(cfg.seed + 1 + dist.rank())  # from here on, per-rank streams (drop-path, dropout)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, self.steps_per_epoch)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, b.grad_accum)
        )
        dist.setup_logging()  # DeepSpeed resets its logger on import; keep ours
        self.ckpt = CheckpointManager.from_config(
            cfg.checkpoint,
            self.engine,
            home,
            config_hash=identity_hash(cfg),
            before_commit=self._before_commit,
            on_commit=self._on_commit,
            fence=session.lease.fence if session is not None else None,
        )
        t_restore = time.perf_counter()
        restored = self.ckpt.load_latest()  # resume is never a flag: every start looks for a checkpoint
        self.state = TrainState.restore(restored, self.ckpt.restored_world) if restored else TrainState()
        self.state.global_batch = b.global_batch
        self.stop = install_stop_flag()  # normally already installed by the job entry
        # the store's history up to the restored step; anything after it is recomputed
        self.metrics = MetricsLogger(
            home.local_dir,
            home.store,
            resume_step=self.state.step,
            enabled=dist.is_main(),
            redone=self._redone(),
            may_write=self._holds_lease,
        )
        self.step_s = 0.0  # wall time inside training steps (the attempt ledger's productive time)
        self.clips_per_step = b.global_batch
        self.trace = _sample_trace()
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        if session is not None:
            session.ledger.restored(self.state.step, time.perf_counter() - t_restore, self.total_steps)
        log.info(
            "model %s (%.2fM params) | %d train clips, %d ranks x %d clips x %d accum = %d per step -> %d steps/epoch, "
            "%d steps",
            cfg.model.name,
            sum(p.numel() for p in model.parameters()) / 1e6,
            len(self.train_set),
            dist.world_size(),
            b.batch_size,
            b.grad_accum,
            b.global_batch,
            self.steps_per_epoch,
            self.total_steps,
        )

    def _recorded(self, home: RunHome) -> int | None:
        """The global batch of the run's newest checkpoint (None: none yet), read before the engine exists since
        the engine's accumulation depends on it; checkpoints from before global units imply it."""
        manifest = from_main(lambda: CheckpointManager(None, home).newest_manifest(), "reading the newest checkpoint")
        if manifest is None:
            return None
        trainer = manifest.get("trainer") or {}
        return trainer.get("global_batch") or (
            self.cfg.data.batch_size * self.cfg.train.grad_accum * manifest["world_size"]
        )

    def _redone(self) -> tuple:
        """Record kinds the resumed run logs again at the restored step: a checkpoint saved at an epoch's last
        step, inside the loop, comes before that epoch's validation, which therefore runs (and logs) again."""
        epoch_done = self.state.samples >= self.steps_per_epoch * self.batching.global_batch
        return ("val",) if self.state.step and epoch_done else ()

    # ----------------------------------------------------------------------------------------- training
    def loss(self, batch) -> torch.Tensor:
        data = self.cfg.data
        video = to_model_input(batch["video"], self.device, self.dtype, data.mean, data.std)  # (B, T, 3, H, W)
        label = batch["label"].to(self.device, non_blocking=True)  # (B,)
        logits = self.engine(video).float()  # (B, K)
        return F.cross_entropy(logits, label, label_smoothing=self.cfg.train.label_smoothing)

    def fit(self) -> TrainState:
        cfg, state = self.cfg, self.state
        progress = self._progress_bar()
        t_start, first_step = time.perf_counter(), state.step
        self._stop_if_requested()  # a signal during start-up (model build, restore) ends it here, cleanly
        if self.session is not None:
            self.session.ledger.first_step()  # start-up and restore end here; step time starts
        while state.step < self.total_steps and state.epoch < cfg.train.epochs:
            self.sampler.set_epoch(state.epoch, start=state.samples)  # the loader's workers persist
            self.engine.train()
            accum, micro_clips = self.batching.grad_accum, self.batching.micro_clips
            window, t0, micro = [], time.perf_counter(), state.samples // micro_clips
            t_mark = time.perf_counter()  # the step's clock includes waiting for its batch
            for batch in self.loader:
                if micro >= self.micro_per_epoch:
                    break
                if self.trace is not None:
                    self.trace(state, batch)
                loss = self.loss(batch)
                self.engine.backward(loss)
                self.engine.step()
                window.append(loss.item())
                micro += 1
                state.samples += micro_clips
                if micro % accum:
                    continue
                state.step += 1
                failure.pause_point(state.step)
                self.step_s += time.perf_counter() - t_mark
                if self.session is not None:
                    self.session.ledger.progress(state.step, self.step_s)
                if progress is not None:
                    progress.update(1)
                    clips_s = (state.step - first_step) * self.clips_per_step / (time.perf_counter() - t_start)
                    progress.set_postfix(
                        epoch=state.epoch + 1, loss=f"{window[-1]:.3f}", clips_s=f"{clips_s:.1f}", refresh=False
                    )
                if state.step % cfg.train.log_every == 0 or state.step == self.total_steps:
                    t0 = self._log_train(window, t0)
                    window = []
                self.ckpt.maybe_save(state.step, asdict(state))
                self.ckpt.commit_if_ready()
                self._stop_if_requested()
                if state.step >= self.total_steps:
                    break
                t_mark = time.perf_counter()
            if micro >= self.micro_per_epoch:  # epoch finished (not cut by max_steps)
                state.epoch += 1
                state.samples = 0
                if cfg.train.val_every and state.epoch % cfg.train.val_every == 0:
                    self.validate()
                if cfg.checkpoint.every_epochs and state.epoch % cfg.checkpoint.every_epochs == 0:
                    self.ckpt.save(state.step, asdict(state))
        self.ckpt.save(state.step, asdict(state))  # the final state (a no-op if just saved)
        self.ckpt.wait()
        if progress is not None:
            progress.close()
        self.sync_metrics()
        return state

    def _stop_if_requested(self) -> None:
        """All ranks agree at this step boundary: on a stop, commit a checkpoint of exactly this state; when rank
        0 can no longer prove it holds the run's lease, every rank ends here without writing anything more."""
        signum = self.stop.agreed(0 if self._holds_lease(prove=True) else FENCED)
        if signum == FENCED:
            why = self.session.lease.why_not("training") if self.session is not None else ""
            raise LeaseLost(why or "rank 0 can no longer prove it holds the run's lease; this rank stops with it")
        if signum:
            self._stop(signum)

    def _holds_lease(self, prove: bool = False) -> bool:
        """(rank 0) whether this attempt can still prove it holds the run's lease (True where there is none);
        `prove`: renew once if the proof ran out (a step boundary can afford a store round trip)."""
        if self.session is None:
            return True
        return self.session.lease.prove() if prove else self.session.lease.holds()

    def _stop(self, signum: int) -> None:
        """Commit this state (unless it is the start: nothing to save) and end the job as stopped."""
        if self.state.step > 0:
            log.warning(
                "stop requested (%s): saving step %d before exiting", signal.Signals(signum).name, self.state.step
            )
            self.ckpt.save(self.state.step, asdict(self.state))  # a no-op if this step is the restored one
        else:
            log.warning("stop requested (%s) before the first step: nothing to save", signal.Signals(signum).name)
        self.ckpt.wait()
        self.sync_metrics()
        raise StopRequested(self.state.step, signum)

    def _before_commit(self) -> None:
        """(rank 0, before a manifest is written) still the run's only writer, and the store's metric history
        reaches the step being committed, so a resume from it never leaves a gap."""
        if self.session is not None:
            self.session.check_lease()
        if getattr(self, "metrics", None) is not None:
            self._upload_metrics()  # already inside the agreed commit section

    def _on_commit(self, step: int, stall_s: float) -> None:
        if self.session is not None:
            self.session.ledger.committed(step, self.ckpt.stall_s)

    def sync_metrics(self) -> None:
        """Metrics and TensorBoard files to the store; collective (every rank calls it), so a store error on rank
        0 reaches every rank instead of stranding them in the next collective."""
        agreed(self._upload_metrics, "syncing metrics to the store")

    def _upload_metrics(self) -> None:
        """(rank 0's part) a no-op for a local store, and skipped once the lease can no longer be proven (the
        step boundary then ends every rank together)."""
        if dist.is_main() and self._holds_lease(prove=True):
            self.metrics.flush()
            self.home.sync_up("metrics.jsonl")
            self.home.sync_up("tb")

    def _log_train(self, window: list[float], t0: float) -> float:
        now = time.perf_counter()
        # the bad-data threshold over the whole run, not per rank: every rank's bitmap merged, (V,) uint8
        self.train_set.check_run_wide(dist.union(self.train_set.affected()), dist.world_size())
        loss = dist.all_reduce_mean([float(np.mean(window))])[0]  # (micro-batch losses since the last log)
        clips_per_s = len(window) * self.cfg.data.batch_size * dist.world_size() / max(now - t0, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        self.metrics.log("train", self.state.step, epoch=self.state.epoch, loss=loss, lr=lr, clips_per_s=clips_per_s)
        log.debug("step %d loss %.4f lr %.3g %.1f clips/s", self.state.step, loss, lr, clips_per_s)
        return now

    def _progress_bar(self):
        if not (self.cfg.train.progress and dist.is_main()):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc=f"train {self.cfg.model.name}",
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0 if os.isatty(2) else 30.0,
        )

    # --------------------------------------------------------------------------------------- evaluation
    def validate(self) -> dict:
        """Training-time validation (val_clips x crops views); logged, returns top-1/top-5."""
        res = self.evaluate_split(self.val_set)
        out = {"epoch": self.state.epoch, "top1": res["top1"], "top5": res["top5"], "num_videos": res["num_videos"]}
        self.metrics.log("val", self.state.step, **out)
        log.info(
            "epoch %d val top-1 %.2f%% top-5 %.2f%% (%d videos)",
            self.state.epoch,
            100 * out["top1"],
            100 * out["top5"],
            out["num_videos"],
        )
        self.sync_metrics()
        return out

    def evaluate_split(self, dataset) -> dict:
        self.engine.eval()
        try:
            res = evaluate_dataset(self.engine, dataset, self.cfg, self.device, self.dtype, stop=self.stop.agreed)
        except EvaluationInterrupted as stop:  # a stop during validation does not wait for its end
            self._stop(stop.signum)
        self.engine.train()
        return res

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """fp32 master weights with timm names, on rank 0 (None elsewhere); collective. In bf16/fp16 runs the
        module holds rounded copies, so the masters come from the optimizer (msca.training.master_weights)."""
        from msca.training.master_weights import fp32_state_dict

        return fp32_state_dict(self.engine)

    def close(self) -> None:
        """Let go of the engine: its hooks hold the optimizer and its process groups, which would otherwise
        live (with gloo's threads) until the interpreter tears them down (msca.runtime.dist.shutdown)."""
        if self.engine is not None:
            self.engine.destroy()
        self.engine = self.optimizer = self.scheduler = self.ckpt.engine = None


def _sample_trace():
    """With MSCA_SAMPLE_TRACE=<folder>: a callable appending each micro-batch's (epoch, step, dataset indices) to
    `<folder>/rank<R>-of-<W>-<pid>.jsonl`, so an audit (or a test) can gather what every rank trained on."""
    folder = os.environ.get(SAMPLE_TRACE)
    if not folder:
        return None
    import json
    from pathlib import Path

    path = Path(folder) / f"rank{dist.rank()}-of-{dist.world_size()}-{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def trace(state: TrainState, batch) -> None:
        record = {"epoch": state.epoch, "step": state.step + 1, "index": [int(i) for i in batch["index"]]}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    return trace
