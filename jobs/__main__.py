"""`python -m jobs <train|evaluate> <run_uri>`: what every rank runs under the local backend (and what a
user can run by hand on any node with the rank environment set)."""
import signal

# A stop signal that arrives while torch and deepspeed are still importing (seconds) is remembered, not fatal:
# these handlers are in place before any heavy import, and hand the signal to the real stop flag below.
_early_signals: list = []
for _sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
    signal.signal(_sig, lambda signum, frame: _early_signals.append(signum))

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from msca import failure, preemption  # noqa: E402
from msca.preemption import EXIT_STOPPED, StopRequested  # noqa: E402

from jobs import JOBS  # noqa: E402


EXIT_FAILED = 1  # an expected failure (store, credentials, data, lease, a value): one line in the log


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs")
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("run_uri")
    parser.add_argument("--endpoint-url", default=os.environ.get("MSCA_S3_ENDPOINT"))
    args = parser.parse_args()
    log = logging.getLogger("jobs")
    preemption.install(pending=_early_signals[0] if _early_signals else 0)
    try:
        JOBS[args.job](args.run_uri, args.endpoint_url)()
    except StopRequested as stop:
        log.warning("%s", stop)
        sys.exit(EXIT_STOPPED)
    except Exception as err:  # noqa: BLE001 - recorded for the launcher; expected ones without a traceback
        failure.record(err)
        if not (failure.is_expected(err) or failure.is_collateral(err)):  # a bug: keep the traceback
            raise
        log.error("%s", failure.one_line(err))
        sys.exit(EXIT_FAILED)
    finally:
        shutdown_process_group()


def shutdown_process_group() -> None:
    """Tear the process group down before the interpreter does: gloo's threads destroyed during interpreter
    teardown abort the process ("terminate called without an active exception") after a clean run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


if __name__ == "__main__":
    main()
