"""The run harness: what every objective's training loop needs that is not the algorithm (`Run`), and the
fields every objective's Config shares (`RunConfig`)."""
from minipost.harness.config import RunConfig
from minipost.harness.run import Run

__all__ = ["Run", "RunConfig"]
