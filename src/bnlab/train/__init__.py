"""bnlab.train: config, loop, run directories."""

from bnlab.train.config import TrainConfig
from bnlab.train.loop import evaluate, make_model, train
from bnlab.train.run import Run

__all__ = ["Run", "TrainConfig", "evaluate", "make_model", "train"]
