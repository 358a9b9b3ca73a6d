"""train.py --plan (plan.py, issue 26): the plan against the same run measured, FSDP2's wiring at world 8 on fake
ranks, the build order, and the command line.

    python -m pytest tests/test_plan.py -q

The measured runs are real: distributed.build_model's model with real weights, distributed.build_optimizer's
fused AdamW, train.train_step's forward, backward, clipping and update, at world 1 and 2 in fp32 (the CPU's
policy). A world of 2 in one process is the "fake" process group with real tensors: the collectives return at
once, so the numbers are wrong and the memory is right. FSDPMemTracker, in real mode, follows every tensor rank 0
allocates.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import plan  # noqa: E402
import distributed  # noqa: E402
from options import TrainOptions, parse_args, resolve, training_args  # noqa: E402
import train  # noqa: E402
from model import Transformer  # noqa: E402

# The plan and the measured run are the same computation on fake and on real tensors. Measured on torch 2.13: the
# peaks differ by 24 bytes (the plan also tracks the micro-batch's inputs) in all four cases; 0.1% leaves room for
# a kernel whose fake output size differs from its real one, and still fails a plan that misses one activation.
TOLERANCE = 1e-3


def options(tmp_path, *flags) -> TrainOptions:
    return parse_args(["--out", str(tmp_path / "out"), "--window", "128", "--target", "1024", *flags])


def measured(opts: TrainOptions, world: int) -> dict:
    """Rank 0's peak {category: bytes} over a steady-state training step (the second) as train() runs it: its
    last micro-batch through train.train_step, with the earlier ones' gradients already held."""
    with plan.fake_ranks(world) as mesh:
        o, config = resolve(opts, world)
        args = training_args(o, config)
        model = distributed.build_model(o, args, torch.device("cpu"), mesh)  # fp32 policy: a CPU device
        optim = distributed.build_optimizer(model, o)
        accum = o.batch_size // (o.micro_batch_size * world)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randint(3, args.vocab_size, (o.micro_batch_size, o.window), generator=g),
                    torch.randint(3, args.vocab_size, (o.micro_batch_size, o.window), generator=g),
                    torch.arange(o.window).expand(o.micro_batch_size, o.window)) for _ in range(accum)]
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            train.train_step(model, optim, batches, o.grad_clip)  # step 1 creates Adam's moments
            for tokens, targets, positions in batches[:-1]:  # the earlier micro-batches of step 2: their
                model.loss(tokens, targets, positions)[0].backward()  # gradients add up in the shards
            tracker = FSDPMemTracker(model, optim)  # it follows one forward of the root: the last micro-batch
            with plan.loss_as_forward(model), tracker:
                train.train_step(model, optim, batches[-1:], o.grad_clip)
        (peak,) = tracker.get_tracker_snapshot("peak").values()
    return {plan.CATEGORIES[k.value] if k != "Total" else "Total": v for k, v in peak.items()}


