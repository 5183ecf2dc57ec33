"""msca's one command: `python launch.py [cluster=local|slurm|ray] [experiment=...] [run.name=NAME] [k=v ...]`.

Composes and validates the config, writes the run's home (<store.root>/runs/<name>/), submits the job to the
chosen backend and prints where the run lives. Re-launching an existing run.name resumes it.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig

from msca.config import register_schema

register_schema()
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    return hydra.compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


def override_error(argv: list[str]) -> str | None:
    """Compose once before Hydra's runner, which shows an override into an unset section as a traceback."""
    if any(arg.startswith("-") for arg in argv):  # Hydra's own flags (--cfg, -m, ...): leave it all to Hydra
        return None
    from msca.launcher import foreign_cluster_key, unset_section

    with hydra.initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        try:
            compose(argv)
        except ConfigCompositionException:
            return foreign_cluster_key(argv, compose)  # else Hydra reports it in one line
        except (OverrideParseException, MissingConfigException):
            return None  # Hydra reports these in one line
        except Exception as err:  # noqa: BLE001 - turned into one line below
            return unset_section(argv, compose) or f"the overrides cannot be applied: {type(err).__name__}: {err}"
    return None


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from jobs import JOBS
    from msca.launcher import launch
    from msca.runtime.errors import EXIT_USAGE, is_user_error

    overrides = list(HydraConfig.get().overrides.task)
    try:
        code = launch(cfg, overrides, compose, JOBS)
    except Exception as err:
        if not is_user_error(err):
            raise  # a bug: keep the traceback
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_USAGE
    if code:
        sys.exit(code)


if __name__ == "__main__":
    error = override_error(sys.argv[1:])
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)  # EXIT_USAGE, before anything heavy is imported
    main()
