"""What the log-prob tests share to run the Triton kernels without a GPU: Triton's interpreter (TRITON_INTERPRET=1,
set here, before any kernel module is imported: import this module first), whether triton imports, the device,
the implementations to parametrize over, and the numpy warnings the interpreter raises on masked lanes (it
evaluates both sides of tl.where, so -inf - (-inf) and log(0) are computed before being discarded)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    HAS_TRITON = False

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["chunked", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton"))]
INTERPRETER_WARNINGS = [pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning"),
                        pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")]
