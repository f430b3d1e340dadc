"""Benchmarks, each a script that measures one thing and prints medians and ratios against a baseline run in the
same process (timings on shared CPUs vary 2x from day to day; a ratio in one run does not):

    python -m minipost.bench.threads    the CPU thread rule (minipost/threads.py)
    python -m minipost.bench.rollout    one RL rollout batch: generation with the KV cache, log-probs
    python -m minipost.bench.evals      the report card's evaluation at fewer and at all items
    python -m minipost.bench.hf_load    loading a Qwen3-0.6B-shaped Hugging Face folder, time and peak memory
    python -m minipost.bench.memory     each family's GPU memory for inference, SFT, LoRA, GRPO (arithmetic)
    python -m minipost.bench.linear_logprobs  the output layer + log-prob: peak memory and time, three ways
    python -m minipost.bench.gpu        every GPU measurement in one call (bench/gpu.sh adds the sweep and tests)

The log-prob kernels' benchmark sits with them: python -m minipost.kernels.bench.
"""
