"""Will a run fit? `train.py --plan` measures one training step's per-GPU memory and FLOPs without a GPU.

    python train.py --plan --model ./Llama-2-7b-hf --target 16384 --world-size 8 --gpu-memory 80
    python train.py --plan --model ./Llama-2-7b-hf --method full --target 65536 --world-size 16 \\
        --activation-checkpointing --plan-json plan.json
    python -m pytest tests/test_plan.py -q          # the plan against measured runs; FSDP2's wiring at world 8

The run is built as train.py builds it: options.resolve (the same defaults and refusals), options.training_args
(the model, alpha = L_t / L_c on its rope), distributed.wrap_model (compile, then activation checkpointing, then
fully_shard per block and the root, loss() registered), FSDP2's GPU policy (bf16 compute from fp32 masters, fp32
gradient reduction), distributed.build_optimizer (fused AdamW). Only the machine is pretended: a "fake" process
group of N ranks (torch.testing's FakeStore: collectives return at once) and FakeTensorMode (tensors have shapes
and dtypes, no data), on the CPU. torch.distributed._tools' FSDPMemTracker then follows every tensor rank 0 would
hold through one micro-batch's forward and backward at the run's sequence length (the window for PoSE / RandPos /
plain, L_t for full-length), the gradient clipping and the optimizer step, and reports the peak by category.
FlopCounterMode counts the FLOPs of the same micro-batch (recomputation included). What the numbers are and are
not (steady state, the flash kernel, the optimizer step, what is not modelled and hence --gpu-memory's margin):
docs/plan.md.
"""
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from distributed import build_optimizer, mixed_precision, wrap_model
from metrics import count, flops_per_token
from options import TrainOptions, resolve, training_args

# --gpu-memory's verdict: fits when peak * (1 + MARGIN_FRACTION) + MARGIN_GIB <= the card's GiB. The fraction
# covers the allocator's fragmentation and the tracker's error against CUDA (issue 26: PyTorch's tests hold it to
# +-10%; not checked here), the constant the CUDA context (0.5-1 GiB) and the NCCL / cuBLAS workspaces. Neither
# is calibrated on a GPU yet.
MARGIN_FRACTION, MARGIN_GIB = 0.10, 2.0

# FSDPMemTracker's categories -> the JSON's keys, in the table's order
CATEGORIES = {"Sharded Param": "sharded_params", "Unsharded Param": "unsharded_params", "Buffer": "buffers",
              "Sharded Grad": "sharded_grads", "Unsharded Grad": "unsharded_grads", "All Gather": "all_gather",
              "Reduce Scatter": "reduce_scatter", "Activation": "activations", "Temp": "temporaries",
              "OptState": "optimizer_state", "Inputs": "inputs"}


def world_size(opts: TrainOptions) -> int:
    """--world-size, else the WORLD_SIZE torchrun would give, else 1."""
    n = opts.world_size if opts.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if n <= 0:
        raise ValueError(f"--world-size must be > 0, got {n}")
    return n


@contextlib.contextmanager
def fake_ranks(world: int):
    """This process as rank 0 of `world` ranks whose collectives return at once (FakeStore's "fake" backend)."""
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def _flash_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """The CPU flash kernel's forward FLOPs, as FlopCounterMode counts CUDA's (causal masking not discounted);
    grouped-query keys and values count once per query head, which is what the kernel multiplies."""
    b, h, t, d = query_shape
    return sdpa_flop_count(query_shape, (b, h, key_shape[2], d), (b, h, value_shape[2], value_shape[3]))


def _flash_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    b, h, t, d = query_shape
    return sdpa_backward_flop_count(grad_out_shape, query_shape, (b, h, key_shape[2], d),
                                    (b, h, value_shape[2], value_shape[3]))


FLASH_CPU_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_flops,
                   torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_cpu_backward_flops}


