"""Speed and peak memory of evaluate.py's perplexity window (one forward of L tokens through model.loss).

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate.py                      # tiny preset, CPU, 2k / 8k / 32k
    python benchmarks/bench_evaluate.py --cuda                                  # 1b and 7b, bf16, 16k ... 128k
    python benchmarks/bench_evaluate.py --cuda --configs 7b --lengths 131072    # one cell

Each cell runs evaluate.perplexity on one document of L - 1 tokens (one window of L tokens with its BOS, every
token scored), after a warm-up window, so it times exactly the code a real run spends its hours in. Weights are
random (speed and memory do not depend on them). Peak memory: torch.cuda.max_memory_allocated on GPU; on CPU
the process's peak RSS (ru_maxrss), which only grows, so lengths run in increasing order.
"""
import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import evaluate  # noqa: E402
from hf import PRESETS, args_from_config  # noqa: E402
from model import Transformer  # noqa: E402

CONFIGS = {"tiny": PRESETS["tiny"], "small": PRESETS["small"], "1b": PRESETS["1b"],
           "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
                      rms_norm_eps=1e-5)}  # Llama-2-7b's config.json


def build(name, device, dtype, length):
    config = dict(CONFIGS[name], max_position_embeddings=length)
    with torch.device("meta"):
        model = Transformer(args_from_config(config))
    model.to(dtype).to_empty(device=device)
    model.set_rope(model.args.rope)  # RoPE tables are recomputed outside the meta context
    model.init_weights(seed=0)
    return model.eval()


def peak_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def cell(model, length: int, device) -> dict:
    """One perplexity window of `length` tokens (a document of length - 1 tokens after its BOS, all scored):
    seconds, tokens/s and peak memory (CUDA: since this call; CPU: the process's, which only grows)."""
    doc = np.random.default_rng(length).integers(3, model.args.vocab_size, size=length - 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    row = evaluate.perplexity(model, [doc], [length], 1024, 1, device=device, every=1e9)[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert row["tokens"] == length - 1 and np.isfinite(row["ppl"])
    return {"length": length, "seconds": seconds, "tokens_per_s": length / seconds, "peak_mem_gib": peak_gib(device)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--configs", nargs="+", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    opts = parser.parse_args()
    device = torch.device("cuda" if opts.cuda else "cpu")
    dtype = torch.bfloat16 if opts.cuda else torch.float32
    configs = opts.configs or (["1b", "7b"] if opts.cuda else ["tiny"])
    lengths = sorted(opts.lengths or ([16384, 32768, 65536, 131072] if opts.cuda else [2048, 8192, 32768]))
    where = torch.cuda.get_device_name(device) if opts.cuda else f"{platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} thread(s)"
    print(f"# torch {torch.__version__}, {where}, {dtype}")
    print("| config | L (tokens) | s / window | tokens/s | peak memory (GiB) | of which weights (GiB) |")
    print("|---|---|---|---|---|---|")
    for name in configs:
        model = build(name, device, dtype, max(lengths))
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        evaluate.perplexity(model, [np.arange(3, 3 + 255)], [256], 256, 1, device=device, every=1e9)  # warm-up
        for L in lengths:
            try:
                r = cell(model, L, device)
            except torch.OutOfMemoryError:
                print(f"| {name} | {L:,} | out of memory | | | {weights:.2f} |", flush=True)
                break
            print(f"| {name} | {L:,} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {r['peak_mem_gib']:.2f} | "
                  f"{weights:.2f} |", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
