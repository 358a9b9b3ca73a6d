"""The CPU path on a real model: prefill and training-step speed against this machine's measured matmul peak and
against transformers, fp32 vs bf16, 1 vs 2 threads (issue 33, item 4).

    python benchmarks/bench_cpu.py --model .cache/real/smollm2-135m                # the default grid, table + JSON
    python benchmarks/bench_cpu.py --model DIR --lengths 16384 --modes float32 bfloat16 --threads 1 --no-step
    python benchmarks/bench_cpu.py --model DIR --out bench_cpu.json --resume    # finish a grid cut short

Every cell is a fresh process (the weights and the allocator start cold alike), and for each configuration ours
and transformers' run back to back, the order flipping per configuration, so that their ratio saw the same load.
The matmul peak is measured by the same command in processes of its own, before and after the model cells.

What is timed (the median of --reps calls after a warm-up at 256 tokens; one call past 4,096 tokens):
  prefill  a forward of T tokens with no [T, V] logits, under inference_mode: model.hidden (evaluate.py's passkey
           and RULER prefill; its perplexity adds lm_head) and transformers' LlamaModel (use_cache False).
  step     forward + backward of the next-token loss over a window of T tokens (model.loss, chunked; HF's
           LlamaForCausalLM(labels=) forms [T, V] logits) with the gradients freed after: no optimizer.
Modes: float32; bfloat16 (the weights cast: every activation bf16, RMSNorm and RoPE math in fp32 inside); autocast
(fp32 weights, torch.autocast("cpu", bfloat16): matmuls in bf16, the rest fp32).

FLOPs (the usual model-FLOPs count, not what the kernels execute): N = non-embedding parameters (the blocks and
the final norm; the tied lm_head counted apart), T tokens, L layers, H heads of D, V vocabulary, d = width:
  prefill = 2 N T + 2 * 2 * (T^2 / 2) * H * D * L       (q k^T and p v, causal: half the T^2 scores)
  step    = 3 * (2 N T + 2 d V T + 2 * 2 * (T^2 / 2) * H * D * L)   (backward = 2 x forward; flash's recompute of
            the scores in backward is not counted)
Fraction of peak = (FLOPs / seconds) / the best GEMM GFLOP/s of the same dtype and threads (autocast: bf16's).

The attention kernel: torch.profiler's operator names in a 256-token forward (and backward for the step), e.g.
aten::_scaled_dot_product_flash_attention_for_cpu; and each cell's peak RSS above the loaded model (VmHWM reset
after loading), against the [H, T, T] fp32 scores a math kernel would hold (9.7 GB at 16k for SmolLM2-135M).
transformers runs from a side venv (--hf-python; never a dependency of the project).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("float32", "bfloat16", "autocast")
# GEMMs shaped like the model's (rows = tokens) and two square ones: [M, K] x [K, N].
GEMMS = {"[2048, 576] x [576, 1536] (gate/up)": (2048, 576, 1536),
         "[2048, 1536] x [1536, 576] (down)": (2048, 1536, 576), "[2048, 576] x [576, 576] (q/o)": (2048, 576, 576),
         "[2048, 576] x [576, 49152] (lm_head)": (2048, 576, 49152), "2048^3": (2048, 2048, 2048),
         "4096^3": (4096, 4096, 4096)}


# ---------------------------------------------------------------- one cell (a child process)

def gemm_cell(dtype: str, seconds: float = 1.0) -> dict:
    """GFLOP/s of each GEMMS shape: the best of 3 timings of as many calls as fill `seconds`."""
    import torch
    out = {}
    for name, (m, k, n) in GEMMS.items():
        a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
        a @ b
        best = float("inf")
        for _ in range(3):
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 3 or not calls:
                a @ b
                calls += 1
            best = min(best, (time.perf_counter() - t0) / calls)
        out[name] = 2 * m * k * n / best / 1e9
    return {"gflops": out, "peak_gflops": max(out.values())}


def vm_hwm_kib() -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        f.write("5")


def model_cell(impl: str, kind: str, mode: str, T: int, reps: int, folder: str, tokens_file: str,
               outputs: str) -> dict:
    """Seconds of one prefill or step of T tokens (the median of reps calls after a 256-token warm-up), the
    attention kernels it runs, its peak RSS above the loaded model, and its numbers (saved for the comparison)."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    ids = torch.from_numpy(np.load(tokens_file)[:T]).long()[None]  # [1, T] real text
    if impl == "ours":
        sys.path.insert(0, str(ROOT))
        from hf import from_pretrained
        model = from_pretrained(folder, dtype=dtype)

        def prefill(x):
            return model.hidden(x)

        def step(x):
            targets = torch.full_like(x, -100)
            targets[:, :-1] = x[:, 1:]
            total, n = model.loss(x, targets)
            loss = total / n
            loss.backward()
            return loss
    else:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")

        def prefill(x):
            return model.model(input_ids=x, use_cache=False).last_hidden_state

        def step(x):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
            return loss
    model.train(kind == "step")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast")

    def run(x):
        with autocast:
            if kind == "prefill":
                with torch.inference_mode():
                    return prefill(x)
            out = step(x)
            model.zero_grad(set_to_none=True)
            return out

    run(ids[:, :256])  # warm-up: kernels chosen, weights paged in
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(ids[:, :256])
    kernels = sorted({e.key for e in prof.key_averages() if "attention" in e.key or "softmax" in e.key
                      or e.key in ("aten::bmm", "aten::baddbmm")})
    reset_hwm()
    rss = vm_hwm_kib()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = run(ids)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = vm_hwm_kib() - rss
    if kind == "prefill":  # the last position's hidden state and its logits: what bf16 changes
        with torch.no_grad():
            h = out[0, -1].float()
            np.save(outputs, torch.cat([h, model.lm_head.weight.float() @ h]).numpy())
        value = None
    else:
        value = float(out)
    return {"seconds": float(np.median(wall)), "cpu_seconds": float(np.median(cpu)), "all_seconds": wall,
            "peak_rss_above_model_mib": peak / 1024, "kernels": kernels, "loss": value,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


# ---------------------------------------------------------------- the grid (the parent process)

def flops(config: dict, kind: str, T: int) -> float:
    d, L, H = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    Hkv, F, V = config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]
    D = config.get("head_dim") or d // H
    N = L * (d * H * D * 2 + d * Hkv * D * 2 + 3 * d * F + 2 * d) + d  # q, o; k, v; gate, up, down; 2 norms
    attention = 2 * 2 * (T * T / 2) * H * D * L
    if kind == "prefill":
        return 2 * N * T + attention
    return 3 * (2 * N * T + 2 * d * V * T + attention)


