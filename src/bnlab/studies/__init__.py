"""bnlab.studies: experiments composed of training runs, each writing a figure and a report."""
