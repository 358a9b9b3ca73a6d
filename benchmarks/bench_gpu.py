"""One prepared GPU check (issue 15): seven stages in <= 8 minutes on one H100/H200, one JSON + one markdown table.

    bash benchmarks/gpu.sh                    # on the GPU machine: gpu.json + gpu.md into $OUT (else out/gpu)
    bash benchmarks/gpu.sh --dry-run          # every stage at toy sizes on the CPU, < 3 minutes (the test suite's)
    python benchmarks/bench_gpu.py --stages flash mfu --budget 300    # some stages, another time budget

Stages at GPU sizes (--dry-run: the tiny preset on the CPU, a few hundred tokens, the same code):
  env        torch, CUDA, device, and the dense bf16 peak that MFU is measured against
  flash      attention under sdpa_kernel([FLASH_ATTENTION]) alone, at T = 4,096 and 32,768, bf16, two 1B-shaped
             layers: training (distributed.build_model: FSDP2 bf16 compute, forward + backward) and evaluation (bf16
             weights: evaluate.window_nll, then greedy decoding with the KV cache). A fall-back is an error.
  precision  bf16 vs fp32 logits of the 1B preset (random weights, T = 2,048): max and mean relative difference
  mfu        train.train_step on the 1B preset at window 2,048 (PoSE, L_t 16k), with and without --compile and
             --activation-checkpointing, each at the largest micro-batch that fits (doubling until out of
             memory; --compile reuses its eager twin's). MFU = tokens/s x (6N + 12 L H Q T) / 989 TFLOP/s
  fig3       the paper's Fig. 3: PoSE (L_c 2,048) vs Full-length at L_t = 8k, 16k, 32k, 64k, micro-batch 1,
             activation checkpointing on: s/step and peak memory (out of memory is a result, recorded as such),
             and beside it plan_gib, what `train.py --plan` estimates for the same run (plan.py; the driver)
  eval       evaluate.py's perplexity window at 32k, 64k and 128k tokens: the 1B preset and a Llama-2-7b-shaped
             model, bf16 random weights: s, tokens/s, peak memory
  sliding    benchmarks/bench_sliding.py --cuda --json, when that file exists (its rows as it prints them)
Goals (checked at the end of the table): flash everywhere; MFU >= 45% of 989 TFLOP/s at 1B / 2k; PoSE's s/step
and peak memory at 64k within 5% of 8k; the 7B model's 128k window within 40 GB.

Each stage runs in its own process under a deadline (what is left of --budget, keeping a little for the stages
after it, at most the stage's own cap): an error, out-of-memory or timeout is recorded and the next stage runs;
a stage that no longer fits is skipped with a note. Rows stream out as JSON lines, so a stage cut short keeps
what it measured. The dry run makes a few configurations pretend to run out of memory, so that the recovery
paths run too. Peak memory is torch.cuda.max_memory_allocated; on the CPU the process's peak RSS.
"""
import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402
import plan  # noqa: E402
import distributed  # noqa: E402
import metrics  # noqa: E402
import options  # noqa: E402
import train  # noqa: E402
from bench_evaluate import build, cell  # noqa: E402
from bench_train import synthetic_documents, time_steps  # noqa: E402
from generate import generate  # noqa: E402
from hf import PRESETS, args_from_config  # noqa: E402
from rope import rope_parameters  # noqa: E402

GPU = dict(device="cuda", preset="1b", budget=470, reserve=20,  # seconds: all stages, kept per later stage
           flash_layers=2, flash_lengths=(4096, 32768), precision_length=2048,
           window=2048, mfu_target=16384, max_micro_batch=64, steps=3,
           fig3_targets=(8192, 16384, 32768, 65536), fig3_steps=2,
           eval_configs=("1b", "7b"), eval_lengths=(32768, 65536, 131072),
           caps=dict(env=60, flash=90, precision=60, mfu=200, fig3=150, eval=120, sliding=90),
           pretend_oom=())
