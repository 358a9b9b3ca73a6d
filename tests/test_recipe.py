"""train.py's recipe and its run folder (checkpoints.py) pinned against values written here (issue 29): every
default for a real --model (§4.1 and the documented choices) and for the demo, AdamW over several steps against a
float64 AdamW, the seed reaching every random stream, checkpoint rotation, and every --resume refusal.

    python -m pytest tests/test_recipe.py -x -q

Configuration, not arithmetic, is what these tests guard: each would fail on a one-line change of a default, of a
constant, or of what a flag reaches (TESTING.md lists the change each guards). A micro LLaMA and a synthetic
pre-tokenised corpus keep the file to seconds on two CPU cores.
"""
import contextlib
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import pose
import distributed
import options
import train
from hf import args_from_config
from model import Transformer
from conftest import MICRO

RUN = ["--window", "16", "--target", "64", "--batch-size", "4", "--micro-batch-size", "2", "--log-every", "1",
       "--lr", "1e-3", "--warmup", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


def run_in_process(argv) -> tuple[list[dict], str]:
    """One training run in this process (world size 1, gloo): (the rows of metrics.jsonl, what it printed)."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log), distributed.distributed() as device:
        train.train(options.parse_args(argv), device)
    out = Path(argv[argv.index("--out") + 1])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], log.getvalue()


def kept(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


# ---------------------------------------------------------------- the recipe's defaults

def test_every_default_for_a_checkpoint_is_the_papers_recipe_or_the_documented_choice(micro_model, tmp_path):
    """§4.1: 1,000 steps, global batch 64, lr 2e-5, 10 warm-up steps, linear decay, N = 2 uniform chunks, linear
    interpolation; L_c = the checkpoint's context (16 here), L_t = 8 L_c (Table 1's 2k -> 16k). The paper is silent
    on clipping (HF Trainer's 1.0), weight decay (torch's AdamW 0.01) and the micro-batch (1, as the 7B on 8 A100s)."""
    np.save(tmp_path / "x.npy", np.arange(3))
    for world in (1, 8):
        opts, _ = options.resolve(options.parse_args(["--model", str(micro_model), "--data", str(tmp_path / "x.npy"),
                                                  "--out", str(tmp_path / "o")]), world)
        assert dataclasses.asdict(opts) == dict(
            model=str(micro_model), preset="tiny", data=[str(tmp_path / "x.npy")], text_field="text", tokenizer=None,
            out=str(tmp_path / "o"), context=16, window=16, target=128, method="pose", chunks=2, content="uniform",
            crop="start", rope="linear", beta_fast=None, steps=1000, batch_size=64, micro_batch_size=1, lr=2e-5,
            warmup=10, grad_clip=1.0,
            weight_decay=0.01, seed=0, save_every=100, keep_checkpoints=2, log_every=10, resume=False,
            activation_checkpointing=False, compile=False, max_documents=64_000, tensorboard=False, export_only=False,
            checkpoint=None, eval_every=None, eval_data=None, eval_lengths=None, eval_docs=10, eval_stride=1024,
            eval_max_tokens=None, eval_trials=10, plan=False, plan_json=None, world_size=None,
            gpu_memory=None), world  # no eval, no plan


def test_every_default_of_the_from_scratch_demo(tmp_path):
    """The demo: the tiny preset from scratch, L_c 128 -> L_t 1,024, 100 steps of 8 sequences at lr 3e-3, the whole
    batch in one forward per rank."""
    for world, micro in ((1, 8), (2, 4), (8, 1)):
        opts, config = options.resolve(options.parse_args(["--out", str(tmp_path / "o")]), world)
        assert dataclasses.asdict(opts) == dict(
            model=None, preset="tiny", data=None, text_field="text", tokenizer=None, out=str(tmp_path / "o"),
            context=128, window=128, target=1024, method="pose", chunks=2, content="uniform", crop="start",
            rope="linear", beta_fast=None,
            steps=100, batch_size=8, micro_batch_size=micro, lr=3e-3, warmup=10, grad_clip=1.0, weight_decay=0.01,
            seed=0, save_every=50, keep_checkpoints=2, log_every=10, resume=False, activation_checkpointing=False,
            compile=False, max_documents=800, tensorboard=False, export_only=False, checkpoint=None, eval_every=None,
            eval_data=None, eval_lengths=None, eval_docs=10, eval_stride=1024, eval_max_tokens=None, eval_trials=10,
            plan=False,
            plan_json=None, world_size=None, gpu_memory=None), world
        assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (256, 4, 4096)
    plain, _ = options.resolve(options.parse_args(["--out", str(tmp_path / "o"), "--method", "plain"]), 1)
    assert plain.target == plain.window == 128  # plain fine-tuning does not extend


class Linear(torch.nn.Module):
    """A stand-in for the model in train.train_step: loss = <g, w> over two parameters, so the gradient is the g
    the test passes as the batch's "tokens" (one scored target: train_step's scale is 1)."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())

    def loss(self, g, targets, positions):
        return (g[:6] * self.a.flatten()).sum() + (g[6:] * self.b).sum(), torch.tensor(1)


