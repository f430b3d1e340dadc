"""minipost: LLM post-training from scratch (pretrain, SFT, DPO, REINFORCE/RLOO, GRPO, PPO) in plain PyTorch."""
import os as _os
import sys as _sys

# torch's OpenMP (libgomp) reads its wait policy once, when torch is imported: sleeping idle threads keep two
# runs on one machine from slowing each other ~3x, with the same numbers (see minipost/threads.py).
TORCH_IMPORTED_FIRST = "torch" in _sys.modules  # then the line below comes too late for this process
WAIT_POLICY_FROM_USER = "OMP_WAIT_POLICY" in _os.environ
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
