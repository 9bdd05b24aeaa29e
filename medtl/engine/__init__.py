"""The shared trainer, evaluation pass and source pretraining (Python API behind ``medtl pretrain``).

Distributed runs (torchrun, DDP, sharded inference) are in :mod:`medtl.engine.distributed`.
"""

from medtl.engine.distributed import (
    DistContext,
    evaluate_sharded,
    init_distributed,
    predict_sharded,
    shard_loader,
)
from medtl.engine.evaluate import evaluate, predict
from medtl.engine.pretrain import PretrainResult, pretrain, pretrain_on
from medtl.engine.trainer import (
    StopTraining,
    TrainConfig,
    Trainer,
    TrainResult,
    fit,
    seed_everything,
)

__all__ = [
    "DistContext", "PretrainResult", "StopTraining", "TrainConfig", "TrainResult", "Trainer", "evaluate",
    "evaluate_sharded", "fit", "init_distributed", "predict", "predict_sharded", "pretrain", "pretrain_on",
    "seed_everything", "shard_loader",
]
