"""The shared trainer, evaluation pass and source pretraining (Python API behind ``medtl pretrain``)."""

from medtl.engine.evaluate import evaluate, predict
from medtl.engine.pretrain import PretrainResult, pretrain, pretrain_on
from medtl.engine.trainer import StopTraining, TrainConfig, Trainer, TrainResult, fit, seed_everything

__all__ = [
    "PretrainResult", "StopTraining", "TrainConfig", "TrainResult", "Trainer", "evaluate", "fit", "predict",
    "pretrain", "pretrain_on", "seed_everything",
]
