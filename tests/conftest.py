"""Test-wide settings: one torch thread. The tests use tiny tensors, where thread start-up costs more than it
saves, and on a shared 2-core machine extra threads spin against other processes (10x slowdowns seen)."""
import torch

torch.set_num_threads(1)
