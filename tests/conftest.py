"""Test-wide settings: one torch thread. The tests use tiny tensors, where thread start-up costs more than it
saves, and on a shared 2-core machine extra threads compete with other processes. OMP_NUM_THREADS=1 also makes
every train() call's `--threads auto` pick 1 (minipost/threads.py), and the CLI tests' subprocesses inherit it."""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