def test_adamw_over_six_clipped_steps_equals_a_float64_adamw_with_torchs_defaults(tmp_path):
    """build_optimizer + train_step + the schedule, six steps, against AdamW written out in float64 (Loshchilov &
    Hutter; torch's order: decoupled decay, then the bias-corrected moments) with betas 0.9 / 0.999, eps 1e-8,
    weight decay 0.01, clipping at 1.0 and 2 warm-up steps. A first Adam step does not depend on the betas (bias
    correction), so the gradients vary in sign and size over the steps; elements with gradients ~1e-9 are where
    eps decides the step, and weights ~5 are where the decay shows."""
    opts, _ = options.resolve(options.parse_args(["--out", str(tmp_path), "--lr", "1e-2", "--warmup", "2", "--steps",
                                              "6"]), 1)
    rng = np.random.default_rng(0)
    w0 = np.concatenate([rng.uniform(-5, 5, 6), rng.uniform(-0.5, 0.5, 6)])
    scale = np.array([3, 1, 0.3, 1e-2, 1e-3, 1e-1, 1e-8, 3e-9, 1e-9, 1e-4, 0.5, 2])
    grads = [scale * rng.choice([-1, 1], 12) * rng.uniform(0.1, 3, 12) * (0.1 if t in (1, 4) else 1)
             for t in range(6)]  # steps 2 and 5: a norm below the clip
    norms = [np.linalg.norm(g) for g in grads]
    assert min(norms) < 1 < max(norms)  # both sides of the clip
    model = Linear(torch.tensor(w0[:6], dtype=torch.float32).view(2, 3), torch.tensor(w0[6:], dtype=torch.float32))
    optim = distributed.build_optimizer(model, opts)
    assert {k: optim.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")} == \
        dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False, maximize=False)
    with distributed.distributed():
        for step, g in enumerate(grads):
            for group in optim.param_groups:  # as train() sets it
                group["lr"] = opts.lr * train.lr_factor(step, opts.warmup, opts.steps)
            _, norm, _ = train.train_step(model, optim, [(torch.tensor(g, dtype=torch.float32), torch.zeros(1),
                                                          torch.zeros(1))], opts.grad_clip)
            assert norm == pytest.approx(norms[step], rel=1e-5)
    got = np.concatenate([model.a.detach().flatten().numpy(), model.b.detach().numpy()]).astype(np.float64)

    lr, (beta1, beta2), eps, decay, clip = 1e-2, (0.9, 0.999), 1e-8, 0.01, 1.0
    rates = [lr * f for f in (1 / 2, 1, 4 / 4, 3 / 4, 2 / 4, 1 / 4)]  # warm-up 2, then linear to 0 at step 6
    w, m, v = w0.copy(), np.zeros(12), np.zeros(12)
    for t, (g, rate) in enumerate(zip(grads, rates), start=1):
        g = g * min(1.0, clip / (np.linalg.norm(g) + 1e-6))  # torch.nn.utils.clip_grad_norm_
        w = w * (1 - rate * decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - rate * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    np.testing.assert_allclose(got - w0, w - w0, rtol=1e-4, atol=1e-6)  # fp32 weights of size 5: ulp 5e-7


# ---------------------------------------------------------------- the seed reaches every random stream

def test_the_seed_decides_the_example_stream_and_the_same_seed_repeats_it(tmp_path):
    """make_batch is a function of (seed, rank, step, micro): seeds 0 and 1 draw other documents in another order
    and other PoSE skips, every method; seed 0 twice draws the very same stream."""
    docs = [np.concatenate([[1000 + i], np.arange(2000, 2000 + int(n))]) for i, n in
            enumerate(np.random.default_rng(0).integers(40, 400, size=20))]  # token 0 names the document

    def stream(method, seed):
        opts, _ = options.resolve(options.parse_args(["--window", "32", "--target", "256", "--method", method, "--seed",
                                                  str(seed), "--batch-size", "4", "--out", str(tmp_path)]), 1)
        return [torch.stack(train.make_batch(docs, opts, 0, step, 0, 1)) for step in range(5)]

    for method in ("pose", "randpos", "plain", "full"):
        zero, one, again = stream(method, 0), stream(method, 1), stream(method, 0)
        assert all(torch.equal(a, b) for a, b in zip(zero, again)), method
        order = lambda batches: [int(t) for b in batches for t in b[0, :, 0]]  # noqa: E731  documents read, in order
        assert sorted(order(zero)) == sorted(order(one)) == [1000 + i for i in range(20)]  # one epoch each
        assert order(zero) != order(one), method  # the epoch's permutation is the seed's
        if method in ("pose", "randpos"):
            assert all(not torch.equal(a[2], b[2]) for a, b in zip(zero, one)), method  # position ids: every step


def test_the_seed_decides_the_first_loss_of_a_run(micro_model, corpus, tmp_path):
    """Through train(): seed 1's first loss is not seed 0's (another batch), seed 0 twice gives the same."""
    argv = ["--model", str(micro_model), "--data", str(corpus), "--steps", "1", *RUN]
    first = [run_in_process([*argv, "--seed", seed, "--out", str(tmp_path / f"{i}")])[0][0]["loss"]
             for i, seed in enumerate(["0", "1", "0"])]
    assert first[0] == first[2] != first[1]


def test_the_seed_decides_a_from_scratch_models_weights(tmp_path):
    """Transformer.init_weights(seed), and build_model's fresh weights for --seed (the demo)."""
    args = args_from_config(MICRO)
    made = {}
    for seed in (0, 1):
        model = Transformer(args)
        model.init_weights(seed=seed)
        made[seed] = model.state_dict()
    again = Transformer(args)
    again.init_weights(seed=0)
    weights = [k for k in made[0] if k.endswith("proj.weight") or "embed" in k]
    assert weights and all(torch.equal(made[0][k], again.state_dict()[k]) for k in made[0])
    assert all(not torch.equal(made[0][k], made[1][k]) for k in weights)
    built = {}
    with distributed.distributed() as device:
        for seed in ("0", "1", "0"):
            opts, config = options.resolve(options.parse_args(["--out", str(tmp_path), "--seed", seed]), 1)
            model = distributed.build_model(opts, options.training_args(opts, config), device, None)
            built.setdefault(seed, []).append({k: v.clone() for k, v in model.state_dict().items()})
    (zero, zero_again), (one,) = built["0"], built["1"]
    assert all(torch.equal(zero[k], zero_again[k]) for k in zero)
    assert sum(not torch.equal(zero[k], one[k]) for k in zero) > len(zero) / 2  # every matrix; norms are ones


def test_the_seed_decides_the_samplers_monte_carlo_and_its_draws():
    """pose.sample draws from the generator it is given; coverage and examples_until_full (the CLI's --seed) from
    their seed: another seed, other numbers; the same seed, the same."""
    draw = lambda seed: pose.sample(np.random.default_rng(seed), 500, 32, 256, 3, "uniform")  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(draw(0), draw(0)))
    assert not np.array_equal(draw(0)[1], draw(1)[1])
    assert np.array_equal(pose.coverage(16, 128, 2, trials=500, seed=0), pose.coverage(16, 128, 2, trials=500, seed=0))
    assert not np.array_equal(pose.coverage(16, 128, 2, trials=500, seed=0),
                              pose.coverage(16, 128, 2, trials=500, seed=1))
    assert np.array_equal(pose.examples_until_full(8, 32, 2, runs=5, seed=0),
                          pose.examples_until_full(8, 32, 2, runs=5, seed=0))
    assert not np.array_equal(pose.examples_until_full(8, 32, 2, runs=5, seed=0),
                              pose.examples_until_full(8, 32, 2, runs=5, seed=1))


# ---------------------------------------------------------------- checkpoints

def test_a_run_keeps_exactly_its_newest_checkpoints_and_resumes_from_the_newest(micro_model, corpus, tmp_path):
    """--keep-checkpoints 2 of a checkpoint every step: after 5 steps, steps 4 and 5 (7B: 84 GB each). Resumed
    with --steps 7 and 3 kept (free to change), it continues after step 5 and keeps 5, 6 and 7."""
    out = tmp_path / "out"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), "--save-every", "1", *RUN]
    rows, _ = run_in_process([*argv, "--steps", "5", "--keep-checkpoints", "2"])
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert kept(out) == ["step_000004", "step_000005"]
    rows, log = run_in_process([*argv, "--steps", "7", "--keep-checkpoints", "3", "--resume"])
    assert f"resumed from {out / 'checkpoints' / 'step_000005'} at step 5\n" in log
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert kept(out) == ["step_000005", "step_000006", "step_000007"]