DRY = dict(device="cpu", preset="tiny", budget=170, reserve=5,
           flash_layers=2, flash_lengths=(256, 1024), precision_length=256,
           window=64, mfu_target=512, max_micro_batch=8, steps=1,
           fig3_targets=(256, 512, 1024, 2048), fig3_steps=1,
           eval_configs=("tiny", "small"), eval_lengths=(512, 1024, 2048),
           caps=dict(env=30, flash=40, precision=30, mfu=120, fig3=60, eval=40, sliding=45),
           # (stage, what) pairs that raise torch.OutOfMemoryError on the CPU, to run the recovery code; mfu's
           # (compile, checkpointing, micro-batch) ones leave both compiled runs at micro-batch 1: one compile
           pretend_oom=(("mfu", (False, False, 4)), ("mfu", (False, True, 2)), ("mfu", (True, False, 2)),
                        ("fig3", ("full", 2048)), ("eval", ("small", 2048))))
STAGES = tuple(GPU["caps"])
GOAL_MFU, GOAL_FLAT, GOAL_7B_BYTES = 0.45, 1.05, 40e9


# ---------------------------------------------------------------- the stages (each runs in its own process)

def emit(**row):
    """One result row on stdout, as a JSON line the driver collects (everything else goes to stderr)."""
    print(json.dumps(row, default=str), flush=True)


def pretend_oom(S, stage, what):
    if (stage, what) in S["pretend_oom"]:
        raise torch.OutOfMemoryError(f"dry run: {what} pretends not to fit")


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def train_setup(S, method: str, target: int, micro=1, compile_=False, ac=False, layers=None, window=None):
    """train.py's options, model and optimizer as train() builds them on a GPU: FSDP2 over a one-rank mesh (bf16
    compute from fp32 masters; the dry run shards over one CPU rank, so the same wiring runs)."""
    window = window or S["window"]
    argv = ["--preset", S["preset"], "--window", str(window), "--target", str(target), "--method", method,
            "--batch-size", str(micro), "--micro-batch-size", str(micro),
            "--out", str(Path(tempfile.gettempdir()) / "bench-gpu-unused")]
    argv += ["--compile"] * compile_ + ["--activation-checkpointing"] * ac
    opts, config = options.resolve(options.parse_args(argv), 1)
    config = dict(config, max_position_embeddings=window, num_hidden_layers=layers or config["num_hidden_layers"])
    args = args_from_config(config)
    args = dataclasses.replace(args, rope=options.scaled_rope(args.rope, opts.rope, window, target),
                               max_position_embeddings=target)
    device = torch.device(S["device"])
    model = distributed.build_model(opts, args, device, train.init_device_mesh(device.type, (1,)))
    optim = distributed.build_optimizer(model, opts)
    return opts, model, optim


def with_micro_batch(opts, micro: int):
    return dataclasses.replace(opts, batch_size=micro, micro_batch_size=micro)


