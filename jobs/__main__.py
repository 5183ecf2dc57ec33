"""`python -m jobs <train|evaluate> <run_uri>`: what every rank runs under the local backend (and what a
user can run by hand on any node with the rank environment set)."""
import argparse
import logging
import os
import sys

from msca.preemption import EXIT_STOPPED, StopRequested

from jobs import JOBS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs")
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("run_uri")
    parser.add_argument("--endpoint-url", default=os.environ.get("MSCA_S3_ENDPOINT"))
    args = parser.parse_args()
    try:
        JOBS[args.job](args.run_uri, args.endpoint_url)()
    except StopRequested as stop:
        logging.getLogger("jobs").warning("%s", stop)
        sys.exit(EXIT_STOPPED)
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