# ---------------------------------------------------------------- --resume refuses a change of what is trained

# README's resume list, and RESUME_FIXED beside it: (flag, another value, this run's value). Written here, not read
# from checkpoints.RESUME_FIXED, so that a name dropped from the constant fails its case.
REFUSED = [
    ("--model", "OTHER", "model"), ("--preset", "small", "tiny"), ("--data", "OTHER", "ids.npy"),
    ("--text-field", "body", "text"), ("--tokenizer", "tokenizer.model", "None"), ("--context", "8", "16"),
    ("--window", "4", "8"),
    ("--target", "128", "64"), ("--method", "pose", "plain"), ("--chunks", "3", "2"), ("--content", "zero", "uniform"),
    ("--crop", "random", "start"), ("--rope", "yarn", "linear"), ("--beta-fast", "4.0", "None"),
    ("--batch-size", "8", "4"), ("--lr", "0.002", "0.001"),
    ("--warmup", "3", "1"), ("--weight-decay", "0.1", "0.01"), ("--grad-clip", "0.5", "1.0"), ("--seed", "1", "0"),
    ("--max-documents", "99", "4")]


def test_the_refusals_written_here_are_resume_fixed():
    assert tuple(flag[2:].replace("-", "_") for flag, _, _ in REFUSED) == checkpoints.RESUME_FIXED


