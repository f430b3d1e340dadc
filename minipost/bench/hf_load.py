"""How fast minipost.hf reads a real-sized Hugging Face folder, against safetensors' own reader on the same file.

    python -m minipost.bench.hf_load                    # a Qwen3-0.6B-shaped folder of random bf16 weights
    python -m minipost.bench.hf_load --layers 4         # a quick look

It writes a folder shaped like Qwen3-0.6B (28 layers, hidden 1024, 16 query and 8 key/value heads of 128, MLP
3072, vocabulary 151,936, tied output layer: 0.6B parameters, about 1.2 GB in bf16) with random weights, then
loads it, each in a fresh process: once with `safetensors.torch.load_file` (the baseline; it maps the file,
so each tensor is cloned to read it into memory), once with `minipost.hf.load_hf_model` in bf16 (the
tensors read once into a model, every header checked first). It prints the median seconds and the growth of
peak resident memory during the load (the imports excluded) of each over --repeats runs, and their ratios.
Linux (it reads /proc/self/statm); the file is in the page cache after it is written, for both.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from minipost.common import ArgumentParser, exit_on_input_error, positive_int

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                 architectures=["Qwen3ForCausalLM"], model_type="qwen3", torch_dtype="bfloat16")

CHILD = """
import resource, sys, time, torch
from safetensors.torch import load_file
from minipost.hf import load_hf_model
rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()  # after the imports
t = time.perf_counter()
if sys.argv[1] == "safetensors":  # load_file maps the file; a clone reads every tensor into memory
    weights = {name: tensor.clone() for name, tensor in load_file(sys.argv[2] + "/model.safetensors").items()}
else:
    model = load_hf_model(sys.argv[2], dtype=torch.bfloat16)
seconds = time.perf_counter() - t
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss)
"""


def write_folder(folder: Path, layers: int) -> int:
    """A Qwen3-shaped folder with random bf16 weights -> the bytes of its weights."""
    from safetensors.torch import save_file
    cfg = {**QWEN3_06B, "num_hidden_layers": layers}
    H, K, D, C, F, V = 16, 8, 128, 1024, 3072, 151936
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                       p + "self_attn.q_proj.weight": (H * D, C), p + "self_attn.k_proj.weight": (K * D, C),
                       p + "self_attn.v_proj.weight": (K * D, C), p + "self_attn.o_proj.weight": (C, H * D),
                       p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,),
                       p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                       p + "mlp.down_proj.weight": (C, F)})
    tensors = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg))
    return sum(t.numel() * 2 for t in tensors.values())


def measure(how: str, folder: Path) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, how, str(folder)], capture_output=True, text=True, check=True)
    seconds, peak = out.stdout.split()
    return float(seconds), int(peak)


def main(argv=None):
    return exit_on_input_error(lambda: _main(argv))


def _main(argv=None):
    ap = ArgumentParser(description="Time minipost.hf.load_hf_model against safetensors' load_file.")
    ap.add_argument("--layers", type=positive_int, default=28, help="transformer layers (Qwen3-0.6B: 28)")
    ap.add_argument("--repeats", type=positive_int, default=3, help="loads of each, in fresh processes")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = write_folder(folder, args.layers)
        print(f"Qwen3-0.6B shape with {args.layers} layers: {size / 2**30:.2f} GiB of bf16 weights")
        results = {how: [measure(how, folder) for _ in range(args.repeats)] for how in ("safetensors", "minipost")}
    med = {how: (statistics.median(s for s, _ in runs), statistics.median(p for _, p in runs))
           for how, runs in results.items()}
    for how, (seconds, peak) in med.items():
        print(f"{how:12s} {seconds:6.2f} s   peak memory +{peak / 2**30:5.2f} GiB ({peak / size:.2f}x the weights)")
    print(f"minipost / safetensors: time {med['minipost'][0] / med['safetensors'][0]:.2f}x, "
          f"peak memory {med['minipost'][1] / med['safetensors'][1]:.2f}x")


if __name__ == "__main__":
    main()
