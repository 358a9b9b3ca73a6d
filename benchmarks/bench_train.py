"""The paper's Fig. 3 in miniature: time per step and peak memory, PoSE (window L_c fixed) vs full-length (L_t).

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py              # CPU, tiny preset, L_c 128, L_t 256..2048
    python benchmarks/bench_train.py --cuda                         # one GPU, "1b" preset, L_c 2048, L_t 4k..32k

Each configuration runs train.py's own step (the model as train() builds it: FSDP2 with activation
checkpointing on a GPU, a plain module in one CPU process; a batch from train.make_batch; train.train_step:
loss, backward, clip, AdamW) in a fresh process, so peak memory (CPU: the process's max RSS above its level
before the first step; CUDA: max_memory_allocated) belongs to that configuration alone.
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
import distributed  # noqa: E402
import metrics  # noqa: E402
import options  # noqa: E402
import train  # noqa: E402
from hf import args_from_config  # noqa: E402


def synthetic_documents(vocab_size: int, length: int, n: int = 64) -> list[np.ndarray]:
    """n documents of BOS + `length` random ids: long enough for every method's window at that length."""
    rng = np.random.default_rng(0)
    return [np.concatenate([[1], rng.integers(3, vocab_size, size=length)]).astype(np.int32) for _ in range(n)]


def peak_gib(device) -> float:
    """CUDA: max_memory_allocated since the last reset; CPU: the process's peak RSS (ru_maxrss, never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def time_steps(model, optim, documents, opts, steps: int, warmup: int = 1) -> dict:
    """train.py's optimizer step (train.train_step on a train.make_batch micro-batch): median seconds of `steps`
    steps after `warmup` (the first includes any compiling), tokens per step, peak memory over all of them, and
    the first step's loss (before any update: the same for any run of the same model and batch)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step in range(warmup + steps):
        batch = train.make_batch(documents, opts, 0, step, 0, 1)
        start = time.perf_counter()
        loss, _, tokens = train.train_step(model, optim, [batch], opts.grad_clip)  # .item() inside: synchronised
        times.append(time.perf_counter() - start)
        losses.append(loss)
    return {"s_per_step": float(np.median(times[warmup:])), "first_step_s": times[0], "tokens": int(tokens),
            "tokens_per_s": tokens / float(np.median(times[warmup:])), "peak_mem_gib": peak_gib(device),
            "first_loss": losses[0]}


def one(method: str, window: int, target: int, preset: str, steps: int, micro_batch: int) -> dict:
    """Time `steps` optimizer steps after one warm-up step; runs inside its own process."""
    argv = ["--preset", preset, "--window", str(window), "--target", str(target), "--method", method,
            "--batch-size", str(micro_batch), "--micro-batch-size", str(micro_batch), "--steps", "100",
            "--out", "/tmp/unused-bench-out"]
    if torch.cuda.is_available():
        argv.append("--activation-checkpointing")
    with distributed.distributed() as device:
        opts, config = options.resolve(options.parse_args(argv), 1)
        args = args_from_config(dict(config, max_position_embeddings=window))
        args.rope = options.scaled_rope(args.rope, "linear", window, target)
        args.max_position_embeddings = target
        docs = synthetic_documents(args.vocab_size, 4 * target, n=1)
        mesh = train.init_device_mesh(device.type, (1,)) if device.type == "cuda" else None  # as train() builds
        model = distributed.build_model(opts, args, device, mesh)
        optim = distributed.build_optimizer(model, opts)
        base = peak_gib(device)
        row = {"method": method, "window": window, "target": target, **time_steps(model, optim, docs, opts, steps)}
        if device.type == "cuda":
            length = target if method == "full" else window  # tokens per sequence
            row["mfu"] = row["tokens_per_s"] * metrics.flops_per_token(model, length) / metrics.peak_flops(device)
        else:
            row["peak_mem_gib"] -= base  # the step's own memory above the process before it
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