def run_child(python: str, spec: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "0"}
    done = subprocess.run([python, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def text_tokens(folder: str, n: int, path: str):
    """n token ids of real text (this repository's README.md, BENCHMARKS.md and the paper, repeated), saved as .npy."""
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from data import Tokenizer
    text = "\n\n".join(p.read_text() for p in (ROOT / "README.md", ROOT / "BENCHMARKS.md",
                                                Path("/work/shared/paper/pose-2309.10400.md")) if p.is_file())
    ids = Tokenizer(folder).encode(text, bos=False)
    np.save(path, np.resize(np.asarray(ids, dtype=np.int64), n))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".cache/real/smollm2-135m", help="a Hugging Face folder both sides load")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384], help="prefill lengths T")
    p.add_argument("--step-lengths", type=int, nargs="+", default=[1024, 2048], help="training-step windows T")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--impls", nargs="+", default=["ours", "hf"], choices=("ours", "hf"))
    p.add_argument("--reps", type=int, default=3, help="timed calls per cell up to 4,096 tokens (one past it)")
    p.add_argument("--no-step", action="store_true", help="prefill cells only")
    p.add_argument("--no-prefill", action="store_true", help="step cells only")
    p.add_argument("--hf-python", default=os.environ.get("HF_PYTHON", "/work/side/hfvenv/bin/python"))
    p.add_argument("--out", default="bench_cpu.json", help="results JSON, rewritten after every cell")
    p.add_argument("--resume", action="store_true", help="keep the cells --out already holds")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one cell, JSON out
    o = p.parse_args()
    if o.one:
        spec = json.loads(o.one)
        cell = gemm_cell(spec["dtype"]) if spec["kind"] == "gemm" else model_cell(**spec)
        return print(json.dumps(cell))
    config = json.loads((Path(o.model) / "config.json").read_text())
    out = Path(o.out)
    results = json.loads(out.read_text()) if o.resume and out.is_file() else {"cells": []}
    results.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", model=o.model,
                   command=" ".join(sys.argv))
    done = {json.dumps(c["spec"], sort_keys=True) for c in results["cells"] if "error" not in c["result"]}
    work = Path(tempfile.mkdtemp(prefix="bench_cpu-"))
    tokens = str(work / "tokens.npy")
    text_tokens(o.model, max(o.lengths + o.step_lengths), tokens)
    jobs = [dict(kind="gemm", dtype=dt, threads=t, when=w) for w in ("before", "after") for t in o.threads
            for dt in ("float32", "bfloat16")]
    configs = [("prefill", T) for T in o.lengths] * (not o.no_prefill) + [("step", T) for T in o.step_lengths] * \
        (not o.no_step)
    model_jobs = []
    for n, (kind, T, t, mode) in enumerate((kind, T, t, mode) for kind, T in configs for t in o.threads
                                           for mode in o.modes):
        impls = o.impls if n % 2 == 0 else o.impls[::-1]  # who goes first flips per configuration
        model_jobs += [dict(kind=kind, T=T, mode=mode, threads=t, impl=impl) for impl in impls]
    jobs = jobs[:len(jobs) // 2] + model_jobs + jobs[len(jobs) // 2:]
    for job in jobs:
        key = json.dumps(job, sort_keys=True)
        if key in done:
            continue
        threads = job["threads"]
        if job["kind"] == "gemm":
            spec = {"kind": "gemm", "dtype": job["dtype"]}
            python = sys.executable
        else:
            reps = o.reps if job["T"] <= 4096 else 1
            spec = dict(impl=job["impl"], kind=job["kind"], mode=job["mode"], T=job["T"], reps=reps, folder=o.model,
                        tokens_file=tokens, outputs=str(work / f"{job['impl']}-{job['kind']}-{job['mode']}-"
                                                          f"{job['T']}-{threads}.npy"))
            python = sys.executable if job["impl"] == "ours" else o.hf_python
        t0 = time.time()
        result = run_child(python, spec, threads)
        if job["kind"] == "prefill" and "error" not in result:  # keep the numbers for the fp32 comparison
            import numpy as np
            result["last"] = np.load(spec["outputs"]).tolist()
        results["cells"] = [c for c in results["cells"] if json.dumps(c["spec"], sort_keys=True) != key]
        results["cells"].append({"spec": job, "result": result, "load": os.getloadavg()[0], "started": t0})
        out.write_text(json.dumps(results) + "\n")
        print(f"{job}: {result.get('seconds', result.get('peak_gflops', result.get('error')))}", file=sys.stderr,
              flush=True)
    print(table(results, config))


def table(results: dict, config: dict) -> str:
    """The markdown tables of a results JSON: peaks, then each model cell with tok/s, GFLOP/s, % of peak, the
    ratio to transformers, the numbers' change against float32 and the attention kernels."""
    import numpy as np
    cells = results["cells"]
    peak = {}
    lines = [f"machine: {results['machine']}; model {results['model']}", "",
             "| GEMM (GFLOP/s) | threads | dtype | " + " | ".join(GEMMS) + " | when |", "|---" * (len(GEMMS) + 4) + "|"]
    for c in cells:
        s, r = c["spec"], c["result"]
        if s["kind"] == "gemm" and "error" not in r:
            key = (s["threads"], s["dtype"])
            peak[key] = max(peak.get(key, 0), r["peak_gflops"])
            lines.append(f"| | {s['threads']} | {s['dtype']} | " + " | ".join(f"{r['gflops'][g]:.0f}" for g in GEMMS)
                         + f" | {s['when']} (load {c['load']:.1f}) |")
    lines += ["", "| what | T | mode | threads | ours s | ours tok/s | GFLOP/s | % of peak | transformers s | ours / "
              "transformers | vs fp32 | peak RSS above model (MiB) | attention kernel |", "|---" * 13 + "|"]
    get = {(c["spec"]["kind"], c["spec"].get("T"), c["spec"].get("mode"), c["spec"]["threads"], c["spec"].get("impl")):
           c["result"] for c in cells}
    for (kind, T, mode, threads, impl), r in sorted(get.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if kind == "gemm" or impl != "ours":
            continue
        hf = get.get((kind, T, mode, threads, "hf"), {})
        if "error" in r:
            lines.append(f"| {kind} | {T} | {mode} | {threads} | error: {r['error']} |")
            continue
        gflops = flops(config, kind, T) / r["seconds"] / 1e9
        top = peak.get((threads, "float32" if mode == "float32" else "bfloat16"))
        ref = get.get((kind, T, "float32", threads, "ours"), {})
        if kind == "step":
            change = f"loss {r['loss'] - ref['loss']:+.2e}" if ref.get("loss") is not None and mode != "float32" else ""
        elif mode != "float32" and "last" in ref:
            a, b = np.array(r["last"]), np.array(ref["last"])
            d = config["hidden_size"]
            change = f"logits max {np.abs(a[d:] - b[d:]).max():.2e}"
        else:
            change = ""
        hf_s = f"{hf['seconds']:.1f}" if "seconds" in hf else hf.get("error", "-")[:40]
        ratio = f"{r['seconds'] / hf['seconds']:.2f}" if "seconds" in hf else "-"
        kernel = ", ".join(k.replace("aten::", "") for k in r["kernels"] if "attention" in k)
        lines.append(f"| {kind} | {T:,} | {mode} | {threads} | {r['seconds']:.1f} | {T / r['seconds']:.0f} | "
                     f"{gflops:.0f} | {100 * gflops / top:.0f} % | {hf_s} | {ratio} | {change} | "
                     f"{r['peak_rss_above_model_mib']:.0f} | {kernel} |" if top else "")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
