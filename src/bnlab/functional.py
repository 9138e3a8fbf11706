"""Functional API: ``bnlab.functional.batch_norm`` mirrors ``torch.nn.functional.batch_norm``."""

from bnlab.norm.functional import batch_norm, batch_statistics, update_running_stats

__all__ = ["batch_norm", "batch_statistics", "update_running_stats"]
