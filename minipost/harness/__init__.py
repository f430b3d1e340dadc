"""The run harness: what every objective's training loop needs that is not the algorithm (`Run`)."""
from minipost.harness.run import Run

__all__ = ["Run"]
