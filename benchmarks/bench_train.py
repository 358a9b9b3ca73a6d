"""The paper's Fig. 3 in miniature: time per step and peak memory, PoSE (window L_c fixed) vs full-length (L_t).

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py              # CPU, tiny preset, L_c 128, L_t 256..2048
    python benchmarks/bench_train.py --cuda                         # one GPU, "1b" preset, L_c 2048, L_t 4k..32k

Each configuration runs train.py's own step (FSDP2 model from train.build_model, a batch from train.make_batch,
model.loss, backward, clip, AdamW) in a fresh process, so peak memory (CPU: the process's max RSS above its
level before the first step; CUDA: max_memory_allocated) belongs to that configuration alone.
PoSE's cost should stay flat as L_t grows; full-length's grows at least linearly (attention quadratically).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from model import PRESETS, ModelArgs  # noqa: E402


def one(method: str, window: int, target: int, preset: str, steps: int, micro_batch: int) -> dict:
    """Time `steps` optimizer steps after one warm-up step; runs inside its own process."""
    argv = ["--preset", preset, "--window", str(window), "--target", str(target), "--method", method,
            "--batch-size", str(micro_batch), "--micro-batch-size", str(micro_batch), "--steps", "100",
            "--out", "/tmp/unused-bench-out"]
    if torch.cuda.is_available():
        argv.append("--activation-checkpointing")
    with train.distributed() as device:
        opts, config = train.resolve(train.parse_args(argv), 1)
        length = target if method == "full" else window
        args = ModelArgs.from_config(dict(PRESETS[preset], max_position_embeddings=window))
        args.rope = train.scaled_rope(args.rope, "linear", window, target)
        args.max_position_embeddings = target
        docs = [np.random.default_rng(0).integers(3, args.vocab_size, size=4 * target + 1)]
        model = train.build_model(opts, args, device, train.init_device_mesh(device.type, (1,)))
        optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
        attention = train.sdpa_kernel([train.SDPBackend.FLASH_ATTENTION, train.SDPBackend.EFFICIENT_ATTENTION]) \
            if device.type == "cuda" else train.contextlib.nullcontext()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            tokens, targets, positions = (t.to(device) for t in train.make_batch(docs, opts, 0, step, 0, 1))
            with attention:
                sum_nll, n = model.loss(tokens, targets, positions)
                (sum_nll / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times[1:]))
        row = {"method": method, "window": window, "target": target, "tokens": micro_batch * length,
               "s_per_step": seconds, "tokens_per_s": micro_batch * length / seconds}
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            n_params = sum(p.numel() for p in model.parameters()) - args.vocab_size * args.dim
            flops = 6 * n_params + 12 * args.n_layers * args.n_heads * args.head_dim * length
            row["mfu"] = row["tokens_per_s"] * flops / train.peak_flops(device)
        else:
            row["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help='"1b" preset, L_c 2048, L_t up to 32k, on one GPU')
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "WINDOW", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--preset", default=None)
    o = parser.parse_args()
    preset = o.preset or ("1b" if o.cuda else "tiny")
    if o.one:
        method, window, target = o.one[0], int(o.one[1]), int(o.one[2])
        try:
            print(json.dumps(one(method, window, target, preset, o.steps, 1)))
        except torch.OutOfMemoryError:
            print(json.dumps({"method": method, "window": window, "target": target, "oom": True}))
        return
    window = 2048 if o.cuda else 128
    factors = (2, 4, 8, 16)  # L_t = 2x..16x L_c (GPU: 4k..32k)
    print(f"| method | L_c | L_t | tokens/step | s/step | tokens/s | peak mem GiB |{' MFU |' if o.cuda else ''}")
    print(f"|---|---|---|---|---|---|---|{'---|' if o.cuda else ''}")
    for factor in factors:
        for method in ("pose", "full"):
            cmd = [sys.executable, __file__, "--one", method, str(window), str(window * factor),
                   "--preset", preset, "--steps", str(o.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode:
                print(f"| {method} | {window} | {window * factor} | failed: {done.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            if r.get("oom"):
                print(f"| {method} | {window} | {window * factor} | out of memory |")
                continue
            mfu = f" {100 * r['mfu']:.1f}% |" if o.cuda else ""
            print(f"| {method} | {window} | {r['target']} | {r['tokens']} | {r['s_per_step']:.3f} | "
                  f"{r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.3f} |{mfu}", flush=True)


if __name__ == "__main__":
    main()
