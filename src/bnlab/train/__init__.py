"""bnlab.train: config, loop, run directories."""

from bnlab.train.config import TrainConfig
from bnlab.train.config_file import load_config
from bnlab.train.loop import evaluate, make_model, train
from bnlab.train.run import Run

__all__ = ["Run", "TrainConfig", "evaluate", "load_config", "make_model", "train"]
