"""Stop requests (SIGTERM from a scheduler or the local backend, SIGUSR2 before a time limit, Ctrl-C): the
handler only sets a flag; the training loop checks it at step boundaries, all ranks agree on it in one
all-reduce, save a checkpoint together and exit. Nothing is saved inside a signal handler."""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

from msca.runtime import dist as ranks

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class StopRequested(Exception):
    """Raised by the trainer after the stop checkpoint is committed."""

    def __init__(self, step: int, signum: int, during: str = ""):
        where = during or f"at step {step}"
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}; a checkpoint is committed")
        self.step, self.signum = step, signum


class EvaluationInterrupted(Exception):
    """A stop was agreed between two evaluation batches (validation or the final test)."""

    def __init__(self, signum: int):
        super().__init__(f"evaluation interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class StopFlag:
    def __init__(self, signals=STOP_SIGNALS):
        self.signum = 0
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            log.info("not in the main thread (Ray Train): no signal handlers; the backend restarts the group")
            return
        for sig in signals:  # replaces submitit's USR2 handler, which would requeue before the ranks saved
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a checkpoint
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def request(self, signum: int) -> None:
        """Ask for a stop from any thread (Ray Train's training thread cannot have signal handlers: the Ray
        backend's watcher calls this when the driver asks for a stop)."""
        self.signum = self.signum or signum

    def agreed(self, extra: int = 0) -> int:
        """The signal number if any rank was asked to stop (0 otherwise); the same answer on every rank.
        `extra`: a rank's own reason to end at this boundary (above every signal number), agreed the same way."""
        if ranks.world_size() == 1:
            return max(self.signum, extra)
        t = torch.tensor([max(self.signum, extra)], dtype=torch.int64, device=ranks.device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_installed: StopFlag | None = None


def install(pending: int = 0) -> StopFlag:
    """The process's one stop flag, created on first call. Jobs call it first thing in the main thread, before
    heavy initialisation, so a signal during model build or checkpoint download is not lost. `pending`: a
    signal that arrived before (while Python was still importing)."""
    global _installed
    if _installed is None:
        _installed = StopFlag()
    _installed.signum = _installed.signum or pending
    return _installed
