"""`python -m jobs <train|evaluate> <run_uri>`: what every rank runs under the local backend (and what a
user can run by hand on any node with the rank environment set)."""

import signal

# A stop signal that arrives while torch and deepspeed are still importing (seconds) is remembered, not fatal:
# these handlers are in place before any heavy import, and hand the signal to the real stop flag below.
_early_signals: list = []
for _sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
    signal.signal(_sig, lambda signum, frame: _early_signals.append(signum))

import argparse
import atexit
import logging
import os
import sys
import traceback

from jobs import JOBS
from msca.runtime import failure, preemption
from msca.runtime.errors import EXIT_FAILED, EXIT_STOPPED, is_user_error
from msca.runtime.preemption import StopRequested


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs")
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("run_uri")
    parser.add_argument("--endpoint-url", default=os.environ.get("MSCA_S3_ENDPOINT"))
    args = parser.parse_args()
    log = logging.getLogger("jobs")
    preemption.install(pending=_early_signals[0] if _early_signals else 0)
    if os.environ.get(failure.FAULT_ENV) == f"teardown@{os.environ.get('RANK', '0')}":
        atexit.register(os.abort)  # fault test: an interpreter teardown that aborts must not fail a clean run
    code = EXIT_FAILED
    try:
        JOBS[args.job](args.run_uri, args.endpoint_url)()
        code = 0
    except StopRequested as stop:
        log.warning("%s", stop)
        code = EXIT_STOPPED
    except Exception as err:  # noqa: BLE001 - recorded for the launcher; expected ones without a traceback
        failure.record(err)
        if is_user_error(err) or failure.is_collateral(err):
            log.error("%s", failure.one_line(err))
            code = EXIT_FAILED
        else:  # a bug: keep the traceback
            traceback.print_exc()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else EXIT_FAILED
    finally:
        end(code)


def end(code: int) -> None:
    """Leave without the interpreter's finalisation. The work is committed (or the failure recorded) by now;
    what is left are library threads (gloo's, the TCPStore server, DeepSpeed's, boto3's pools) whose teardown
    order at interpreter exit is not ours, and which has aborted clean runs ("terminate called without an
    active exception", exit -6) after their last commit. So: release the process groups in order, record how
    this rank ended for the launcher, flush, and exit now."""
    from msca.runtime import dist

    dist.shutdown()
    failure.record_end(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
