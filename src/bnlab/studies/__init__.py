"""bnlab.studies: experiments composed of training runs, each writing a figure and a report."""

# The names of ``bnlab.studies.registry.STUDIES``, in its order, without importing any study:
# the command line offers them as choices and must start without matplotlib (a test keeps the
# two lists equal).
STUDY_NAMES = ("chapter", "lr", "batch-size", "inference-stats", "axes", "ics", "placement",
               "landscape", "train-with-running-averages", "momentum")
