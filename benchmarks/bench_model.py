"""What SDPA buys: one forward+backward of the model with F.scaled_dot_product_attention vs an explicit-mask one.

    python benchmarks/bench_model.py                   # CPU, "tiny" preset, B=1, T = 256 / 1024 / 4096, both attentions
    bash benchmarks/gpu.sh                             # the GPU's side: flash proof, MFU, ... (benchmarks/bench_gpu.py)

CPU: each (T, attention) runs in a fresh process; peak memory is that process's max RSS (getrusage) minus its
RSS just before the first step, so it is the step's own memory (activations, [T, T] scores, gradients).
`--attention math` monkeypatches torch's SDPA with a plain implementation that materialises the [T, T] causal
mask and scores (repeating K/V heads for GQA); the model itself has no such option.
"""
import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf import from_preset  # noqa: E402

def math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention the textbook way: [B, H, T, S] scores with a materialised causal mask (what SDPA avoids)."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, H, S, D]: a copy per query head
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = q @ k.transpose(-2, -1) * (scale or 1 / math.sqrt(q.shape[-1]))  # [B, H, T, S]
    if is_causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()  # [T, S]
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v  # [B, H, T, D]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_cpu(seq: int, attention: str, steps: int) -> dict:
    """Time `steps` forward+backward passes after one warm-up; runs in its own process."""
    if attention == "math":
        F.scaled_dot_product_attention = math_attention  # model.py looks it up at call time
    torch.manual_seed(0)
    model = from_preset("tiny", seed=0, max_position_embeddings=seq)
    tokens = torch.randint(0, model.args.vocab_size, (1, seq + 1))
    before = rss_mb()

    def step():
        sum_nll, n = model.loss(tokens[:, :-1], tokens[:, 1:])
        (sum_nll / n).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, kernels)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    # The fastest step: on a shared box the others are slowed by whoever else is computing.
    return {"seq": seq, "attention": attention, "tokens_per_s": seq / min(times),
            "median_tokens_per_s": seq / sorted(times)[len(times) // 2], "step_mb": peak - before, "peak_rss_mb": peak}


def bench_cpu(seqs, threads: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    rows = []
    for seq in seqs:
        for attention in ("sdpa", "math"):
            steps = max(3, 2048 // seq)
            out = subprocess.run([sys.executable, __file__, "--one", str(seq), "--attention", attention,
                                  "--steps", str(steps)], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"error: T={seq} {attention} failed:\n{out.stderr}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  T={seq} {attention}: {rows[-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, "
          f"torch {torch.__version__}; tiny preset (B=1), forward+backward of model.loss\n")
    print("| T | attention | tokens/s (best step) | tokens/s (median) | step memory (MB above pre-step RSS) "
          "| peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq']} | {r['attention']} | {r['tokens_per_s']:.0f} | {r['median_tokens_per_s']:.0f} "
              f"| {r['step_mb']:.0f} | {r['peak_rss_mb']:.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, nargs="+", default=None, help="sequence lengths (256 1024 4096)")
    p.add_argument("--threads", type=int, default=2, help="CPU: OMP_NUM_THREADS of each measured process")
    p.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)  # internal: timed steps of --one
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one CPU measurement in this process
    p.add_argument("--attention", choices=("sdpa", "math"), default="sdpa", help=argparse.SUPPRESS)
    o = p.parse_args()
    if o.one:
        print(json.dumps(one_cpu(o.one, o.attention, o.steps)))
    else:
        bench_cpu(o.seq or [256, 1024, 4096], o.threads)


if __name__ == "__main__":
    main()
