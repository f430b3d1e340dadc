"""Hand-written GPU kernels (Triton) behind minipost's PyTorch entry points.

Nothing here is imported by `import minipost`: `minipost.logprobs` imports
`minipost.kernels.logprobs_triton` lazily, only when `impl="triton"` is used, so the package works
without triton installed and tests can set TRITON_INTERPRET=1 (run the kernels on the CPU in Triton's
interpreter) before the kernels are decorated.

- logprobs_triton.py  fused log softmax(x / T)[y] forward and backward
- bench.py            `python -m minipost.kernels.bench`: every log-prob implementation, one table
"""
