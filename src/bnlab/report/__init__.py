"""bnlab.report: figures and reports built from run directories only, never from live objects."""