@pytest.mark.parametrize("world,ac", [(1, False), (1, True), (2, False), (2, True)])
def test_the_plan_of_a_small_run_matches_what_the_same_run_measures(tmp_path, world, ac):
    # world 1: batch 4 = micro-batch 2 x accumulation 2 (the measured peak is the second micro-batch's); world 2:
    # accumulation 1. fp32 compute (cuda=False) as the measured CPU run computes.
    opts = options(tmp_path, "--batch-size", "4", "--micro-batch-size", "2", *["--activation-checkpointing"] * ac)
    real = measured(opts, world)
    planned = plan.estimate(opts, world, cuda=False)
    assert planned["peak_gib"] == pytest.approx(real["Total"] / 2**30, rel=TOLERANCE)
    for name, gib in planned["categories"].items():  # every category of a MiB or more, at the peak
        if max(gib, real[name] / 2**30) >= 2**-10:
            assert gib == pytest.approx(real[name] / 2**30, rel=TOLERANCE), name
    # Arithmetic, fp32 masters: sharded params, grads and Adam's two moments are 4 + 4 + 8 bytes per parameter
    # per rank (FSDP2 pads each tensor's dim 0 to a multiple of the world), plus fused AdamW's fp32 step counter
    # per tensor.
    with torch.device("meta"):
        shapes = [p.shape for p in Transformer(training_args(*resolve(opts, world))).parameters()]
    shard = sum(-(-s[0] // world) * s[1:].numel() for s in shapes) * 4 / 2**30
    c = planned["categories"]
    steps = 4 * len(shapes) / 2**30
    assert (c["sharded_params"], c["optimizer_state"]) == (pytest.approx(shard), pytest.approx(2 * shard + steps))
    assert c["sharded_grads"] <= shard * (1 + 1e-9)  # at the peak, some of this micro-batch's may be missing


class Collectives(TorchDispatchMode):
    """The dtype of every all-gather's output and reduce-scatter's input, in order."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if "allgather" in name:
            self.seen.append(("all_gather", args[0].dtype))
        elif "reduce_scatter" in name:
            self.seen.append(("reduce_scatter", args[1].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ac", [False, True])
def test_fsdp2_wiring_at_world_8_shards_casts_and_communicates_as_designed(ac):
    # The properties a GPU run depends on and the CPU's gloo runs (world 2, fp32) do not show.
    world = 8
    opts = parse_args(["--plan", "--batch-size", "8", *["--activation-checkpointing"] * ac])
    opts, config = resolve(opts, world)
    args = training_args(opts, config)
    L = args.n_layers
    with plan.fake_ranks(world) as mesh, FakeTensorMode():
        model = distributed.wrap_model(opts, args, mesh, distributed.mixed_precision(cuda=True))
        model.to_empty(device="cpu")
        optim = distributed.build_optimizer(model, opts)
        for name, p in model.named_parameters():  # every parameter's rows split over the 8 ranks
            assert isinstance(p, DTensor) and p.placements == (Shard(0),) and p.device_mesh.size() == world, name
            assert p.to_local().shape == (-(-p.shape[0] // world), *p.shape[1:]), name
        computed = []
        model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: computed.append(out.dtype))
        tokens = torch.zeros(1, opts.window, dtype=torch.long)
        comms, dtypes = CommDebugMode(), Collectives()
        with comms, dtypes, sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            sum_nll, _ = model.loss(tokens, tokens)
            forward = dict(comms.get_comm_counts())
            sum_nll.backward()
            both = dict(comms.get_comm_counts())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            every = dict(comms.get_comm_counts())
        for p in model.parameters():
            assert isinstance(p.grad, DTensor) and p.grad.placements == (Shard(0),) and p.grad.dtype == torch.float32
            assert p.dtype == torch.float32  # fp32 masters
    c10d = torch.ops.c10d
    # Forward: one all-gather per FSDP group, the L blocks and the root. loss() is the root's registered forward
    # method: without register_fsdp_forward_method its embeddings, norm and lm_head would stay sharded (L, not
    # L + 1, and the lm_head matmul would meet a DTensor).
    assert forward == {c10d._allgather_base_: L + 1}
    # Backward: each block was resharded after its forward (reshard_after_forward, FSDP2's default) and is gathered
    # once more; the root is not (FSDP2 keeps the root unsharded after forward, as backward needs it first). With
    # activation checkpointing the recomputation runs inside that one unshard: no extra all-gather. One
    # reduce-scatter per group.
    assert both == {c10d._allgather_base_: 2 * L + 1, c10d._reduce_scatter_base_: L + 1}
    # clip_grad_norm_: one all-reduce of the squared norm; the update is local to each shard.
    assert {k: v for k, v in every.items() if k not in both} == {torch.ops.c10d_functional.all_reduce: 1}
    # bf16 compute from fp32 masters: gathered in bf16, computed in bf16, gradients reduced in fp32.
    assert computed[0] == torch.bfloat16
    assert {d for op, d in dtypes.seen if op == "all_gather"} == {torch.bfloat16}
    assert {d for op, d in dtypes.seen if op == "reduce_scatter"} == {torch.float32}
    mp = model._get_fsdp_state()._mp_policy
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)


def test_build_model_compiles_each_block_forward_then_checkpoints_then_shards(tmp_path, monkeypatch):
    # Composable checkpoint(block) and then torch.compile(block) fails to recompute ("Recomputed values ...
    # different metadata", issue 26); build_model (and with it --plan, through wrap_model) compiles each block's
    # forward first, so that the hooks added afterwards stay outside the compiled graph.
    events = []
    monkeypatch.setattr(Transformer, "compile_regions", lambda self: events.append("compile"))
    real_checkpoint, real_shard = distributed.activation_checkpoint, distributed.fully_shard
    monkeypatch.setattr(distributed, "activation_checkpoint",
                        lambda m: events.append(("checkpoint", m)) or real_checkpoint(m))
    monkeypatch.setattr(distributed, "fully_shard", lambda m, **kw: events.append(("shard", m)) or real_shard(m, **kw))
    opts = options(tmp_path, "--compile", "--activation-checkpointing", "--batch-size", "1")
    opts, config = resolve(opts, 1)
    args = training_args(opts, config)
    with plan.fake_ranks(1) as mesh:
        model = distributed.build_model(opts, args, torch.device("cpu"), mesh)
    blocks = list(model.model.layers)
    assert events == ["compile", *[e for b in blocks for e in (("checkpoint", b), ("shard", b))], ("shard", model)]



def config_only_model(tmp_path) -> Path:
    """A --model folder that holds a config.json and nothing else (no weights, no tokenizer)."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    config = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
              "intermediate_size": 688, "vocab_size": 4096, "max_position_embeddings": 256}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("flags,message", [
    (["--world-size", "0"], "error: --world-size must be > 0, got 0"),
    (["--world-size", "3"], "error: --batch-size 64 is not divisible by --micro-batch-size 1 x world size 3"),
    (["--gpu-memory", "0"], "error: --gpu-memory must be > 0 GiB, got 0"),
    (["--plan-json", "no/such/plan.json"], "error: --plan-json no/such/plan.json: {cwd}/no/such is not a folder"),
])
def test_bad_plan_values_are_refused_in_one_line_as_training_refuses_them(tmp_path, monkeypatch, capsys, flags,
                                                                          message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.main(["--plan", "--model", str(config_only_model(tmp_path)), *flags])
    assert e.value.code == 2 and capsys.readouterr().err == message.format(cwd=tmp_path.resolve()) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config-only"]  # nothing written


def test_plan_flags_without_plan_are_refused(tmp_path):
    with pytest.raises(ValueError, match="go with --plan"):
        resolve(parse_args(["--out", str(tmp_path / "out"), "--world-size", "8"]), 1)


def test_the_verdict_adds_the_stated_margin():
    assert plan.fits(70.0, 80.0) == (True, pytest.approx(70 * 1.1 + 2))  # 79.0 GiB
    assert plan.fits(71.0, 80.0) == (False, pytest.approx(71 * 1.1 + 2))  # 80.1 GiB


@pytest.mark.slow
def test_plan_command_reads_a_config_only_folder_prints_the_table_and_writes_only_its_json(tmp_path):
    model = config_only_model(tmp_path)
    run = tmp_path / "cwd"
    run.mkdir()
    cmd = [sys.executable, str(ROOT / "train.py"), "--plan", "--model", str(model), "--window", "256", "--target",
           "1024", "--batch-size", "8", "--world-size", "4", "--activation-checkpointing", "--gpu-memory", "80",
           "--plan-json", "plan.json"]
    done = subprocess.run(cmd, cwd=run, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == ["plan.json"]  # no out/, no settings.json
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    written = json.loads((run / "plan.json").read_text())
    assert {"peak_gib", "categories", "world_size", "tokens_per_step", "flops_per_step", "fits"} <= written.keys()
    assert written["world_size"] == 4 and written["tokens_per_step"] == 8 * 256 and written["fits"] is True
    assert written["peak_gib"] == pytest.approx(sum(written["categories"].values()))
    lines = done.stdout.splitlines()
    assert lines[0].startswith("plan: pose L_c 256 -> L_t 1,024, 4 ranks x micro-batch 1 x accumulation 2")
    assert f"| **peak** | **{written['peak_gib']:.2f}** |" in lines
    assert any(line.startswith("fits in 80 GiB: needs ") for line in lines) and lines[-1] == "wrote plan.json"
    # The same flags in this process (the dispatch and the estimate agree with a direct call).
    opts = parse_args(cmd[2:-2])
    assert plan.estimate(opts, 4)["peak_gib"] == pytest.approx(written["peak_gib"])
