"""train.py's step is the gradient of the mean NLL over the global batch, whatever the world size and accumulation.

    python -m pytest tests/test_global_batch.py -x -q

One optimizer step of Full-length fine-tuning (rows of different lengths, so rows are padded, micro-batches and
ranks score different numbers of tokens) on a global batch of 4 documents, run twice: 1 process with gradient
accumulation 2, and 2 processes under torchrun (gloo, CPU) with none. Each run's logged loss and gradient norm and
its exported weights are compared with one float64 step written here: the mean NLL over every scored token of the
4 documents, its gradient, torch's norm clipping and AdamW's first update, all by hand.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import distributed
import options
import train
from hf import PRESETS, args_from_config, from_pretrained, save_pretrained
from model import Transformer

ROOT = Path(__file__).resolve().parent.parent
MICRO = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128, max_position_embeddings=16)
WINDOW, TARGET, LR, WEIGHT_DECAY, CLIP = 16, 64, 1e-3, 0.01, 0.5  # the gradient norm is ~1: clipped
LENGTHS = (20, 35, 66, 90)  # with EOS; Full-length reads min(L_x - 1, L_t) = 19, 34, 64, 64 tokens of each
STEP = ["--method", "full", "--window", WINDOW, "--target", TARGET, "--steps", 1, "--batch-size", 4,
        "--micro-batch-size", 2, "--lr", LR, "--warmup", 1, "--weight-decay", WEIGHT_DECAY, "--grad-clip", CLIP,
        "--log-every", 1, "--seed", 0]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A micro LLaMA and a corpus of exactly one global batch: 4 documents of random ids, each ending in EOS."""
    root = tmp_path_factory.mktemp("global-batch")
    model = Transformer(args_from_config(MICRO))
    model.init_weights(seed=0)
    save_pretrained(model, root / "model")
    rng = np.random.default_rng(0)
    documents = [np.append(rng.integers(3, 4096, size=n - 1), 2) for n in LENGTHS]
    np.save(root / "ids.npy", np.concatenate(documents).astype(np.int32))
    return root, documents


def reference_step(model_path, documents):
    """(loss, gradient norm, weights after the step) of one float64 step on the whole global batch."""
    # train.py's default --rope linear: positions interpolated by alpha = L_t / L_c (§3.1)
    model = from_pretrained(model_path, dtype=torch.float64,
                                        rope_scaling={"type": "linear", "factor": TARGET / WINDOW})
    total, count = 0.0, 0
    for doc in documents:
        w = min(len(doc) - 1, TARGET)  # Full-length: the document's first L_t tokens, each with its next as label
        tokens, labels = torch.tensor(doc[:w])[None], torch.tensor(doc[1:w + 1])
        total = total + F.cross_entropy(model(tokens)[0], labels, reduction="sum")  # positions 0..w-1
        count += w
    loss = total / count  # one mean over every scored token of the global batch
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    clip = min(1.0, CLIP / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_
    after = {}
    for name, p in model.named_parameters():
        g = grads[name] * clip
        # AdamW's first step (betas 0.9, 0.999, eps 1e-8): the bias corrections leave m / sqrt(v) = g / |g|
        after[name] = p.detach() * (1 - LR * WEIGHT_DECAY) - LR * g / (g.abs() + 1e-8)
    return loss.item(), norm, after, grads


def run_one_process(argv):
    with distributed.distributed() as device:
        train.train(options.parse_args([str(a) for a in argv]), device)


def run_two_processes(argv):
    """torchrun --standalone: the rendezvous picks a free port itself, so parallel test runs cannot collide."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), *map(str, argv)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def result(out):
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return row, load_file(out / "final" / "model.safetensors")


def assert_step_matches(row, weights, reference):
    loss, norm, after, grads = reference
    assert row["loss"] == pytest.approx(loss, rel=1e-6)        # the global mean; padding never scored
    # its gradient, not a mean of per-micro-batch or per-rank means (those differ by percents here); torch's float32
    # norm of the 262k-element embedding gradient is itself off by ~1e-5
    assert row["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert weights.keys() == after.keys()
    for name, want in after.items():
        got, g = weights[name].double(), grads[name]
        # AdamW's first update is lr·g/(|g| + eps): only where |g| is within float32 rounding of 0 can it differ
        # between this float32 run and the float64 reference by more than rounding (by up to 2 lr, a sign)
        settled = (g.abs() > 1e-6 * g.abs().max()) | (g == 0)    # g == 0: rows of tokens not in the batch
        assert (got - want)[settled].abs().max() < 2e-5, name
        assert (got - want).abs().max() < 2.01 * LR and (~settled).float().mean() < 0.01, name


@pytest.mark.slow
def test_one_process_with_accumulation_and_two_processes_take_the_reference_step(setup, tmp_path):
    root, documents = setup
    reference = reference_step(root / "model", documents)
    common = ["--model", root / "model", "--data", root / "ids.npy", *STEP]
    run_one_process([*common, "--out", tmp_path / "one"])             # accumulation 2: micro-batches of 2 rows
    run_two_processes([*common, "--out", tmp_path / "two"])           # each rank one micro-batch of its 2 documents
    (row1, weights1), (row2, weights2) = result(tmp_path / "one"), result(tmp_path / "two")
    assert_step_matches(row1, weights1, reference)
    assert_step_matches(row2, weights2, reference)
    assert row1["loss"] == pytest.approx(row2["loss"], rel=1e-6)
    assert row1["grad_norm"] == pytest.approx(row2["grad_norm"], rel=1e-4)
