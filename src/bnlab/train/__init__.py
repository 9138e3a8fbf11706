"""bnlab.train: config, loop, run directories."""

from bnlab.train.build import make_model
from bnlab.train.config import TrainConfig
from bnlab.train.config_file import load_config
from bnlab.train.evaluate import Evaluation, evaluate, evaluate_run
from bnlab.train.loop import train
from bnlab.train.run import Run

__all__ = ["Evaluation", "Run", "TrainConfig", "evaluate", "evaluate_run", "load_config",
           "make_model", "train"]
