"""bnlab.studies: experiments composed of training runs, each writing a figure and a report."""

# The names of ``bnlab.studies.registry.STUDIES``, in its order, without importing any study:
# the command line offers them as choices and must start without matplotlib (a test keeps the
# two lists equal).
STUDY_NAMES = ("reproduce", "chapter", "lr", "batch-size", "inference-stats",
               "train-with-running-averages", "momentum", "axes", "ics", "placement",
               "landscape", "weight-decay-on-norm", "why-higher-lr")
