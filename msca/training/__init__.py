"""Training and evaluation of one run: `trainer` (model, data and DeepSpeed engine from the config; the loop),
`build` (the configured model and its pretrained weights), `optim` (optimizer, LR schedule, the DeepSpeed
JSON), `master_weights` (the fp32 masters as one state dict), `evaluation` (multi-view prediction sharded over
ranks, and its summary)."""

from msca.training.build import build_model
from msca.training.evaluation import evaluate_dataset
from msca.training.master_weights import fp32_state_dict
from msca.training.optim import build_optimizer, build_scheduler, deepspeed_config
from msca.training.trainer import Trainer, TrainState

__all__ = [
    "TrainState",
    "Trainer",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "deepspeed_config",
    "evaluate_dataset",
    "fp32_state_dict",
]