def stage_env(S):
    row = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "device": S["device"]}
    if S["device"] == "cuda":
        p = torch.cuda.get_device_properties(0)
        row.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   bf16_peak_tflops=metrics.peak_flops(torch.device("cuda")) / 1e12,
                   flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled())
    else:
        row.update(device=f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{torch.get_num_threads()} threads", bf16_peak_tflops="n/a (CPU)")
    emit(**row)


def only_flash():
    """SDPA with every kernel but flash disabled: a fall-back raises ("No available kernel"). A fresh context
    per use (sdpa_kernel's cannot be entered twice)."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def flash_train(S, T: int, list_kernels: bool) -> dict:
    """train.py's model (FSDP2: bf16 compute on the GPU), forward + backward of the loss at T tokens."""
    device = torch.device(S["device"])
    _, model, _ = train_setup(S, "plain", T, layers=S["flash_layers"], window=T)
    seen = []  # the dtype attention computes in (FSDP2 casts the fp32 masters for compute)
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    tokens = torch.randint(3, model.args.vocab_size, (1, T + 1), device=device)

    def forward_backward():
        with only_flash():
            sum_nll, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
            sum_nll.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return sum_nll

    t0 = time.perf_counter()
    ok = bool(torch.isfinite(forward_backward()))
    row = {"ok": ok, "seconds": time.perf_counter() - t0, "dtype": str(seen[0])}
    if list_kernels:  # their names, for the record (the proof is that nothing but flash was allowed to run)
        try:
            activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
            with profile(activities=activities) as prof:
                forward_backward()
            row["kernels"] = sorted({e.key[:60] for e in prof.key_averages() if "flash" in e.key.lower()
                                     and not e.key.startswith(("autograd::", "ScaledDotProduct"))})[:6]
        except Exception as e:  # noqa: BLE001  (a profiler that cannot run is no flash failure)
            row["kernels"] = f"profiler: {short(e)}"
    return row


def flash_eval(S, T: int) -> dict:
    """evaluate.py's path: bf16 weights, one perplexity window (inference mode, chunked loss) at T tokens, then
    greedy decoding with the KV cache (a T - 4 token prefill, then one token at a time)."""
    device = torch.device(S["device"])
    model = build(S["preset"], device, torch.bfloat16, T)
    model.model.layers = model.model.layers[:S["flash_layers"]]
    doc = np.random.default_rng(T).integers(3, model.args.vocab_size, size=T - 1)
    t0 = time.perf_counter()
    with only_flash():
        nll, n = evaluate.window_nll(model, doc, 0, T - 1, 0, 1, device)
        generate(model, torch.tensor(doc[None, :T - 4], device=device), 3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"ok": bool(np.isfinite(nll)) and n == T - 1, "seconds": seconds, "dtype": "torch.bfloat16"}


def stage_flash(S):
    for i, T in enumerate(S["flash_lengths"]):
        for path, measure in (("train: forward + backward", lambda T=T, i=i: flash_train(S, T, list_kernels=i == 0)),
                              ("evaluate: window + KV-cache decoding", lambda T=T: flash_eval(S, T))):
            try:
                row = measure()
            except Exception as e:  # noqa: BLE001  (any failure is the result)
                row = {"ok": False, "error": short(e)}
            free()
            emit(path=path, T=T, **row)


def stage_precision(S):
    """The same random 1B model in fp32, then cast to bf16 (flash): how far its logits move."""
    device, T = torch.device(S["device"]), S["precision_length"]
    model = build(S["preset"], device, torch.float32, T)
    tokens = torch.randint(3, model.args.vocab_size, (1, T), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        reference = model(tokens)  # [1, T, V] fp32 (fp32 attention: any kernel)
        model.to(torch.bfloat16)
        with only_flash():
            low = model(tokens)  # bf16 compute, logits returned in fp32
    diff = (low - reference).abs()
    emit(T=T, max_rel_diff=(diff.max() / reference.abs().max()).item(),
         mean_rel_diff=(diff.mean() / reference.abs().mean()).item(),
         top1_agreement=(low.argmax(-1) == reference.argmax(-1)).float().mean().item(),
         note="max abs difference / max abs fp32 logit, and mean / mean; random weights")


def timed(S, stage, what, model, optim, documents, opts):
    """bench_train.time_steps, or None when it runs out of memory (the model is then not to be trusted)."""
    try:
        pretend_oom(S, stage, what)
        return time_steps(model, optim, documents, opts, S["fig3_steps" if stage == "fig3" else "steps"])
    except torch.OutOfMemoryError:
        return None


def stage_mfu(S):
    device, target, deadline = torch.device(S["device"]), S["mfu_target"], S["deadline"]
    found = {}  # activation checkpointing -> the largest eager micro-batch that fit
    for compile_, ac in ((False, False), (False, True), (True, False), (True, True)):
        name = {"compile": compile_, "activation_checkpointing": ac}
        if time.time() > deadline - 10:
            emit(**name, skipped="time budget")
            continue
        try:
            opts, model, optim = train_setup(S, "pose", target, compile_=compile_, ac=ac)
            documents = synthetic_documents(model.args.vocab_size, target + 1, n=8)
            flops = metrics.flops_per_token(model, S["window"])
            best, oom_at = None, None
            micro = found.get(ac, 1) if compile_ else 1
            while 1 <= micro <= S["max_micro_batch"] and time.time() < deadline - 10:
                what = (compile_, ac, micro)
                result = timed(S, "mfu", what, model, optim, documents, with_micro_batch(opts, micro))
                if result is None:  # out of memory: drop this model; eager stops, compiled halves and retries
                    oom_at = micro
                    del model, optim
                    free()
                    if not compile_ or micro == 1:
                        break
                    micro //= 2
                    opts, model, optim = train_setup(S, "pose", target, compile_=compile_, ac=ac)
                    continue
                best = {"micro_batch": micro, **result}
                if compile_:
                    break
                micro *= 2
            if best is None:
                emit(**name, oom=True, oom_at_micro_batch=oom_at)
                continue
            found.setdefault(ac, best["micro_batch"])
            mfu = best["tokens_per_s"] * flops / metrics.peak_flops(device) if device.type == "cuda" else None
            emit(**name, **best, mfu=mfu, oom_at_micro_batch=oom_at)
        except Exception as e:  # noqa: BLE001
            emit(**name, error=short(e))
        finally:
            model = optim = None
            free()


def stage_fig3(S):
    """PoSE's rows first (the goal), then Full-length's, shortest first; one model, its rope rescaled per L_t."""
    device, window = torch.device(S["device"]), S["window"]
    base = rope_parameters(dict(PRESETS[S["preset"]], max_position_embeddings=window))  # the preset's own RoPE
    documents, model = None, None
    for method in ("pose", "full"):
        for target in S["fig3_targets"]:
            row = {"method": method, "window": window, "target": target}
            if time.time() > S["deadline"] - 10:
                emit(**row, skipped="time budget")
                continue
            try:
                if model is None:
                    opts, model, optim = train_setup(S, method, max(S["fig3_targets"]), ac=True)
                    documents = documents or synthetic_documents(model.args.vocab_size, max(S["fig3_targets"]), n=4)
                opts, _ = options.resolve(dataclasses.replace(opts, method=method, target=target), 1)
                model.set_rope(options.scaled_rope(base, "linear", window, target))  # alpha = L_t / L_c
                result = timed(S, "fig3", (method, target), model, optim, documents, opts)
                if result is None:
                    emit(**row, oom=True)
                    model = optim = None  # rebuilt for the next row
                    free()
                    continue
                length = target if method == "full" else window
                mfu = result["tokens_per_s"] * metrics.flops_per_token(model, length) / metrics.peak_flops(device) \
                    if device.type == "cuda" else None
                emit(**row, **result, mfu=mfu)
            except Exception as e:  # noqa: BLE001
                emit(**row, error=short(e))
                model = optim = None
                free()


def stage_eval(S):
    device = torch.device(S["device"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name in S["eval_configs"]:
        model = None
        try:
            model = build(name, device, dtype, max(S["eval_lengths"]))
            weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
            cell(model, min(S["eval_lengths"]) // 8, device)  # warm-up
        except Exception as e:  # noqa: BLE001
            emit(config=name, error=short(e))
            continue
        for length in S["eval_lengths"]:
            row = {"config": name, "length": length, "dtype": str(dtype), "weights_gib": weights}
            if time.time() > S["deadline"] - 5:
                emit(**row, skipped="time budget")
                continue
            try:
                pretend_oom(S, "eval", (name, length))
                emit(**{**row, **cell(model, length, device)})
            except torch.OutOfMemoryError:
                emit(**row, oom=True)
                free()
            except Exception as e:  # noqa: BLE001
                emit(**row, error=short(e))
        model = None
        free()


def stage_sliding(S):
    """The sliding-window benchmark's own rows (another engineer's file: called only when it exists)."""
    script = ROOT / "benchmarks" / "bench_sliding.py"
    if not script.exists():
        return emit(skipped="benchmarks/bench_sliding.py does not exist")
    args = ["--cuda", "--json"] if S["device"] == "cuda" else ["--json", "--window", "64", "--seqs", "256",
                                                                 "--steps", "1", "--attentions", "band"]
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # pass its rows on as they come: a timeout keeps those printed so far
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict):
                emit(**row)
    if proc.wait():
        raise SystemExit(f"bench_sliding.py exited with {proc.returncode}")


def run_stage(name: str, S: dict):
    if S["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (use --dry-run on a CPU)")
    with distributed.distributed() if name in ("flash", "mfu", "fig3") else contextlib.nullcontext():
        globals()[f"stage_{name}"](S)


# ---------------------------------------------------------------- the driver

def run_stages(S: dict, stages, dry: bool) -> dict:
    """Every stage in its own process under what is left of the budget; returns {stage: result}."""
    start, results = time.monotonic(), {}
    sliding = (ROOT / "benchmarks" / "bench_sliding.py").exists()
    for i, name in enumerate(stages):
        later = [s for s in stages[i + 1:] if s != "sliding" or sliding]
        left = S["budget"] - (time.monotonic() - start) - S["reserve"] * len(later)
        timeout = min(S["caps"][name], left)
        if timeout < S["reserve"]:
            results[name] = {"status": "skipped", "note": f"time budget: {left:.0f} s left for it", "rows": []}
            print(f"[{name}] skipped (time budget)", file=sys.stderr, flush=True)
            continue
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if dry:
            env.setdefault("OMP_NUM_THREADS", "1")  # a shared CPU runs one thread per process fastest
        cmd = [sys.executable, __file__, "--run-stage", name, "--deadline", str(time.time() + timeout)]
        cmd += ["--dry-run"] * dry
        print(f"[{name}] up to {timeout:.0f} s ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        # Its own session, so that a timeout ends the stage's children too (compile workers, bench_sliding.py).
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            status = "timeout"
        rows = []
        for line in out.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if isinstance(row := json.loads(line), dict):
                    rows.append(row)
        results[name] = {"status": status, "seconds": round(time.monotonic() - t0, 1), "rows": rows}
        if status != "ok":
            results[name]["note"] = (f"timed out after {timeout:.0f} s" if status == "timeout" else
                                     f"exit {proc.returncode}") + ": " + " | ".join(err.strip().splitlines()[-3:])
        print(f"[{name}] {status} in {results[name]['seconds']} s, {len(rows)} rows", file=sys.stderr, flush=True)
    return results


def add_plans(results: dict, S: dict):
    """`train.py --plan`'s per-rank peak beside each measured fig3 row (the same run: its preset, window, target,
    method, micro-batch 1, activation checkpointing, world 1), so that the first run on a GPU calibrates the
    estimate. Planned here in the driver (fake ranks need a process without a process group); the GPU's policy
    (bf16 compute) on a GPU, the CPU's (fp32) in the dry run, as the measured run computes."""
    for row in results.get("fig3", {}).get("rows", []):
        if "peak_mem_gib" not in row:
            continue
        argv = ["--plan", "--preset", S["preset"], "--window", str(row["window"]), "--target", str(row["target"]),
                "--method", row["method"], "--batch-size", "1", "--micro-batch-size", "1",
                "--activation-checkpointing"]
        try:
            row["plan_gib"] = plan.estimate(options.parse_args(argv), 1, cuda=S["device"] == "cuda")["peak_gib"]
        except Exception as e:  # noqa: BLE001  (a plan that fails is no measurement lost)
            row["plan_gib"] = short(e)


def goals(results: dict, S: dict, dry: bool) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) rows; a goal whose stage did not report is "not measured"."""
    rows = lambda stage: results.get(stage, {}).get("rows", [])  # noqa: E731
    out = []
    flash = rows("flash")
    out.append(("flash attention everywhere (train fwd+bwd, evaluation, decoding)",
                f"{sum(r.get('ok', False) for r in flash)} of {len(flash)} paths ran flash-only",
                "not measured" if not flash else "met" if all(r.get("ok") for r in flash) else "MISSED"))
    mfus = [r["mfu"] for r in rows("mfu") if r.get("mfu") is not None]
    out.append((f"MFU >= {GOAL_MFU:.0%} of 989 TFLOP/s at 1B / 2k", f"best {max(mfus):.1%}" if mfus else "n/a",
                "not measured" if not mfus else "met" if max(mfus) >= GOAL_MFU else "MISSED"))
    pose = {r["target"]: r for r in rows("fig3") if r.get("method") == "pose" and "s_per_step" in r}
    if len(pose) >= 2:
        lo, hi = pose[min(pose)], pose[max(pose)]
        t, m = hi["s_per_step"] / lo["s_per_step"], hi["peak_mem_gib"] / lo["peak_mem_gib"]
        out.append((f"PoSE's s/step and memory at L_t {max(pose):,} within 5% of {min(pose):,}",
                    f"time x{t:.3f}, memory x{m:.3f}", "met" if max(t, m) <= GOAL_FLAT else "MISSED"))
    else:
        out.append(("PoSE's s/step and memory at 64k within 5% of 8k", "n/a", "not measured"))
    big = [r for r in rows("eval") if r.get("config") == S["eval_configs"][-1] and "peak_mem_gib" in r]
    top = max(big, key=lambda r: r["length"]) if big else None
    out.append((f"7B evaluated at 128k within {GOAL_7B_BYTES / 1e9:.0f} GB",
                f"{top['peak_mem_gib'] * 2**30 / 1e9:.1f} GB at {top['length']:,}" if top else "n/a",
                "not measured" if not top else "met" if top["peak_mem_gib"] * 2**30 <= GOAL_7B_BYTES else "MISSED"))
    if dry:
        out = [(goal, measured, "not meaningful (dry run on a CPU)") for goal, measured, _ in out]
    return out


def cell_text(key: str, value) -> str:
    if value is None:
        return "n/a (CPU)" if key == "mfu" else ""
    if key == "mfu" and isinstance(value, float):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value).replace("|", "/")


def markdown(results: dict, goal_rows, dry: bool, budget: float) -> str:
    lines = [f"# benchmarks/gpu.sh{' --dry-run (toy sizes on a CPU: no number here means anything)' if dry else ''}",
             "", f"time budget {budget:.0f} s; stages: " + ", ".join(
                 f"{n} {r['status']}" + (f" ({r['seconds']} s)" if "seconds" in r else "") for n, r in results.items()),
             ""]
    for name, r in results.items():
        lines += [f"## {name}: {r['status']}" + (f" ({r['note']})" if r.get("note") else ""), ""]
        keys = list(dict.fromkeys(k for row in r["rows"] for k in row))
        if r["rows"]:
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(cell_text(k, row.get(k, "")) for k in keys) + " |" for row in r["rows"]]
            lines.append("")
    lines += ["## goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in goal_rows]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str):
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (MFU not meaningful)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--budget", type=float, help="seconds for all stages (GPU 470, dry run 170)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "out" / "gpu"), help="gpu.json, gpu.md")
    p.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: one stage, JSON lines out
    p.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    o = p.parse_args()
    S = dict(DRY if o.dry_run else GPU, deadline=o.deadline)
    if o.budget is not None:  # the stages' caps scale with it
        S["caps"] = {k: v * o.budget / S["budget"] for k, v in S["caps"].items()}
        S["budget"] = o.budget
    if o.run_stage:
        return run_stage(o.run_stage, S)
    results = run_stages(S, o.stages, o.dry_run)
    add_plans(results, S)
    goal_rows = goals(results, S, o.dry_run)
    text = markdown(results, goal_rows, o.dry_run, S["budget"])
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gpu.json", json.dumps({"dry_run": o.dry_run, "budget_s": S["budget"], "stages": results,
                                                "goals": [dict(zip(("goal", "measured", "verdict"), g))
                                                          for g in goal_rows]}, indent=1, default=str) + "\n")
    write_atomic(out / "gpu.md", text)
    print(text, end="")
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
