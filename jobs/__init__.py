"""Job kinds: small stateless callables built from a run URI (the dinov2 pattern), the same under every
backend."""


def _train(*args, **kwargs):
    from jobs.train import Train

    return Train(*args, **kwargs)


def _evaluate(*args, **kwargs):
    from jobs.evaluate import Evaluate

    return Evaluate(*args, **kwargs)


JOBS = {"train": _train, "evaluate": _evaluate}