def measure(model, optim, batch, accum: int, grad_clip: float, count_flops: bool = True):
    """One steady-state micro-batch of train.train_step under the tracker: (peak snapshot {category: bytes},
    FLOPs of the micro-batch on this rank, or None without count_flops). `batch` = (tokens, targets, positions)."""
    for p in model.parameters():  # Adam's moments exist from step 1 on: create them, unmeasured
        p.grad = torch.zeros_like(p)
    optim.step()
    optim.zero_grad(set_to_none=accum == 1)  # accumulation: a later micro-batch starts with the summed shards
    tracker = FSDPMemTracker(model, optim)
    tracker.track_inputs(batch)
    with loss_as_forward(model), tracker:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # never the math kernel (module docstring)
            sum_nll, _ = model.loss(*batch)
            sum_nll.backward()
        # train.train_step's clipping, one tensor at a time: its foreach form over fake DTensors reads as a copy of
        # every gradient (an artifact: the real run shows none, tests/test_plan.py)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"), foreach=False)
        optim.step()
        optim.zero_grad(set_to_none=True)
    (peak,) = tracker.get_tracker_snapshot("peak").values()  # one device: rank 0's CPU
    if not count_flops:
        return peak, None
    # FLOPs in a pass of their own: FlopCounterMode's module tracking keeps tensors alive that the run frees
    # (measured: +4 MiB at the tiny preset's peak), so it never runs under the tracker.
    flops = FlopCounterMode(display=False, custom_mapping=FLASH_CPU_FLOPS)
    with flops, sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        model.loss(*batch)[0].backward()
    optim.zero_grad(set_to_none=True)
    return peak, flops.get_total_flops()


@contextlib.contextmanager
def loss_as_forward(model):
    """FSDPMemTracker follows FSDP2 through module forward hooks, but register_fsdp_forward_method makes loss()
    call the root's pre- / post-forward directly, out of the tracker's sight (it then fails in backward on a root
    it never saw). Inside this context model.loss(...) is model(...) with the plain loss as forward: the same
    FSDP2 pre- / post-forward, as hooks, around the same computation."""
    registered = model.loss
    model.forward, model.loss = type(model).loss.__get__(model), model.__call__
    try:
        yield model
    finally:
        del model.forward
        model.loss = registered


def estimate(opts: TrainOptions, world: int, cuda: bool = True, count_flops: bool = True) -> dict:
    """The plan of `opts` on `world` ranks: the numbers --plan prints and --plan-json writes. cuda=False plans
    the CPU's fp32 policy instead of the GPU's bf16 one (the tests compare that with measured CPU runs);
    count_flops=False skips the FLOP pass (flops_per_step None: it depends on the global batch, not the world)."""
    t0 = time.perf_counter()
    opts, config = resolve(dataclasses.replace(opts, plan=True), world)
    args = training_args(opts, config)
    length = opts.target if opts.method == "full" else opts.window  # tokens per sequence (full: at most)
    accum = opts.batch_size // (opts.micro_batch_size * world)
    with fake_ranks(world) as mesh, FakeTensorMode():
        model = wrap_model(opts, args, mesh, mixed_precision(cuda))
        model.to_empty(device="cpu")  # fake storage: nothing to initialise, nothing to load
        model._tie()
        optim = build_optimizer(model, opts)
        shape = (opts.micro_batch_size, length)
        tokens = torch.zeros(shape, dtype=torch.long)
        positions = torch.arange(length).expand(shape)  # PoSE's skipped ids cost what contiguous ones do
        try:
            peak, flops = measure(model, optim, (tokens, tokens, positions), accum, opts.grad_clip, count_flops)
        except RuntimeError as e:
            if "No available kernel" not in str(e):
                raise
            raise ValueError(f"--plan: no flash attention for this model at {length:,} tokens (a sliding window "
                             f"shorter than the sequence needs FlexAttention, which the plan does not run)") from None
        n_params = sum(p.numel() for p in model.parameters())
    categories = {CATEGORIES[str(k.value) if hasattr(k, "value") else str(k)]: v / 2**30
                  for k, v in peak.items() if k != "Total"}
    tokens_per_step = opts.batch_size * length
    return {"peak_gib": peak["Total"] / 2**30, "categories": categories, "world_size": world,
            "tokens_per_step": tokens_per_step, "flops_per_step": None if flops is None else flops * accum * world,
            "model_flops_per_step": flops_per_token(model, length) * tokens_per_step,
            "parameters": n_params, "sequence_length": length, "micro_batch_size": opts.micro_batch_size,
            "accumulation": accum, "method": opts.method, "window": opts.window, "target": opts.target,
            "activation_checkpointing": opts.activation_checkpointing, "compute": "bf16" if cuda else "fp32",
            "seconds": time.perf_counter() - t0}


