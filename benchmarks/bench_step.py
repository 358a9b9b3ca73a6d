"""train.py's optimizer step against the same step written with transformers, on the CPU (issue 15).

    python benchmarks/bench_step.py               # 3 interleaved rounds of fresh processes; prints the ratio table
    python benchmarks/bench_step.py --compile     # adds train.py --compile: compile time (cold cache), break-even
    python benchmarks/bench_step.py --profile     # torch.profiler, each side: time by step region and by operator
    python benchmarks/bench_step.py --paired --steps 16   # the sides take turns in one process (busy machine)
    python benchmarks/bench_step.py --hf-kept     # adds the transformers step under train.py's malloc setting

The step: --preset tiny --window 1024 --target 1024 --method plain --batch-size 2 --micro-batch-size 2, fp32.
ours = distributed.build_model + distributed.build_optimizer + train.train_step (forward, loss, backward, clip,
AdamW) on a batch from train.make_batch; hf = transformers' LlamaForCausalLM of the same shape (attn_implementation
"sdpa") + torch.optim.AdamW (torch's defaults) + clip_grad_norm_(1.0), on the same tokens (labels = tokens: HF shifts).
transformers is never a dependency of the project; it runs from a side venv (--hf-python, default $HF_PYTHON or
/work/venvs/speed/bin/python), made once with
    python3 -m venv /work/venvs/speed && /work/venvs/speed/bin/pip install torch==2.13.0 &&
    /work/venvs/speed/bin/pip install transformers numpy sentencepiece safetensors
Each measurement is a fresh process (--one SIDE); the sides alternate within a round and the order flips every
round, all with the same OMP_NUM_THREADS. Per round: the median of --steps timed steps after --warmup, and the
ratio ours / hf. Wall time is what counts on an idle machine; CPU time (process_time) is printed beside it
because on a shared box it moves less with the load (with one thread it is the step's own work); so are the
minor page faults per step. train.py's sides run distributed.keep_freed_memory() as train() does on a CPU (glibc
keeps what a step frees); hf_kept is the transformers step with the same setting, which separates what the
process's malloc buys from what the step's code does. --paired runs every side in one process, so all of them
share train.py's malloc setting there.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import distributed  # noqa: E402
import options  # noqa: E402
import train  # noqa: E402
from hf import args_from_config  # noqa: E402
from model import Transformer  # noqa: E402

STEP = ["--preset", "tiny", "--window", "1024", "--target", "1024", "--method", "plain", "--batch-size", "2",
        "--micro-batch-size", "2"]
SIDES = {"ours": "train.py", "hf": "transformers + AdamW", "compiled": "train.py --compile",
         "hf_kept": "transformers + AdamW, freed memory kept"}


def setup(side: str, out: str):
    """(step(batch), documents, opts) for one side, built as train.py builds it (or as transformers users do)."""
    flags = STEP + ["--out", out] + (["--compile"] * (side == "compiled"))
    opts, config = options.resolve(options.parse_args(flags), 1)
    config["max_position_embeddings"] = opts.window  # as train() does for a from-scratch preset
    args = args_from_config(config)
    rng = np.random.default_rng(0)  # 256 documents of BOS + 1.1k-4k random ids: every window is a full 1,024
    documents = [np.concatenate([[1], rng.integers(3, args.vocab_size, size=n)]) for n in rng.integers(1100, 4000, 256)]
    torch.manual_seed(0)
    if side != "hf":  # train() does this for a CPU run; hf_kept: the transformers step under the same malloc
        distributed.keep_freed_memory()
    if side.startswith("hf"):
        from transformers import LlamaConfig, LlamaForCausalLM
        model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).train()
        optim = torch.optim.AdamW(model.parameters(), lr=opts.lr)  # torch's defaults otherwise, as train.py

        def step(batch):
            tokens = batch[0]
            model(input_ids=tokens, labels=tokens).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optim.step()
            optim.zero_grad(set_to_none=True)
    else:
        model = distributed.build_model(opts, args, torch.device("cpu"), None)  # one CPU process: no FSDP2, as train()
        optim = distributed.build_optimizer(model, opts)

        def step(batch):
            train.train_step(model, optim, [batch], opts.grad_clip)
    return model, step, documents, opts


def measure(side: str, steps: int, warmup: int) -> dict:
    """Median wall / CPU seconds of `steps` steps after `warmup` (the first one includes any compiling)."""
    with distributed.distributed(), tempfile.TemporaryDirectory() as out:
        _, step, documents, opts = setup(side, out)
        wall, cpu, data, faults = [], [], [], []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            batch = train.make_batch(documents, opts, 0, i, 0, 1)
            t1, c1, f1 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step(batch)
            wall.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c1)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f1)  # pages the kernel handed in
            data.append(t1 - t0)
    return {"side": side, "wall_s": float(np.median(wall[warmup:])), "cpu_s": float(np.median(cpu[warmup:])),
            "first_step_s": wall[0], "data_s": float(np.median(data[warmup:])), "threads": torch.get_num_threads(),
            "faults": float(np.median(faults[warmup:]))}


def median_interval(ratios, draws: int = 10_000) -> tuple[float, float]:
    """95% bootstrap interval of the median of per-round ratios (rounds resampled with replacement, fixed seed):
    how far this VM's drift between processes leaves the median uncertain."""
    medians = np.median(np.random.default_rng(0).choice(ratios, size=(draws, len(ratios))), axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def paired(steps: int, warmup: int, compiled: bool) -> dict:
    """All sides in one process, taking turns step by step (the order rotates every step): each round saw the
    same load, so the per-round ratio holds still on a busy machine (at the price of a shared allocator)."""
    names = ("ours", "hf") + ("compiled",) * compiled
    with distributed.distributed(), tempfile.TemporaryDirectory() as out:
        sides = {side: setup(side, out) for side in names}
        times = {side: [] for side in names}
        for i in range(warmup + steps):
            for side in names[i % len(names):] + names[:i % len(names)]:
                _, step, documents, opts = sides[side]
                batch = train.make_batch(documents, opts, 0, i, 0, 1)
                t, c = time.perf_counter(), time.process_time()
                step(batch)
                times[side].append((time.perf_counter() - t, time.process_time() - c))
    t = {side: np.array(times[side]) for side in names}  # [warmup + steps, (wall, cpu)]
    row = {"pairs": steps, "threads": torch.get_num_threads()}
    for side in names:
        row[side] = {"wall_s": float(np.median(t[side][warmup:, 0])), "first_step_s": float(t[side][0, 0]),
                     "wall_ratio": float(np.median(t[side][warmup:, 0] / t["hf"][warmup:, 0])),
                     "cpu_ratio": float(np.median(t[side][warmup:, 1] / t["hf"][warmup:, 1]))}
    return row


def profile(side: str, steps: int, warmup: int, top: int):
    """Print where one side's step goes: time by region (record_function labels) and the top operators."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def labelled(name, fn):
        def wrapped(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)
        return wrapped

    with distributed.distributed(), tempfile.TemporaryDirectory() as out:
        model, step, documents, opts = setup(side, out)
        # Regions by labelling what the step calls; the optimizer labels itself ("Optimizer.step#AdamW.step").
        torch.Tensor.backward = labelled("backward", torch.Tensor.backward)
        torch.nn.utils.clip_grad_norm_ = labelled("clip", torch.nn.utils.clip_grad_norm_)
        if side == "hf":
            model.model.forward = labelled("forward", model.model.forward)  # the blocks; lm_head + loss follow
        else:
            Transformer.hidden = labelled("forward", Transformer.hidden)
            Transformer._chunk_nll = labelled("loss", Transformer._chunk_nll)
        for i in range(warmup):
            step(train.make_batch(documents, opts, 0, i, 0, 1))
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(warmup, warmup + steps):
                with record_function("data"):
                    batch = train.make_batch(documents, opts, 0, i, 0, 1)
                with record_function("step"):
                    step(batch)
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e3 / steps for e in events}  # ms per step, children included
    regions = {"data": total.get("data", 0), "step": total["step"], "forward (blocks)": total["forward"],
               "backward": total["backward"], "clip": total["clip"],
               "optimizer": sum(v for k, v in total.items() if k.startswith("Optimizer.")),
               "FSDP hooks (inside the above)": sum(v for k, v in total.items() if k.startswith("FSDP::"))}
    if side == "hf":  # HF's loss is what its forward does after the blocks: lm_head + shift + cross-entropy
        regions["loss (lm_head + cross-entropy)"] = total["step"] - sum(
            regions[k] for k in ("forward (blocks)", "backward", "clip", "optimizer"))
    else:
        regions["loss (lm_head + cross-entropy)"] = total["loss"]
    print(f"\n### {SIDES[side]}: ms per step by region (mean of {steps} steps, wall time inside the region)\n")
    print("| region | ms / step |\n|---|---|")
    for name, ms in regions.items():
        print(f"| {name} | {ms:.1f} |")
    ops = sorted((e for e in events if not e.key.startswith(("data", "step", "forward", "backward", "clip", "loss",
                                                               "Optimizer.", "ProfilerStep"))),
                 key=lambda e: -e.self_cpu_time_total)[:top]
    print(f"\n### {SIDES[side]}: top {top} operators by self time\n")
    print("| operator | self ms / step | calls / step |\n|---|---|---|")
    for e in ops:
        print(f"| {e.key[:70]} | {e.self_cpu_time_total / 1e3 / steps:.1f} | {e.count / steps:.0f} |")


def run_one(side: str, o, cache: str | None = None) -> dict:
    python = o.hf_python if side in ("hf", "hf_kept", "paired") else sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(o.threads), "PYTHONWARNINGS": "ignore"}
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    cmd = [python, __file__, "--one", side, "--steps", str(o.steps), "--warmup", str(o.warmup)]
    cmd += ["--compile"] * (side == "paired" and o.compile)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"error: {side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(o) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={o.threads}, "
            f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each: one fresh process per side)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, compile)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every measured process")
    p.add_argument("--compile", action="store_true", help="also time train.py --compile (fresh inductor cache)")
    p.add_argument("--profile", action="store_true", help="profile each side once instead of timing rounds")
    p.add_argument("--top", type=int, default=15, help="--profile: operators listed")
    p.add_argument("--hf-python", default=os.environ.get("HF_PYTHON", "/work/venvs/speed/bin/python"))
    p.add_argument("--paired", action="store_true", help="both sides in one process, step by step (busy box)")
    p.add_argument("--hf-kept", action="store_true",
                   help="also time the transformers step with train.py's malloc setting (keep_freed_memory)")
    p.add_argument("--one", choices=tuple(SIDES) + ("paired",), help=argparse.SUPPRESS)  # internal: JSON out
    o = p.parse_args()
    if o.one and o.profile:
        return profile(o.one, o.steps, o.warmup, o.top)
    if o.one == "paired":
        return print(json.dumps(paired(o.steps, o.warmup, o.compile)))
    if o.one:
        return print(json.dumps(measure(o.one, o.steps, o.warmup)))
    if not Path(o.hf_python).exists():
        sys.exit(f"error: --hf-python {o.hf_python} not found (the side venv with transformers; see --help)")
    print(f"machine: {machine(o)}")
    if o.profile:
        for side in ("ours", "hf"):
            env = {**os.environ, "OMP_NUM_THREADS": str(o.threads), "PYTHONWARNINGS": "ignore"}
            python = o.hf_python if side == "hf" else sys.executable
            subprocess.run([python, __file__, "--one", side, "--profile", "--steps", str(o.steps), "--warmup",
                            str(o.warmup), "--top", str(o.top)], env=env, check=True)
        return
    if o.paired:  # transformers' venv runs our code too (it has torch, numpy, sentencepiece, safetensors)
        with tempfile.TemporaryDirectory() as cache:
            r = run_one("paired", o, cache)
        print(f"all sides in one process, taking turns; {r['pairs']} rounds after {o.warmup}; "
              f"load average after {os.getloadavg()[0]:.1f}\n")
        print("| side | ms / step (median) | ratio to transformers (median of rounds) | CPU-time ratio | "
              "first step s |")
        print("|---|---|---|---|---|")
        for side in [k for k in SIDES if k in r]:
            x = r[side]
            print(f"| {SIDES[side]} | {1e3 * x['wall_s']:.0f} | {x['wall_ratio']:.3f} | {x['cpu_ratio']:.3f} | "
                  f"{x['first_step_s']:.1f} |")
        if o.compile:  # the first step compiles (fresh inductor cache); the break-even is against eager train.py
            gain = r["ours"]["wall_s"] - r["compiled"]["wall_s"]
            compile_s = r["compiled"]["first_step_s"] - r["compiled"]["wall_s"]
            even = f"{compile_s / gain:.0f} steps" if gain > 0 else "never (no gain per step)"
            print(f"\n--compile: compile time {compile_s:.1f} s (cold cache); saves {1e3 * gain:.0f} ms / step; "
                  f"break-even after {even}")
        return
    sides = ["ours", "hf"] + ["compiled"] * o.compile + ["hf_kept"] * o.hf_kept
    rows = []
    for r in range(o.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            with tempfile.TemporaryDirectory() as cache:  # a fresh inductor cache: the compile a new run pays
                rows.append({**run_one(side, o, cache if side == "compiled" else None), "round": r + 1})
            print(f"  round {r + 1} {side}: {1e3 * rows[-1]['wall_s']:.0f} ms", file=sys.stderr, flush=True)
    print(f"after: load average {os.getloadavg()[0]:.1f}; {o.steps} timed steps after {o.warmup} per process; "
          "ratio: to the transformers step of the same round; faults: minor page faults per step\n")
    get = {(row["round"], row["side"]): row for row in rows}
    rounds = range(1, o.rounds + 1)
    ratio = {side: [get[r, side]["wall_s"] / get[r, "hf"]["wall_s"] for r in rounds] for side in sides}
    cpu_ratio = {side: [get[r, side]["cpu_s"] / get[r, "hf"]["cpu_s"] for r in rounds] for side in sides}
    print("| round | " + " | ".join(f"{SIDES[side]}: ms, faults" + ", ratio" * (side != "hf") for side in sides)
          + " | CPU-time ratio, train.py |")
    print("|---" * (len(sides) + 2) + "|")
    for i, r in enumerate(rounds):
        cells = [f"{1e3 * get[r, side]['wall_s']:.0f}, {get[r, side]['faults']:.0f}"
                 + (f", {ratio[side][i]:.3f}" if side != "hf" else "") for side in sides]
        print(f"| {r} | " + " | ".join(cells) + f" | {cpu_ratio['ours'][i]:.3f} |")
    for side in sides:
        if side != "hf":
            low, high = median_interval(ratio[side])
            print(f"median ratio {SIDES[side]} / transformers: wall {np.median(ratio[side]):.3f} (95% bootstrap "
                  f"interval {low:.3f}-{high:.3f}; {sum(r <= 0.9 for r in ratio[side])} of {o.rounds} rounds "
                  f"<= 0.9, issue 15's goal), CPU {np.median(cpu_ratio[side]):.3f}")
    if o.compile:  # the first step compiles (fresh inductor cache); the break-even is against eager train.py
        eager = np.median([get[r, "ours"]["wall_s"] for r in rounds])
        fast = np.median([get[r, "compiled"]["wall_s"] for r in rounds])
        compile_s = np.median([get[r, "compiled"]["first_step_s"] - get[r, "compiled"]["wall_s"] for r in rounds])
        gain = eager - fast
        even = f"{compile_s / gain:.0f} steps" if gain > 0 else "never (no gain per step)"
        print(f"--compile: compile time (first step - median step, cold cache) {compile_s:.1f} s; saves "
              f"{1e3 * gain:.0f} ms / step; break-even after {even}")

if __name__ == "__main__":
    main()
