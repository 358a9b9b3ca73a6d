"""Mistral v0.1's sliding window past its width: SDPA with a materialised band mask vs FlexAttention (model.py).

    python benchmarks/bench_sliding.py                  # CPU: tiny preset, W = 256, T = 4W and 16W; a markdown table
    python benchmarks/bench_sliding.py --cuda --json    # one GPU: bf16, 1b preset, W = 4096, T = 16k and 64k
    python benchmarks/bench_sliding.py --cuda --json --seqs 32768 --modes train --attentions flex  # any subset

--json prints one JSON line per configuration on stdout as it finishes (what benchmarks/gpu.sh collects) and
nothing else there; progress goes to stderr. Each configuration runs in a fresh process, so that compiling,
caching and the allocator of one cannot flatter the next.

attention: band   = SDPA with the [T, T] band mask (model.py's path off FLEX_DEVICES: CPU, float64);
           flex   = FlexAttention with a block mask, compiled (model.py's CUDA path; on the CPU torch 2.13 compiles it
                    forward only, so train rows are flex on CUDA only);
           causal = the same model with no sliding window (SDPA is_causal): what plain causal attention costs.
mode: forward = model.loss without autograd (evaluate.py's perplexity), train = forward + backward (train.py).
tokens/s: T / the fastest of --steps timed steps after one warm-up step (which includes compiling; its time is
first_step_s). Memory: CPU, the peak RSS during the timed steps above the RSS before them (peak reset through
/proc/self/clear_refs; MALLOC_MMAP_THRESHOLD_ makes freed tensors leave RSS); CUDA, max_memory_allocated above
the memory allocated before them. A flex forward row also reports rel_err_vs_band: ||h_flex - h_band|| / ||h_band||
of the final hidden states, the GPU's check that the compiled kernel computes the band.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import model as model_py  # noqa: E402
from hf import from_preset  # noqa: E402

CPU = dict(device="cpu", dtype="float32", preset="tiny", window=256, multiples=(4, 16), steps=3)
CUDA = dict(device="cuda", dtype="bfloat16", preset="1b", window=4096, multiples=(4, 16), steps=5)


def rss_kib(field="VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def one(cfg: dict) -> dict:
    """Measure one configuration in this process; returns the JSON row."""
    device, dtype, cuda = torch.device(cfg["device"]), getattr(torch, cfg["dtype"]), cfg["device"] == "cuda"
    model_py.FLEX_DEVICES = (device.type,) if cfg["attention"] == "flex" else ()
    window = None if cfg["attention"] == "causal" else cfg["window"]
    torch.manual_seed(0)
    model = from_preset(cfg["preset"], seed=0, sliding_window=window, max_position_embeddings=cfg["seq"])
    model.to(device=device, dtype=dtype)
    tokens = torch.randint(0, model.args.vocab_size, (1, cfg["seq"] + 1), device=device)
    train = cfg["mode"] == "train"

    def step():
        with torch.set_grad_enabled(train):
            sum_nll, n = model.loss(tokens[:, :-1], tokens[:, 1:])
            if train:
                (sum_nll / n).backward()
                model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # warm-up: compiles FlexAttention and its block mask
    first = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        before = rss_kib() * 1024
    times = []
    for _ in range(cfg["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    row = {**cfg, "tokens_per_s": cfg["seq"] / min(times),
           "median_tokens_per_s": cfg["seq"] / sorted(times)[len(times) // 2],
           "step_mem_mib": (peak - before) / 2**20, "first_step_s": first}
    if cfg["attention"] == "flex" and not train:  # the compiled kernel against the band mask, same weights
        with torch.no_grad():
            h_flex = model.hidden(tokens[:, :-1]).double()
            model_py.FLEX_DEVICES = ()
            h_band = model.hidden(tokens[:, :-1]).double()
        row["rel_err_vs_band"] = ((h_flex - h_band).norm() / h_band.norm()).item()
    if cuda:
        row["gpu"] = torch.cuda.get_device_name()
    return row


def configs(o) -> list[dict]:
    base = CUDA if o.cuda else CPU
    window = o.window or base["window"]
    seqs = o.seqs or [m * window for m in base["multiples"]]
    rows = []
    for seq in seqs:
        for mode in o.modes:
            for attention in o.attentions:
                if attention == "flex" and mode == "train" and not o.cuda:
                    continue  # torch 2.13: "FlexAttention does not support backward on CPU"
                rows.append(dict(device=base["device"], dtype=base["dtype"], preset=o.preset or base["preset"],
                                 window=window, seq=seq, attention=attention, mode=mode,
                                 steps=o.steps or base["steps"]))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuda", action="store_true", help="GPU mode: bf16, 1b preset, W = 4096")
    p.add_argument("--window", type=int, help="sliding window W (CPU 256, CUDA 4096)")
    p.add_argument("--seqs", type=int, nargs="+", help="sequence lengths T (default 4W and 16W)")
    p.add_argument("--attentions", nargs="+", choices=("band", "flex", "causal"), default=["band", "flex", "causal"])
    p.add_argument("--modes", nargs="+", choices=("forward", "train"), default=["forward", "train"])
    p.add_argument("--preset", help="model shape (CPU tiny, CUDA 1b)")
    p.add_argument("--steps", type=int, help="timed steps after the warm-up (CPU 3, CUDA 5)")
    p.add_argument("--threads", type=int, default=1, help="CPU: OMP_NUM_THREADS of each measured process")
    p.add_argument("--json", action="store_true", help="one JSON line per configuration, no table")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration (JSON) in this process
    o = p.parse_args()
    if o.one:
        print(json.dumps(one(json.loads(o.one))))
        return
    if o.cuda and not torch.cuda.is_available():
        sys.exit("error: --cuda needs a CUDA device")
    env = {**os.environ, "OMP_NUM_THREADS": str(o.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for cfg in configs(o):
        name = f"T={cfg['seq']} {cfg['attention']} {cfg['mode']}"
        print(f"  {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], env=env, capture_output=True,
                              text=True)
        if done.returncode:  # one failed configuration (e.g. out of memory) is a row, not the end of the run
            row = {**cfg, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]}
        else:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        if o.json:
            print(json.dumps(row), flush=True)
    if o.json:
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{o.threads}, torch {torch.__version__}; {rows[0]['preset']} preset, {rows[0]['dtype']}, B=1, "
          f"sliding window W = {rows[0]['window']}\n")
    print("| T | mode | attention | tokens/s (best) | tokens/s (median) | step memory (MiB) | first step (s) "
          "| rel. error vs band |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['seq']} | {r['mode']} | {r['attention']} | failed: {r['error']} | | | | |")
            continue
        err = f"{r['rel_err_vs_band']:.1e}" if "rel_err_vs_band" in r else ""
        print(f"| {r['seq']} ({r['seq'] // r['window']}W) | {r['mode']} | {r['attention']} | {r['tokens_per_s']:.0f} "
              f"| {r['median_tokens_per_s']:.0f} | {r['step_mem_mib']:.0f} | {r['first_step_s']:.1f} | {err} |")


if __name__ == "__main__":
    main()