def fits(peak_gib: float, gpu_memory: float) -> tuple[bool, float]:
    """(fits, the GiB the plan needs with its margin) on a card of gpu_memory GiB."""
    need = peak_gib * (1 + MARGIN_FRACTION) + MARGIN_GIB
    return need <= gpu_memory, need


def table(plan: dict, opts: TrainOptions) -> str:
    """What --plan prints: the run, the peak by category, tokens and FLOPs, and the verdict."""
    length = "L_t" if plan["method"] == "full" else "L_c"
    lines = [f"plan: {plan['method']} L_c {plan['window']:,} -> L_t {plan['target']:,}, {plan['world_size']} ranks x "
             f"micro-batch {plan['micro_batch_size']} x accumulation {plan['accumulation']} of {length} = "
             f"{plan['sequence_length']:,} tokens, activation checkpointing "
             f"{'on' if plan['activation_checkpointing'] else 'off'}, {plan['compute']} compute, "
             f"{count(plan['parameters'])} parameters",
             "", "| per rank, at the peak | GiB |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {gib:.2f} |" for name, gib in plan["categories"].items() if gib >= 5e-3]
    lines += [f"| **peak** | **{plan['peak_gib']:.2f}** |", "",
              f"tokens per step {plan['tokens_per_step']:,}; FLOPs per step {plan['flops_per_step']:.3g} counted "
              f"(all ranks, recomputation included), {plan['model_flops_per_step']:.3g} by 6N + 12 L H Q T"]
    if opts.gpu_memory is not None:
        ok, need = fits(plan["peak_gib"], opts.gpu_memory)
        lines.append(f"{'fits' if ok else 'does NOT fit'} in {opts.gpu_memory:g} GiB: needs {need:.1f} GiB = peak "
                     f"x {1 + MARGIN_FRACTION:g} + {MARGIN_GIB:g} GiB (CUDA context, NCCL / cuBLAS workspaces, "
                     "fragmentation: not measured)")
    if opts.compile:
        lines.append("--compile: planned with eager blocks (an upper bound: compiled blocks fuse elementwise ops)")
    lines.append(f"planned in {plan['seconds']:.1f} s on fake tensors (plan.py)")
    return "\n".join(lines)


def run(opts: TrainOptions) -> tuple[int, str | None]:
    """train.py --plan: (exit code, the last line), as train.run returns them; prints the table."""
    try:
        if opts.gpu_memory is not None and opts.gpu_memory <= 0:
            raise ValueError(f"--gpu-memory must be > 0 GiB, got {opts.gpu_memory:g}")
        if opts.export_only:
            raise ValueError("--plan plans a training run; --export-only trains nothing")
        if opts.plan_json and not Path(opts.plan_json).resolve().parent.is_dir():  # before a minute of planning
            raise ValueError(f"--plan-json {opts.plan_json}: {Path(opts.plan_json).resolve().parent} is not a folder")
        plan = estimate(dataclasses.replace(opts, compile=False), world_size(opts))
        if opts.gpu_memory is not None:
            plan["gpu_memory_gib"] = opts.gpu_memory
            plan["fits"] = fits(plan["peak_gib"], opts.gpu_memory)[0]
        else:
            plan["fits"] = None
        if int(os.environ.get("RANK", 0)):  # under torchrun every rank plans the same run: rank 0 speaks
            return 0, None
        print(table(plan, opts), flush=True)
        if opts.plan_json:
            path = Path(opts.plan_json)
            tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
            tmp.write_text(json.dumps(plan, indent=1) + "\n")
            os.replace(tmp, path)
            return 0, f"wrote {path}"
        return 0, None
    except (ValueError, FileNotFoundError) as e:
        return 2, f"error: {e}"
