"""The machinery under train.py's loop: the process group, FSDP2 sharding, the model and the optimizer it trains.

    torchrun --nproc_per_node 8 train.py ...   # one process per GPU; plain `python train.py` is a group of one
    python -m pytest tests/test_train_run.py tests/test_plan.py -q

distributed() starts the process group (NCCL on CUDA, gloo on CPU) and agreed() turns a bad input that one rank
found into the same error on every rank. build_model() builds the model on the meta device and shards it in
training's order (wrap_model, which plan.py repeats on fake tensors: compile, then activation checkpointing,
then fully_shard per block and at the root), then fills it from rank 0's full state dict: the checkpoint's
weights (--model) or a fresh init. build_optimizer() is §4.1's AdamW. Nothing here knows about PoSE.
"""
import contextlib
import ctypes
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint as activation_checkpoint
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf import from_pretrained
from model import ModelArgs, Transformer
from options import TrainOptions


@contextlib.contextmanager
def distributed():
    """torchrun's env:// rendezvous when launched by torchrun, a one-process group for plain `python train.py`.
    NCCL on CUDA, gloo on CPU; the rest of the file never asks which."""
    cuda = torch.cuda.is_available()
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo")
    else:
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def agreed(work, *args, **kwargs):
    """work(*args, **kwargs) on every rank, failing on all of them together: a bad input that some ranks found (a record
    only rank 1 parses) is raised on every rank with the lowest such rank's message, which rank 0 prints (run()).
    Otherwise the rank that found it would exit alone, its message unsaid, and its peers die in their next
    collective with a "Connection reset by peer" traceback instead."""
    try:
        result, message = work(*args, **kwargs), None
    except (ValueError, FileNotFoundError) as e:
        result, message = None, str(e)
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    first = next((m for m in messages if m is not None), None)
    if first is not None:
        raise ValueError(first)
    return result



def build_model(opts: TrainOptions, args: ModelArgs, device, mesh: DeviceMesh | None) -> Transformer:
    """wrap_model (meta-device model -> each block's forward compiled -> activation checkpointing -> fully_shard
    per block -> root) -> to_empty -> full state dict read on rank 0 (checkpoint or fresh init) and broadcast
    into the shards.
    mesh None: no FSDP2 (train() passes None to a lone CPU process, which has nothing to shard or cast: the
    hooks, copies and DTensor arithmetic cost ~4% of its step and change no number). Checkpoints are DCP's
    either way, so a run may resume at another world size."""
    model = wrap_model(opts, args, mesh, mixed_precision(device.type == "cuda"))
    model.to_empty(device=device)

    def full_state():  # rank 0 reads the weights (a NaN one is refused: agreed() tells every rank)
        if dist.get_rank() != 0:
            return {}
        if opts.model:
            return from_pretrained(opts.model, dtype=torch.float32).state_dict()  # fp32 master weights
        fresh = Transformer(args)
        fresh.init_weights(seed=opts.seed)
        return fresh.state_dict()

    full = agreed(full_state)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def mixed_precision(cuda: bool) -> MixedPrecisionPolicy:
    """FSDP2's policy: on a GPU bf16 compute from fp32 masters, gradients reduced in fp32; on a CPU fp32
    throughout (bf16 matmuls on CPU are slow, and tests compare exactly)."""
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda \
        else MixedPrecisionPolicy()


def wrap_model(opts: TrainOptions, args: ModelArgs, mesh: DeviceMesh | None, mp: MixedPrecisionPolicy):
    """build_model's meta-device part, which plan.py repeats on fake tensors: the model on the meta device,
    compiled, checkpointed and sharded in training's order, before any memory is allocated."""
    with torch.device("meta"):
        model = Transformer(args)  # no memory: every rank holds 1/world of the weights only after sharding
    if opts.compile:  # first: it replaces each block's forward, and the hooks added below wrap it (compile never
        model.compile_regions()  # traces activation checkpointing's or FSDP2's hooks)
    for block in model.model.layers:
        if opts.activation_checkpointing:
            activation_checkpoint(block)  # composable form: parameter names stay HF's
        if mesh is not None:
            fully_shard(block, mesh=mesh, mp_policy=mp)
    if mesh is not None:
        fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embeddings, final norm, lm_head
        register_fsdp_forward_method(model, "loss")  # loss() is not forward(); without this the root stays sharded
    return model


def build_optimizer(model, opts: TrainOptions):
    """§4.1's "AdamW with its default hyper-parameters" (torch's: betas 0.9/0.999, eps 1e-8, weight decay
    0.01); the schedule is set each step (lr_factor). fused: one kernel per step instead of ~10 per parameter
    (each a DTensor dispatch under FSDP2), the same update; the largest cost train.py added around the model
    on CPU (BENCHMARKS.md)."""
    return torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=True)


def keep_freed_memory() -> bool:
    """CPU training: keep the memory a step frees for the next step instead of giving it back to the kernel.

    glibc's malloc serves big blocks (above a threshold that never exceeds 32 MB) with mmap and unmaps them on
    free, and trims the heap's top, so each step's activations, logits and gradients arrive as fresh pages that
    the kernel faults in and zeroes: ~38,000 page faults (150 MB) per step of issue 15's tiny step, ~10 % of
    its time (BENCHMARKS.md). With mmap off (M_MMAP_MAX = 0) and trimming off (M_TRIM_THRESHOLD = -1) freed
    blocks stay in the heap and the next step reuses them, as jemalloc or tcmalloc would (PyTorch's CPU tuning
    guide preloads one of those; this needs no package). The process keeps its peak resident memory, which a
    training step reaches again every step. Skipped off glibc, and when the environment already sets either
    knob (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_: the user's choice wins). Returns whether it applied."""
    if sys.platform != "linux" or os.environ.keys() & {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"}:
        return False
    mallopt = ctypes.CDLL(None).mallopt  # glibc's returns 1 on success; musl's is a stub returning 0
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))



def attention_kernels(device):
    """On GPU, SDPA restricted to flash / memory-efficient kernels: a silent fall-back to the math kernel (and
    its [H, T, T] scores) is an error. A new context each time: sdpa_kernel's cannot be entered twice."""
    if device.type == "cuda":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    return contextlib.nullcontext()