@pytest.fixture(scope="module")
def plain_run(micro_model, corpus, tmp_path_factory):
    """A finished one-step run of plain fine-tuning (so that --crop random is a valid change), checkpoint at 1."""
    out = tmp_path_factory.mktemp("plain") / "out"
    run = list(RUN)
    run[run.index("--window") + 1] = "8"  # below L_c = 16, so that --context may change to 8 and --window to 4
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), "--steps", "1", "--method",
            "plain", "--context", "16", *run]
    run_in_process(argv)
    return out, argv


@pytest.mark.parametrize("flag, new, old", REFUSED, ids=[flag for flag, _, _ in REFUSED])
def test_resume_refuses_each_change_of_what_is_trained_in_one_line(plain_run, tmp_path, capsys, flag, new, old):
    out = tmp_path / "out"
    shutil.copytree(plain_run[0], out)
    argv = list(plain_run[1])
    argv[argv.index("--out") + 1] = str(out)
    if new == "OTHER":  # the same content under another name is another --model / --data all the same
        other = tmp_path / ("other.npy" if flag == "--data" else "other")
        (shutil.copy if flag == "--data" else shutil.copytree)(argv[argv.index(flag) + 1], other)
        new = str(other)
    if flag in argv:
        argv[argv.index(flag) + 1] = new
    else:
        argv += [flag, new]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, "--resume"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    match = re.fullmatch(rf"error: --resume: {flag} (\S+) differs from this run's (\S+) \(.*settings.json\); .*", err)
    assert match, err
    now, then = match.groups()
    assert now.endswith(new.split("/")[-1]) and then.endswith(old), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
