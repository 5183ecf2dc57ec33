"""Exit codes and which errors are the user's: defined once for the launcher, the job entry and every backend.

A user error (an unreachable store, refused credentials, a missing bucket or file, bad data, a held lease, a
bad value) is one line naming what to fix, never a traceback; anything else is a bug and keeps its traceback.
A *deterministic* error is one a retry on the same inputs would hit again (Ray does not restart the worker
group for it); a dropped connection is the user's to know about but worth a retry. Light on purpose (no torch):
SLURM tasks import it before their signal handlers are in place.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILED = 1  # a rank's job failed: a user error (one line in its log) or a bug (a traceback)
EXIT_USAGE = 2  # launch.py refused the config or the command, or a job failed deterministically
EXIT_STOPPED = 3  # the job stopped on request after committing a checkpoint
EXIT_KILLED = 4  # the launcher had to kill the ranks (no stop checkpoint): the newest commit is the resume point


def user_errors() -> tuple:
    """The exception classes that are the user's to fix (imported lazily: they live with their components)."""
    from msca.data.dataset import BadDataError
    from msca.runstate.lease import LeaseHeld
    from msca.runtime.collective import CollectiveError

    # OSError covers ConnectionError, PermissionError (bad credentials) and FileNotFoundError; LookupError a
    # missing bucket; ValueError every bad value (config, list file, precision, a mismatched run)
    return (OSError, LookupError, ValueError, BadDataError, LeaseHeld, CollectiveError)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, user_errors())


# By class name, so the judge needs none of the modules that define them: bad config values and types, missing
# files or buckets, refused credentials, a run held by another live job, and a checkpoint whose tensors do not
# fit the model (torch's "size mismatch" / "Error(s) in loading state_dict", raised as RuntimeError, which
# otherwise means a transient fault worth a retry).
DETERMINISTIC = {
    "ValueError",
    "TypeError",
    "KeyError",
    "LookupError",
    "FileNotFoundError",
    "PermissionError",
    "NotADirectoryError",
    "IsADirectoryError",
    "RendezvousError",
    "ConfigMismatch",
    "StoreAuthError",
    "BucketNotFoundError",
    "LeaseHeld",
    "LeaseLost",
    "ConditionalWritesUnsupported",
    "ValidationError",
    "ConfigKeyError",
    "ConfigTypeError",
    "ConfigAttributeError",
    "MissingMandatoryValue",
    "InterpolationResolutionError",
}
INCOMPATIBLE = re.compile(r"size mismatch for |Error\(s\) in loading state_dict")
_COLLECTIVE = re.compile(r"failed on rank \d+: (\w+): ")


def is_deterministic(err: BaseException) -> bool:
    """Along the MRO by name; an error gathered from another rank (a fail-safe collective section) is judged by
    the original's name."""
    if any(cls.__name__ in DETERMINISTIC for cls in type(err).__mro__) or INCOMPATIBLE.search(str(err)):
        return True
    m = _COLLECTIVE.search(str(err)) if type(err).__name__ == "CollectiveError" else None
    return bool(m and m.group(1) in DETERMINISTIC)
