"""msca's one command: `python launch.py [cluster=local|slurm|ray] [experiment=...] [run.name=NAME] [k=v ...]`.

Composes and validates the config, writes the run's home (<store.root>/runs/<name>/), submits the job to the
chosen backend and prints where the run lives. Re-launching an existing run.name resumes it.
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from msca.config import register_schema

register_schema()


def compose(overrides: list[str]) -> DictConfig:
    return hydra.compose(config_name="config", overrides=overrides)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from jobs import JOBS
    from msca.launcher import ConfigMismatch, launch

    overrides = list(HydraConfig.get().overrides.task)
    try:
        code = launch(cfg, overrides, compose, JOBS)
    except (ConfigMismatch, ValueError, FileNotFoundError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
